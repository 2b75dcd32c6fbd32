"""Bootstrap intervals, checked against the slow numpy reference and scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jobs.scoring.bootstrap import (
    bootstrap_auroc,
    bootstrap_auroc_reference,
    percentile_interval,
    resample_counts,
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


def test_a_class_without_positives_gives_nan():
    y = np.zeros((50, 1), dtype=int)
    assert np.isnan(bootstrap_auroc(y, np.random.default_rng(0).random((50, 1)), resample_counts(50, 5))).all()
