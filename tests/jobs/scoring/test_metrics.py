import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from jobs.scoring.metrics import (
    auroc,
    auroc_per_class,
    best_f1_threshold,
    best_f1_thresholds,
    f1_at,
    f1_per_class,
    nanmean,
)


def test_auroc_of_a_known_prediction_set():
    # 4 positive/negative pairs: (0.35 vs 0.1 win), (0.35 vs 0.4 loss), (0.8 vs both win) -> 3/4
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    # a tie between a positive and a negative counts one half
    assert auroc([0, 1], [0.5, 0.5]) == 0.5


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.random((600, 14)) < np.linspace(0.02, 0.4, 14)
    scores = np.round(rng.random((600, 14)) + 0.4 * labels, 2)  # rounding makes many ties
    expected = [roc_auc_score(labels[:, k], scores[:, k]) for k in range(14)]
    np.testing.assert_allclose(auroc_per_class(labels, scores), expected, rtol=0, atol=1e-12)


def test_auroc_without_positives_is_nan_and_skipped_by_the_mean():
    values = auroc_per_class(np.array([[0, 1], [0, 0], [0, 1]]), np.array([[0.2, 0.9], [0.1, 0.1], [0.3, 0.8]]))
    assert np.isnan(values[0]) and values[1] == 1.0
    assert nanmean(values) == 1.0


def test_f1_matches_sklearn_at_given_thresholds():
    rng = np.random.default_rng(1)
    labels = (rng.random((300, 14)) < 0.2).astype(int)
    scores = rng.random((300, 14)) + 0.3 * labels
    thresholds = np.linspace(0.3, 0.9, 14)
    expected = [f1_score(labels[:, k], scores[:, k] >= thresholds[k]) for k in range(14)]
    np.testing.assert_allclose(f1_per_class(labels, scores, thresholds), expected, atol=1e-12)


def test_best_threshold_maximises_f1_over_every_candidate():
    rng = np.random.default_rng(2)
    for _ in range(20):
        y = rng.random(200) < 0.15
        s = np.round(rng.random(200) + 0.5 * y, 2)
        t = best_f1_threshold(y, s)
        brute = max(f1_score(y, s >= u) for u in np.unique(s))
        assert f1_at(y, s, t) == pytest.approx(brute, abs=1e-12)


def test_best_threshold_known_value_and_no_positive_case():
    # positives at 0.9 and 0.6, a negative at 0.7: threshold 0.6 gives F1 = 2*2/(3+2) = 0.8 (best)
    assert best_f1_threshold([1, 0, 1, 0], [0.9, 0.7, 0.6, 0.1]) == 0.6
    assert best_f1_threshold([0, 0], [0.3, 0.2]) == 1.0
    assert best_f1_thresholds(np.array([[1], [0]]), np.array([[0.8], [0.2]])).tolist() == [0.8]


def test_of_thresholds_with_equal_f1_the_highest_wins():
    # t=0.9: F1 2*1/(1+2) = 2/3; t=0.6 (predict all): 2*2/(4+2) = 2/3; 0.8 and 0.7 are lower
    assert best_f1_threshold([1, 0, 0, 1], [0.9, 0.8, 0.7, 0.6]) == 0.9
