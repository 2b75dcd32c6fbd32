"""Brier score, equal-mass ECE and reliability points, against computations written out by hand."""

import numpy as np
import pytest

from jobs.scoring.calibration import bin_sizes, brier_per_class, ece_per_class, reliability_points

# Six images, two classes: class 0 is over-confident, class 1 well ranked.
PROBS = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.2, 0.6], [0.1, 0.7], [0.05, 0.9]])
LABELS = np.array([[0, 0], [1, 0], [0, 0], [0, 1], [0, 1], [1, 1]])


def test_brier_is_the_mean_squared_gap_per_class():
    # class 0: (0.81 + 0.04 + 0.49 + 0.04 + 0.01 + 0.9025) / 6; class 1: (0.01 + 0.04 + 0.09 + 0.16 + 0.09 + 0.01) / 6
    expected = [(0.81 + 0.04 + 0.49 + 0.04 + 0.01 + 0.9025) / 6, (0.01 + 0.04 + 0.09 + 0.16 + 0.09 + 0.01) / 6]
    np.testing.assert_allclose(brier_per_class(LABELS, PROBS), expected, rtol=0, atol=1e-15)


def test_ece_with_equal_mass_bins_by_hand():
    # Three bins of two images each, by sorted probability.
    # class 0 sorted: (0.05,1) (0.1,0) | (0.2,0) (0.7,0) | (0.8,1) (0.9,0)
    #   bin gaps: |0.5 - 0.075| = 0.425, |0 - 0.45| = 0.45, |0.5 - 0.85| = 0.35 -> mean 0.40833...
    # class 1 sorted: (0.1,0) (0.2,0) | (0.3,0) (0.6,1) | (0.7,1) (0.9,1)
    #   bin gaps: 0.15, |0.5 - 0.45| = 0.05, |1 - 0.8| = 0.2 -> mean 0.13333...
    got = ece_per_class(LABELS, PROBS, bins=3)
    np.testing.assert_allclose(got, [(0.425 + 0.45 + 0.35) / 3, (0.15 + 0.05 + 0.2) / 3], rtol=0, atol=1e-15)
    # One bin: the gap of the means. As many bins as images: the mean absolute gap.
    np.testing.assert_allclose(ece_per_class(LABELS, PROBS, bins=1), np.abs(LABELS.mean(0) - PROBS.mean(0)), atol=1e-15)
    np.testing.assert_allclose(ece_per_class(LABELS, PROBS, bins=6), np.abs(LABELS - PROBS).mean(0), atol=1e-15)
    np.testing.assert_allclose(ece_per_class(LABELS, PROBS, bins=50), np.abs(LABELS - PROBS).mean(0), atol=1e-15)


def test_ece_of_a_large_set_equals_a_loop_over_equal_count_bins():
    rng = np.random.default_rng(3)
    n, bins = 1003, 15
    probs = rng.random((n, 14)) ** 3
    labels = (rng.random((n, 14)) < probs * 1.2).astype(int)
    got = ece_per_class(labels, probs, bins=bins)
    sizes = [n // bins + (1 if b < n % bins else 0) for b in range(bins)]  # 67 x 13, then 66 x 2
    for k in range(14):
        order = sorted(range(n), key=lambda i: (probs[i, k], i))
        total, start = 0.0, 0
        for size in sizes:
            members = order[start : start + size]
            start += size
            gap = abs(sum(labels[i, k] for i in members) / size - sum(probs[i, k] for i in members) / size)
            total += size * gap
        assert got[k] == pytest.approx(total / n, abs=1e-12)
    assert bin_sizes(probs[:, 0], bins).tolist() == sizes


def test_ties_are_never_split_between_bins():
    """A constant 0.25 on a set with a quarter positives is perfectly calibrated: one bin, no error (bins cut by
    rank alone would split the ties and see errors that are not there)."""
    labels = np.array([[1], [0], [0], [0]] * 25)
    probs = np.full((100, 1), 0.25)
    assert bin_sizes(probs[:, 0]).tolist() == [100]
    assert ece_per_class(labels, probs)[0] == pytest.approx(0.0, abs=1e-15)
    # A cut inside ties moves to their end: [0.1 x 4, 0.2, 0.3] in 3 bins of 2 -> the cuts after 2 and 4 both
    # fall at 4, so two bins; [0.1, 0.2 x 3, 0.3, 0.4] -> cuts at 2 and 4 become 4 and 4: bins of 4 and 2.
    assert bin_sizes(np.array([0.3, 0.1, 0.1, 0.2, 0.1, 0.1]), 3).tolist() == [4, 2]
    assert bin_sizes(np.array([0.1, 0.2, 0.2, 0.2, 0.3, 0.4]), 3).tolist() == [4, 2]
    assert bin_sizes(np.array([0.1, 0.2, 0.3, 0.3, 0.4, 0.5]), 3).tolist() == [2, 2, 2]


def test_reliability_points_pool_the_classes():
    mean_p, observed = reliability_points(LABELS, PROBS, bins=4)  # 12 pairs pooled: bins of 3
    pairs = sorted(zip(PROBS.ravel(), LABELS.ravel()), key=lambda t: t[0])
    np.testing.assert_allclose(mean_p, [np.mean([p for p, _ in pairs[i : i + 3]]) for i in range(0, 12, 3)])
    np.testing.assert_allclose(observed, [np.mean([y for _, y in pairs[i : i + 3]]) for i in range(0, 12, 3)])


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match=r"labels \(6, 2\) and probabilities \(6, 1\) must be the same"):
        brier_per_class(LABELS, PROBS[:, :1])
