"""Paired DeLong tests of AUROC between scorers of the same images, with Holm's adjustment.

- :func:`delong_covariance`: the fast DeLong algorithm (Sun & Xu 2014, IEEE Signal Processing
  Letters 21(11)): AUROCs of k scorers on the same images and their covariance from midranks, in
  O(k N log N); :func:`delong_covariance_slow` is the textbook O(m n) version the tests check it with.
- Given each image's cluster (its patient), the covariance is Obuchowski's clustered one (Biometrics
  53:567-578, 1997): the same structural components, summed per patient, so that correlated films of
  one patient count as one unit, as the report's patient bootstrap does. Without clusters, images are
  taken as independent (DeLong, DeLong & Clarke-Pearson 1988).
- :func:`delong_test`: the paired two-sided test of two AUROCs on the same images; :func:`comparable`
  says whether a class's labels allow it.
- :func:`holm`: Holm-Bonferroni adjusted p-values over the classes compared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata


def midranks(x: np.ndarray) -> np.ndarray:
    """Midranks (1-based, ties get the mean of their ranks) along the last axis."""
    return rankdata(x, method="average", axis=-1).astype(np.float64)


def delong_covariance(
    y: np.ndarray, scores: np.ndarray, clusters: Sequence[int] | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs ``(k,)`` of ``scores`` ``(k, n)`` against binary ``y`` ``(n,)`` and their ``(k, k)``
    covariance, by the midrank algorithm of Sun & Xu (2014). ``clusters``: each image's patient; the
    covariance is then Obuchowski's clustered one (see the module's docstring)."""
    y = np.asarray(y).astype(bool)
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
    if clusters is None:
        return aucs, np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, _clustered_covariance(aucs, v10, v01, y, clusters)


def _clustered_covariance(
    aucs: np.ndarray, v10: np.ndarray, v01: np.ndarray, y: np.ndarray, clusters: Sequence[int] | np.ndarray
) -> np.ndarray:
    """Obuchowski (1997): with I clusters, I10 of them holding a positive and I01 a negative, cluster i
    holding m_i positives and n_i negatives, V10_i (V01_i) the sum of its positives' (negatives')
    components, D10_i = V10_i - m_i * auc, D01_i = V01_i - n_i * auc:
    S10 = I10/((I10-1) M) D10 D10', S01 = I01/((I01-1) N) D01 D01', S11 = I/(I-1) D10 D01', and
    cov = S10/M + S01/N + (S11 + S11')/(M N). With one image per patient it is DeLong's covariance."""
    clusters = np.asarray(clusters)
    if clusters.shape != y.shape:
        raise ValueError(f"{clusters.size} cluster ids for {y.size} images")
    _, index = np.unique(clusters, return_inverse=True)
    index = index.ravel()
    count = int(index.max()) + 1
    m, n = v10.shape[1], v01.shape[1]
    pos_index, neg_index = index[y], index[~y]
    m_i = np.bincount(pos_index, minlength=count)
    n_i = np.bincount(neg_index, minlength=count)
    i10, i01 = int((m_i > 0).sum()), int((n_i > 0).sum())
    if i10 < 2 or i01 < 2:
        raise ValueError("a clustered DeLong test needs positives of two patients and negatives of two patients")
    d10 = np.array([np.bincount(pos_index, weights=row, minlength=count) for row in v10]) - np.outer(aucs, m_i)
    d01 = np.array([np.bincount(neg_index, weights=row, minlength=count) for row in v01]) - np.outer(aucs, n_i)
    s10 = i10 / (i10 - 1) / m * (d10 @ d10.T)
    s01 = i01 / (i01 - 1) / n * (d01 @ d01.T)
    s11 = count / (count - 1) * (d10 @ d01.T)
    return s10 / m + s01 / n + (s11 + s11.T) / (m * n)


def delong_covariance_slow(
    y: np.ndarray, scores: np.ndarray, clusters: Sequence[int] | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The same from the pairwise kernel psi(x, y) = 1 if x > y, 1/2 if equal: O(k m n) memory/time,
    and (with ``clusters``) a loop over the clusters."""
    y = np.asarray(y).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    v10, v01, aucs = [], [], []
    for s in scores:
        psi = (s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
        aucs.append(psi.mean())
    m, n = int(y.sum()), int((~y).sum())
    if clusters is None:
        cov = np.atleast_2d(np.cov(np.array(v10))) / m + np.atleast_2d(np.cov(np.array(v01))) / n
        return np.array(aucs), cov
    clusters = np.asarray(clusters)
    ids = sorted(set(clusters.tolist()))
    k, count = len(scores), len(ids)
    i10, i01 = len(set(clusters[y].tolist())), len(set(clusters[~y].tolist()))
    cov = np.zeros((k, k))
    for r in range(k):
        for s in range(k):
            s10 = s01 = s11 = s11_t = 0.0
            for c in ids:
                in_pos, in_neg = clusters[y] == c, clusters[~y] == c
                d10_r = v10[r][in_pos].sum() - in_pos.sum() * aucs[r]
                d10_s = v10[s][in_pos].sum() - in_pos.sum() * aucs[s]
                d01_r = v01[r][in_neg].sum() - in_neg.sum() * aucs[r]
                d01_s = v01[s][in_neg].sum() - in_neg.sum() * aucs[s]
                s10 += d10_r * d10_s
                s01 += d01_r * d01_s
                s11 += d10_r * d01_s
                s11_t += d10_s * d01_r
            cov[r, s] = (
                i10 / (i10 - 1) * s10 / m / m
                + i01 / (i01 - 1) * s01 / n / n
                + count / (count - 1) * (s11 + s11_t) / (m * n)
            )
    return np.array(aucs), cov


def comparable(y: np.ndarray, clusters: Sequence[int] | np.ndarray | None = None) -> bool:
    """Whether DeLong's test can compare scorers on labels ``y``: two positives and two negatives, and
    (clustered) positives of two patients and negatives of two patients (the positives of one patient
    alone say nothing of how the next patient's would score)."""
    y = np.asarray(y).astype(bool)
    if y.sum() < 2 or (~y).sum() < 2:
        return False
    if clusters is None:
        return True
    clusters = np.asarray(clusters)
    return len(np.unique(clusters[y])) >= 2 and len(np.unique(clusters[~y])) >= 2


def delong_test(
    y: np.ndarray, a: np.ndarray, b: np.ndarray, clusters: Sequence[int] | np.ndarray | None = None
) -> tuple[float, float, float]:
    """Paired two-sided DeLong test of AUROC(a) = AUROC(b) on the same images: (auc_a, auc_b, p).
    ``clusters``: each image's patient, for Obuchowski's clustered variance; None: images independent."""
    aucs, cov = delong_covariance(y, np.vstack([a, b]), clusters)
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
