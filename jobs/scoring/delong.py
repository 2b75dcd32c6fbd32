"""Paired DeLong tests of AUROC between scorers of the same images, with Holm's adjustment.

- :func:`delong_covariance`: the fast DeLong algorithm (Sun & Xu 2014, IEEE Signal Processing
  Letters 21(11)): AUROCs of k scorers on the same images and their covariance from midranks, in
  O(k N log N); :func:`delong_covariance_slow` is the textbook O(m n) version the tests check it with.
- :func:`delong_test`: the paired two-sided test of two AUROCs on the same images.
- :func:`holm`: Holm-Bonferroni adjusted p-values over the classes compared.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def midranks(x: np.ndarray) -> np.ndarray:
    """Midranks (1-based, ties get the mean of their ranks) along the last axis."""
    return rankdata(x, method="average", axis=-1).astype(np.float64)


def delong_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs ``(k,)`` of ``scores`` ``(k, n)`` against binary ``y`` ``(n,)`` and their ``(k, k)``
    DeLong covariance, by the midrank algorithm of Sun & Xu (2014)."""
    y = y.astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    pos, neg = scores[:, y], scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError("DeLong needs at least two positives and two negatives")
    tx, ty = midranks(pos), midranks(neg)
    tz = midranks(np.concatenate([pos, neg], axis=1))
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v10 = (tz[:, :m] - tx) / n  # per positive: the share of negatives it outranks
    v01 = 1.0 - (tz[:, m:] - ty) / m  # per negative: the share of positives that outrank it
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_covariance_slow(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same from the pairwise kernel psi(x, y) = 1 if x > y, 1/2 if equal: O(k m n) memory/time."""
    y = y.astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    v10, v01, aucs = [], [], []
    for s in scores:
        psi = (s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
        aucs.append(psi.mean())
    m, n = int(y.sum()), int((~y).sum())
    cov = np.atleast_2d(np.cov(np.array(v10))) / m + np.atleast_2d(np.cov(np.array(v01))) / n
    return np.array(aucs), cov


def delong_test(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Paired two-sided DeLong test of AUROC(a) = AUROC(b) on the same images: (auc_a, auc_b, p)."""
    aucs, cov = delong_covariance(y, np.vstack([a, b]))
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if var <= 0:
        return float(aucs[0]), float(aucs[1]), 1.0 if aucs[0] == aucs[1] else 0.0
    z = (aucs[0] - aucs[1]) / math.sqrt(var)
    return float(aucs[0]), float(aucs[1]), math.erfc(abs(z) / math.sqrt(2))


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error over the classes compared)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
