"""Bootstrap intervals, checked against the slow numpy reference and scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jobs.scoring.bootstrap import (
    auroc_and_bootstrap,
    bootstrap_auroc,
    bootstrap_auroc_reference,
    percentile_interval,
    resample_counts,
    resampling,
)


def scored(n, seed, signal=1.0, prevalence=0.2):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    return y, rng.normal(size=n) + signal * y


def test_bootstrap_auroc_is_the_auroc_of_each_resample_ties_included():
    y, s = scored(300, 0)
    s = np.round(s, 1)  # many ties
    counts = resample_counts(300, resamples=25, seed=3)
    got = bootstrap_auroc(y[:, None], s[:, None], counts)[:, 0]
    for b in range(25):
        idx = np.repeat(np.arange(300), counts[b].astype(int))  # the resample, drawn out
        assert got[b] == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-9)


def test_compiled_bootstrap_equals_the_numpy_reference_ties_and_empty_classes_included():
    rng = np.random.default_rng(8)
    labels = (rng.random((700, 14)) < np.linspace(0.0, 0.5, 14)).astype(np.uint8)  # class 0: no positive
    labels[:, 13] = 1  # class 13: no negative
    scores = np.round(rng.random((700, 14)) + 0.5 * labels, 2)  # heavy ties
    counts = resample_counts(700, resamples=64, seed=9)
    assert counts.dtype == np.uint8 and counts.shape == (64, 700) and counts.sum(axis=1).tolist() == [700] * 64
    fast, slow = bootstrap_auroc(labels, scores, counts), bootstrap_auroc_reference(labels, scores, counts)
    assert np.isnan(fast[:, [0, 13]]).all() and not np.isnan(fast[:, 1:13]).any()
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12, equal_nan=True)
    wide = bootstrap_auroc(labels, scores, np.asfortranarray(counts.astype(np.uint32)))  # another count type
    np.testing.assert_array_equal(wide, fast)


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_images():
    widths = []
    for n in (200, 2000):
        y, s = scored(n, 1)
        lo, hi = percentile_interval(bootstrap_auroc(y[:, None], s[:, None], resample_counts(n, 1000)))
        point = roc_auc_score(y, s)
        assert lo[0] < point < hi[0]
        widths.append(hi[0] - lo[0])
    assert widths[1] < widths[0] / 2  # about 1/sqrt(10)


def test_the_runs_own_auroc_is_scikit_learns_per_class_ties_and_empty_classes_included():
    rng = np.random.default_rng(12)
    labels = (rng.random((900, 14)) < np.linspace(0.0, 0.4, 14)).astype(np.uint8)  # class 0: no positive
    scores = np.round(rng.random((900, 14)) + 0.4 * labels, 2)  # ties
    counts = resample_counts(900, 40)
    exact, boot = auroc_and_bootstrap(labels, scores, counts)  # one sort for both
    assert np.isnan(exact[0])
    for k in range(1, 14):
        assert exact[k] == pytest.approx(roc_auc_score(labels[:, k], scores[:, k]), abs=1e-12)
    np.testing.assert_array_equal(boot, bootstrap_auroc(labels, scores, counts))


def test_a_class_without_positives_gives_nan():
    y = np.zeros((50, 1), dtype=int)
    assert np.isnan(bootstrap_auroc(y, np.random.default_rng(0).random((50, 1)), resample_counts(50, 5))).all()


# ---------------------------------------------------------------- by patient


def width(y, s, counts) -> float:
    lo, hi = percentile_interval(bootstrap_auroc(y[:, None], s[:, None], counts))
    return float(hi[0] - lo[0])


def test_a_patient_resample_gives_every_image_its_patients_count():
    patients = np.array([5, 5, 9, 2, 9, 9, 40])
    counts = resample_counts(7, resamples=300, seed=4, clusters=patients)
    assert counts.shape == (300, 7) and counts.dtype == np.uint8 and counts.flags.f_contiguous
    for same in ([0, 1], [2, 4, 5]):
        assert (counts[:, same] == counts[:, same[:1]]).all()
    # Four patients drawn four times per resample: the counts of one image of each patient sum to 4.
    assert (counts[:, [0, 2, 3, 6]].sum(axis=1) == 4).all()
    assert set(np.unique(counts)) <= {0, 1, 2, 3, 4} and counts[:, 6].max() >= 2


def test_duplicated_patients_widen_the_patient_interval_and_fool_the_image_one():
    """Every test patient's image twice: the data hold no more information, and the patient bootstrap
    knows it (its interval is the original one, exactly, since AUROC does not change when every weight
    doubles); the image bootstrap shrinks its interval as if there were twice the patients."""
    n = 2000
    y, s = scored(n, 5)
    patients = np.random.default_rng(6).permutation(n) + 1000  # one image each, ids in no particular order
    once_image = width(y, s, resample_counts(n, 2000))
    once_patient = width(y, s, resample_counts(n, 2000, clusters=patients))
    y2, s2, p2 = np.tile(y, 2), np.tile(s, 2), np.tile(patients, 2)
    twice_image = width(y2, s2, resample_counts(2 * n, 2000))
    twice_patient = width(y2, s2, resample_counts(2 * n, 2000, clusters=p2))

    assert twice_patient == pytest.approx(once_patient, abs=1e-12)
    assert twice_patient > twice_image * 1.25
    assert twice_image / once_image == pytest.approx(1 / np.sqrt(2), rel=0.1)  # as if the data had doubled
    # One image per patient: the two bootstraps are the same procedure (different draws).
    assert once_patient == pytest.approx(once_image, rel=0.08)


def test_one_image_per_patient_agrees_with_the_image_bootstrap_within_monte_carlo_error():
    n = 1500
    y, s = scored(n, 7)
    patients = np.random.default_rng(8).permutation(n)
    by_image = bootstrap_auroc(y[:, None], s[:, None], resample_counts(n, 2000))[:, 0]
    by_patient = bootstrap_auroc(y[:, None], s[:, None], resample_counts(n, 2000, clusters=patients))[:, 0]
    se = by_image.std()  # the mean of 2,000 draws is within 4 * se / sqrt(2000) of the other's
    assert abs(by_patient.mean() - by_image.mean()) < 4 * se * np.sqrt(2 / 2000)
    assert by_patient.std() == pytest.approx(se, rel=0.1)


def test_the_report_resampling_says_its_unit_and_falls_back_to_images_without_patients():
    names = [f"{i:08d}_000.png" for i in range(6)]
    patient_of = dict(zip(names, [1, 1, 2, 3, 3, 3]))
    by_patient = resampling(names, patient_of, "patient", 200)
    assert (by_patient.unit, by_patient.images, by_patient.patients, by_patient.resamples) == ("patient", 6, 3, 200)
    assert by_patient.describe() == (
        "200 resamples of the 3 test patients, each drawn patient with all of their images (6 test images in all), "
        "percentile method"
    )
    assert (by_patient.counts[:, 0] == by_patient.counts[:, 1]).all()
    by_image = resampling(names, patient_of, "image", 200)
    assert (
        by_image.unit == "image"
        and by_image.describe() == "200 resamples of the 6 test images of 3 patients, percentile method"
    )
    unknown = resampling(names, None, "patient", 200)
    assert unknown.unit == "image" and unknown.patients is None
    np.testing.assert_array_equal(unknown.counts, resample_counts(6, 200))
    with pytest.raises(ValueError, match="bootstrap unit 'visit': use one of patient, image"):
        resampling(names, None, "visit", 200)
