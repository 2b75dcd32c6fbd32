"""Bootstrap intervals and DeLong tests, checked against slow references and scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jobs.stats import (
    bootstrap_auroc,
    bootstrap_auroc_reference,
    delong_covariance,
    delong_covariance_slow,
    delong_test,
    holm,
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


def test_fast_delong_matches_the_slow_reference():
    y, a = scored(400, 2, signal=1.0)
    b = a + np.random.default_rng(3).normal(size=400) * 0.8
    c = np.round(a, 1)  # ties
    fast_auc, fast_cov = delong_covariance(y, np.vstack([a, b, c]))
    slow_auc, slow_cov = delong_covariance_slow(y, np.vstack([a, b, c]))
    assert np.allclose(fast_auc, slow_auc, atol=1e-12)
    assert np.allclose(fast_cov, slow_cov, atol=1e-12)
    assert fast_auc[0] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    _, _, p = delong_test(y, a, b)
    aucs, cov = slow_auc[:2], slow_cov[:2, :2]
    z = (aucs[0] - aucs[1]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    from math import erfc, sqrt

    assert p == pytest.approx(erfc(abs(z) / sqrt(2)), abs=1e-6)


def test_delong_p_values_are_uniform_under_the_null_and_small_under_a_difference():
    rng = np.random.default_rng(4)
    null = []
    for _ in range(400):
        y = (rng.random(300) < 0.3).astype(int)
        latent = rng.normal(size=300) + y
        a, b = latent + rng.normal(size=300), latent + rng.normal(size=300)  # equally good scorers
        null.append(delong_test(y, a, b)[2])
    null = np.array(null)
    assert 0.03 < (null < 0.05).mean() < 0.08  # the test holds its level
    assert abs(np.mean(null) - 0.5) < 0.05 and 0.2 < np.median(null) < 0.6
    y, a = scored(500, 5, signal=2.0)
    weak = a + np.random.default_rng(6).normal(size=500) * 3
    assert delong_test(y, a, weak)[2] < 1e-6


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
