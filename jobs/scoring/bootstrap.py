"""Bootstrap confidence intervals of AUROC, exact and compiled.

- :func:`resample_counts`: the resamples, as counts per image. By patient (a cluster bootstrap, the
  default of the report): patients are drawn with replacement and every image of a drawn patient
  counts as often as its patient is drawn, since films of one patient are correlated. By image: the
  images themselves are drawn. :class:`Resampling` is the report's design (unit, counts, patients),
  whose clusters the report's DeLong tests share, so that a p and the interval beside it have one unit.
- :func:`bootstrap_auroc`: per-class AUROC over bootstrap resamples of the images, exact (ties
  count one half). A resample is a row of multinomial counts; each class needs one sort of the
  scores, then one pass over the images in score order that carries, for every resample at once,
  the weighted count of negatives below (a compiled numba loop over contiguous rows of counts:
  about 0.1 s for 25,596 images x 14 classes x 1,000 resamples on two cores).
  :func:`bootstrap_auroc_reference` is the same in plain numpy (cumulative sums over the resamples
  matrix, over 100x slower; bench/results.md has the measured ratio), kept as the check.
- :func:`percentile_interval`, :func:`interval`: the percentile 95% interval of bootstrap samples.

The paired tests between scorers are in :mod:`jobs.scoring.delong`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np

from jobs.spec.configs import BOOTSTRAP_UNITS as UNITS

BOOTSTRAP_SEED = 20171


def resample_counts(
    n: int, resamples: int = 1000, seed: int = BOOTSTRAP_SEED, clusters: Sequence[int] | None = None
) -> np.ndarray:
    """``(resamples, n)`` counts: how often each image is drawn in each resample.

    Without ``clusters``, the images are drawn (multinomial counts over the ``n`` images). With
    ``clusters`` (each image's patient id), the patients are drawn with replacement, as many as there
    are, and each image counts as often as its patient was drawn: a cluster bootstrap.

    Every run of a study is scored on the same resamples, so their intervals are paired. The array
    is Fortran-ordered in the smallest unsigned type that holds the counts (uint8 for any real test
    set), so that its transpose, one row of ``resamples`` counts per image, is C-contiguous.
    """
    rng = np.random.default_rng(seed)
    if n == 0:
        return np.zeros((resamples, 0), dtype=np.uint8, order="F")
    if clusters is None:
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)
    else:
        if len(clusters) != n:
            raise ValueError(f"{len(clusters)} cluster ids for {n} images")
        ids, image_cluster = np.unique(np.asarray(clusters), return_inverse=True)
        drawn = rng.multinomial(len(ids), np.full(len(ids), 1.0 / len(ids)), size=resamples)
        counts = drawn[:, image_cluster.ravel()]
    dtype = np.uint8 if counts.max(initial=0) <= 255 else np.uint32
    return np.asfortranarray(counts.astype(dtype))


@dataclass
class Resampling:
    """The bootstrap of a report: its unit, its resamples of one set of test images, and the patients
    those images belong to (when the runs recorded them)."""

    unit: str  # "patient" or "image"
    counts: np.ndarray  # (resamples, images)
    images: int
    patients: int | None  # distinct patients among the images; None when unknown
    clusters: np.ndarray | None = None  # each image's patient when the unit is the patient: DeLong's clusters

    @property
    def resamples(self) -> int:
        return self.counts.shape[0]

    def describe(self) -> str:
        """How the intervals were drawn, for the report: the unit and the number of patients."""
        if self.unit == "patient":
            return (
                f"{self.resamples:,} resamples of the {self.patients:,} test patients, each drawn patient with all "
                f"of their images ({self.images:,} test images in all), percentile method"
            )
        of = f" of {self.patients:,} patients" if self.patients else ""
        return f"{self.resamples:,} resamples of the {self.images:,} test images{of}, percentile method"


def resampling(
    names: Sequence[str], patient_of: dict[str, int] | None, unit: str, resamples: int, seed: int = BOOTSTRAP_SEED
) -> Resampling:
    """The resamples of the test images ``names``. ``patient_of``: each image's patient (None when the
    runs did not record them: the patient unit then falls back to images, and :attr:`Resampling.unit`
    says so)."""
    if unit not in UNITS:
        raise ValueError(f"bootstrap unit {unit!r}: use one of {', '.join(UNITS)}")
    patients = None if patient_of is None else [patient_of[n] for n in names]
    distinct = None if patients is None else len(set(patients))
    if unit == "patient" and patients is not None:
        counts = resample_counts(len(names), resamples, seed, patients)
        return Resampling("patient", counts, len(names), distinct, np.asarray(patients))
    return Resampling("image", resample_counts(len(names), resamples, seed), len(names), distinct)


def bootstrap_auroc(labels: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``(resamples, classes)`` AUROC of ``scores`` on each resample (NaN where a resample has no
    positive or no negative of a class). ``labels``, ``scores``: ``(n, classes)``; ``counts`` from
    :func:`resample_counts`."""
    return _Ranked(labels, scores, counts.shape[1]).auroc(counts)


def auroc_and_bootstrap(labels: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``(classes,)`` AUROC of the scores themselves and :func:`bootstrap_auroc`, sorting them once.
    The AUROC is the kernel's on one "resample" that draws every image once: the values of
    :func:`jobs.scoring.metrics.auroc_per_class` (scikit-learn) without a second sort, which counts
    when a report scores 100 runs."""
    ranked = _Ranked(labels, scores, counts.shape[1])
    return ranked.auroc(np.ones((1, counts.shape[1]), dtype=np.uint8, order="F"))[0], ranked.auroc(counts)


class _Ranked:
    """Each class's images in score order, with their labels and the ends of runs of tied scores: the
    kernel's inputs, which cost one sort per class."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray, n: int):
        labels, scores = np.asarray(labels), np.asarray(scores)
        if labels.shape != scores.shape or labels.ndim != 2 or n != labels.shape[0]:
            raise ValueError(f"labels {labels.shape}, scores {scores.shape} and counts of {n} images do not match")
        self.classes = labels.shape[1]
        self.empty = labels.shape[0] == 0
        if self.empty:
            return
        order = np.argsort(scores, axis=0, kind="stable")  # (n, classes): image indices in score order
        s_sorted = np.take_along_axis(scores, order, axis=0)
        positive = np.take_along_axis(labels.astype(bool), order, axis=0)
        # group_end[i, c]: one past the last position tied with position i (runs of equal scores).
        new_run = np.ones_like(positive)
        new_run[1:] = s_sorted[1:] != s_sorted[:-1]
        group_end = np.empty(order.shape, dtype=np.int64)
        for c in range(order.shape[1]):
            starts = np.flatnonzero(new_run[:, c])
            ends = np.append(starts[1:], order.shape[0])
            group_end[:, c] = np.repeat(ends, ends - starts)
        self.order, self.positive = np.ascontiguousarray(order.T), np.ascontiguousarray(positive.T)
        self.group_end = np.ascontiguousarray(group_end.T)

    def auroc(self, counts: np.ndarray) -> np.ndarray:
        if self.empty:
            return np.full((counts.shape[0], self.classes), np.nan)
        out = np.empty((counts.shape[0], self.classes))
        _bootstrap_kernel(self.order, self.positive, self.group_end, np.ascontiguousarray(counts.T), out)
        return out


@numba.njit(parallel=True, nogil=True, cache=False)
def _bootstrap_kernel(order, positive, group_end, counts_t, out):  # pragma: no cover - compiled
    """For each class (in parallel) walk the images in score order; for every resample r keep
    ``below[r]``, the drawn negatives scored lower, and add ``count * below`` for each positive.
    A run of tied scores adds its positives x (negatives below + half the tied negatives)."""
    n, resamples = counts_t.shape
    for c in numba.prange(order.shape[0]):
        below, num, npos = np.zeros(resamples), np.zeros(resamples), np.zeros(resamples)
        tied_neg, tied_pos = np.zeros(resamples), np.zeros(resamples)
        i = 0
        while i < n:
            end = group_end[c, i]
            if end == i + 1:  # no tie: the common case, one pass over this image's counts
                row = counts_t[order[c, i]]
                if positive[c, i]:
                    for r in range(resamples):
                        num[r] += row[r] * below[r]
                        npos[r] += row[r]
                else:
                    for r in range(resamples):
                        below[r] += row[r]
            else:
                tied_neg[:] = 0.0
                tied_pos[:] = 0.0
                for k in range(i, end):
                    row = counts_t[order[c, k]]
                    if positive[c, k]:
                        for r in range(resamples):
                            tied_pos[r] += row[r]
                    else:
                        for r in range(resamples):
                            tied_neg[r] += row[r]
                for r in range(resamples):
                    num[r] += tied_pos[r] * (below[r] + 0.5 * tied_neg[r])
                    npos[r] += tied_pos[r]
                    below[r] += tied_neg[r]
            i = end
        for r in range(resamples):
            pairs = npos[r] * below[r]
            out[r, c] = num[r] / pairs if pairs > 0 else np.nan


def bootstrap_auroc_reference(labels: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """:func:`bootstrap_auroc` in plain numpy, class by class over the whole counts matrix."""
    out = np.full((counts.shape[0], labels.shape[1]), np.nan)
    counts_t = np.asfortranarray(counts.astype(np.float32))  # .T of it is C-contiguous (images, resamples)
    for c in range(labels.shape[1]):
        out[:, c] = _bootstrap_auroc_1d(labels[:, c].astype(bool), scores[:, c], counts_t)
    return out


def _bootstrap_auroc_1d(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    if y.all() or not y.any():
        return np.full(w.shape[0], np.nan)
    # Work on (images, resamples): gathering images is then a copy of contiguous rows.
    wt = w.T if w.flags.f_contiguous else np.ascontiguousarray(w.T)
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    new_group = np.r_[True, s_sorted[1:] != s_sorted[:-1]]
    starts, group = np.flatnonzero(new_group), np.cumsum(new_group) - 1  # runs of tied scores
    neg_rows, pos_rows = order[~y_sorted], order[y_sorted]
    w_neg = wt[neg_rows]  # (negatives, resamples), in score order
    neg_starts = np.searchsorted(np.flatnonzero(~y_sorted), starts)  # tie groups among the negatives
    has_neg = np.r_[neg_starts[1:], len(neg_rows)] > neg_starts
    neg_groups = np.zeros((len(starts), w.shape[0]))
    neg_groups[has_neg] = np.add.reduceat(w_neg, neg_starts[has_neg], axis=0, dtype=np.float64)
    below = np.cumsum(neg_groups, axis=0) - neg_groups  # weighted negatives strictly below each group
    g = group[y_sorted]
    credit = below[g] + 0.5 * neg_groups[g]  # (positives, resamples)
    w_pos = wt[pos_rows]
    num = np.einsum("ij,ij->j", w_pos, credit)
    den = w_pos.sum(axis=0, dtype=np.float64) * w_neg.sum(axis=0, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval over axis 0, ignoring NaN resamples."""
    tail = 100 * (1 - level) / 2
    with np.errstate(invalid="ignore"):
        return np.nanpercentile(samples, tail, axis=0), np.nanpercentile(samples, 100 - tail, axis=0)


def interval(samples: np.ndarray) -> tuple[float, float]:
    """The percentile 95% interval of a 1-d bootstrap sample."""
    lo, hi = percentile_interval(samples[:, None])
    return float(lo[0]), float(hi[0])


def row_nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over the classes (axis 1) of each resample, skipping NaN; NaN where a resample has none."""
    have = ~np.isnan(values)
    total = np.where(have, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(have.any(axis=1), total / have.sum(axis=1), np.nan)
