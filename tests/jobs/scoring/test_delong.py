"""DeLong tests, checked against the O(mn) reference, and Holm's adjustment."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jobs.scoring.delong import delong_covariance, delong_covariance_slow, delong_test, holm, midranks
from tests.jobs.scoring.test_bootstrap import scored


def test_midranks_give_tied_scores_their_mean_rank():
    assert midranks(np.array([[0.3, 0.1, 0.3, 0.2]])).tolist() == [[3.5, 1.0, 3.5, 2.0]]


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
