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

import numpy as np

ECE_BINS = 15  # Guo et al. 2017's count; equal-mass, so each bin holds about n/15 images


def brier_per_class(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``(classes,)`` Brier score of each class: mean squared difference of probability and label."""
    labels, probs = _checked(labels, probs)
    if len(labels) == 0:
        return np.full(labels.shape[1], np.nan)
    return ((probs - labels) ** 2).mean(axis=0)


def equal_mass_bins(probs: np.ndarray, bins: int = ECE_BINS) -> list[np.ndarray]:
    """The image indices of each equal-mass bin of one class's probabilities, lowest first (ties kept together)."""
    probs = np.asarray(probs, dtype=np.float64)
    order = np.argsort(probs, kind="stable")
    if not len(order):
        return []
    ranked = probs[order]
    sizes = [len(b) for b in np.array_split(order, min(bins, len(order)))]
    cuts = np.cumsum(sizes)[:-1]  # where the even cut would fall; moved past the ties of the value before it
    cuts = np.unique(np.searchsorted(ranked, ranked[cuts - 1], side="right"))
    return [b for b in np.split(order, cuts) if len(b)]


def ece_per_class(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """``(classes,)`` expected calibration error of each class, with equal-mass bins."""
    labels, probs = _checked(labels, probs)
    out = np.full(labels.shape[1], np.nan)
    if len(labels) == 0:
        return out
    for k in range(labels.shape[1]):
        gaps = [(len(b), abs(labels[b, k].mean() - probs[b, k].mean())) for b in equal_mass_bins(probs[:, k], bins)]
        out[k] = sum(n * gap for n, gap in gaps) / len(labels)
    return out


def reliability_points(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray]:
    """The points of a reliability diagram over every (image, class) pair pooled: per equal-mass bin, the
    mean predicted probability and the observed frequency of positives."""
    labels, probs = _checked(labels, probs)
    y, p = labels.ravel(), probs.ravel()
    groups = equal_mass_bins(p, bins)
    return np.array([p[b].mean() for b in groups]), np.array([y[b].mean() for b in groups])


def _checked(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    if labels.shape != probs.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and probabilities {probs.shape} must be the same (images, classes)")
    return labels, probs
