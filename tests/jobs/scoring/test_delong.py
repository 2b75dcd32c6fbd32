"""DeLong tests (image-level and clustered by patient), checked against the O(mn) reference, and Holm's adjustment."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jobs.scoring.delong import (
    comparable,
    delong_covariance,
    delong_covariance_slow,
    delong_test,
    holm,
    midranks,
)
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


def clustered_scores(patients: int, per_patient: int, rng: np.random.Generator):
    """Films of one patient share their label (mostly) and each scorer's patient effect: correlated images."""
    ids = np.repeat(np.arange(patients), per_patient)
    y = ((rng.random(patients) < 0.3)[ids] ^ (rng.random(ids.size) < 0.1)).astype(int)
    a = y + rng.normal(size=patients)[ids] + rng.normal(size=ids.size) * 0.2
    b = y + rng.normal(size=patients)[ids] + rng.normal(size=ids.size) * 0.2  # as good as a
    return ids, y, a, b


def test_clustered_delong_matches_the_slow_reference_with_ties_and_uneven_clusters():
    rng = np.random.default_rng(8)
    ids = rng.integers(0, 40, size=160) * 7 + 3  # 40 patients at most, ids not 0..I-1, uneven sizes
    y = (rng.random(160) < 0.35).astype(int)
    a = y + rng.normal(size=160)
    b = np.round(a + rng.normal(size=160), 1)  # ties
    c = rng.normal(size=160)
    fast_auc, fast_cov = delong_covariance(y, np.vstack([a, b, c]), ids)
    slow_auc, slow_cov = delong_covariance_slow(y, np.vstack([a, b, c]), ids)
    assert np.allclose(fast_auc, slow_auc, atol=1e-12)
    assert np.allclose(fast_cov, slow_cov, atol=1e-12)
    assert np.allclose(fast_cov, fast_cov.T, atol=1e-15)


def test_one_image_per_patient_gives_delongs_covariance_exactly():
    y, a = scored(300, 12, signal=1.0)
    b = np.round(a + np.random.default_rng(13).normal(size=300), 1)  # ties
    scores = np.vstack([a, b])
    # I10 = m and I01 = n, and no patient has both a positive and a negative film (S11 = 0): DeLong's terms.
    _, clustered = delong_covariance(y, scores, np.random.default_rng(2).permutation(300) + 50)
    _, image = delong_covariance(y, scores)
    assert np.allclose(clustered, image, rtol=1e-12, atol=0)


def test_positives_of_one_patient_are_not_comparable_by_patient():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0])
    one_patient = np.array([7, 7, 7, 7, 1, 2, 3, 4, 7, 5])  # every positive film is patient 7's
    assert comparable(y) and not comparable(y, one_patient)
    assert comparable(y, np.array([7, 7, 7, 7, 1, 2, 3, 4, 8, 5]))
    assert not comparable(np.array([1, 0, 0, 0])) and not comparable(np.array([1, 1, 0, 1]))
    with pytest.raises(ValueError, match="positives of two patients and negatives of two patients"):
        delong_test(y, np.arange(10.0), np.arange(10.0)[::-1], one_patient)


def test_duplicated_patients_leave_the_clustered_variance_unchanged_and_halve_the_image_one():
    ids, y, a, b = clustered_scores(80, 3, np.random.default_rng(14))
    twice = np.r_[ids, ids], np.r_[y, y], np.r_[a, a], np.r_[b, b]  # every film of every patient twice
    _, _, p_clustered = delong_test(y, a, b, ids)
    _, _, p_clustered_twice = delong_test(twice[1], twice[2], twice[3], twice[0])
    assert p_clustered_twice == pytest.approx(p_clustered, rel=1e-9)
    _, once = delong_covariance(y, np.vstack([a, b]), ids)
    _, doubled = delong_covariance(twice[1], np.vstack([twice[2], twice[3]]), twice[0])
    assert np.allclose(doubled, once, rtol=1e-9)
    _, image_once = delong_covariance(y, np.vstack([a, b]))
    _, image_doubled = delong_covariance(twice[1], np.vstack([twice[2], twice[3]]))
    assert np.allclose(image_doubled / image_once, 0.5, atol=0.01)  # as if the data had doubled


def test_with_correlated_films_only_the_clustered_test_holds_its_level():
    rng = np.random.default_rng(11)
    clustered, image = [], []
    for _ in range(400):
        ids, y, a, b = clustered_scores(100, 6, rng)
        clustered.append(delong_test(y, a, b, ids)[2])
        image.append(delong_test(y, a, b)[2])
    assert 0.02 < (np.array(clustered) < 0.05).mean() < 0.08
    assert (np.array(image) < 0.05).mean() > 0.25  # 0.36 here: images taken as independent reject far too often


def test_clusters_must_match_the_images_and_be_two_or_more():
    y, a = scored(50, 2, signal=1.0)
    with pytest.raises(ValueError, match="49 cluster ids for 50 images"):
        delong_test(y, a, a, np.arange(49))
    with pytest.raises(ValueError, match="positives of two patients"):
        delong_test(y, a, a + 1, np.zeros(50))
