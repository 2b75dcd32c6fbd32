"""Calibration of predicted probabilities, per class: the Brier score, the expected calibration error
with equal-mass bins, and the points of a reliability diagram.

- Brier score: the mean of ``(p - y)^2`` over the images (lower is better; 0 is perfect).
- ECE with equal-mass bins: the images sorted by predicted probability are cut into ``bins`` runs of
  as equal a size as possible (the sizes of ``numpy.array_split``), except that images of equal
  probability are never split: a cut inside a run of ties moves to its end (so there are fewer,
  larger bins when many probabilities tie, and fewer bins when there are fewer images). ECE is the
  image-weighted mean over bins of ``|mean(y) - mean(p)|``. Equal-mass bins
  suit chest X-ray findings, whose probabilities crowd near 0: equal-width bins would put most
  images in the first bin and leave the others nearly empty.

Thresholds and F1 depend on calibration, and focal loss shifts it relative to BCE, which is why the
report gives these beside Avg AUROC and Avg F1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ECE_BINS = 15  # Guo et al. 2017's count; equal-mass, so each bin holds about n/15 images


def brier_per_class(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``(classes,)`` Brier score of each class: mean squared difference of probability and label."""
    labels, probs = _checked(labels, probs)
    if len(labels) == 0:
        return np.full(labels.shape[1], np.nan)
    return ((probs - labels) ** 2).mean(axis=0)


def bin_sizes(probs: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """The image count of each equal-mass bin of one class's probabilities, lowest first."""
    return np.diff(_bin_bounds(np.sort(np.asarray(probs, dtype=np.float64)), bins))


def _bin_bounds(ranked: np.ndarray, bins: int) -> np.ndarray:
    """``[0, cut, ..., n]``: where the equal-mass bins of sorted values start and end. The even cuts
    (``numpy.array_split``'s sizes) each move past the run of ties they would split."""
    n = len(ranked)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    k = min(bins, n)
    even = np.arange(1, k) * (n // k) + np.minimum(np.arange(1, k), n % k)  # array_split's boundaries
    cuts = np.unique(np.searchsorted(ranked, ranked[even - 1], side="right"))
    return np.concatenate([[0], cuts[cuts < n], [n]])


def _binned_gaps(labels: np.ndarray, probs: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one class: each equal-mass bin's image count, and its sums of labels and of probabilities
    (from cumulative sums over the sorted values: no per-bin indexing)."""
    order = np.argsort(probs)  # ties form one bin whatever their order, so any sort gives the same bins
    ranked = probs[order]
    bounds = _bin_bounds(ranked, bins)
    sum_p = np.concatenate([[0.0], np.cumsum(ranked)])[bounds]
    sum_y = np.concatenate([[0.0], np.cumsum(labels[order])])[bounds]
    return np.diff(bounds), np.diff(sum_y), np.diff(sum_p)


def ece_per_class(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """``(classes,)`` expected calibration error of each class, with equal-mass bins."""
    labels, probs = _checked(labels, probs)
    out = np.full(labels.shape[1], np.nan)
    if len(labels) == 0:
        return out
    for k in range(labels.shape[1]):
        _, sum_y, sum_p = _binned_gaps(labels[:, k], probs[:, k], bins)
        out[k] = np.abs(sum_y - sum_p).sum() / len(labels)  # sum over bins of n_b * |mean y - mean p|, over n
    return out


def reliability_points(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray]:
    """The points of a reliability diagram over every (image, class) pair pooled: per equal-mass bin, the
    mean predicted probability and the observed frequency of positives."""
    labels, probs = _checked(labels, probs)
    counts, sum_y, sum_p = _binned_gaps(labels.ravel(), probs.ravel(), bins)
    return sum_p / counts, sum_y / counts


def _checked(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    if labels.shape != probs.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and probabilities {probs.shape} must be the same (images, classes)")
    return labels, probs


@dataclass
class Calibration:
    """Per class Brier score and ECE of one scorer, and their class averages."""

    brier: np.ndarray  # (classes,)
    ece: np.ndarray  # (classes,)

    @property
    def avg_brier(self) -> float:
        return float(np.nanmean(self.brier)) if not np.isnan(self.brier).all() else float("nan")

    @property
    def avg_ece(self) -> float:
        return float(np.nanmean(self.ece)) if not np.isnan(self.ece).all() else float("nan")


def calibration_of(labels: np.ndarray, probs: np.ndarray) -> Calibration:
    return Calibration(brier_per_class(labels, probs), ece_per_class(labels, probs))
