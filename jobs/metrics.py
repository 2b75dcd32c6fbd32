"""Classification metrics for the 14 findings: AUROC, F1, and F1 thresholds chosen on validation.

AUROC is the Mann-Whitney statistic computed from average ranks (ties count one half), which is
exactly what scikit-learn's ``roc_auc_score`` returns. A class with no positive or no negative
image has no AUROC: it is NaN, and averages skip it (the report says so).
"""

from __future__ import annotations

import numpy as np


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of ``scores`` along the last axis, ties given their mean rank."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Start index of each run of equal scores, and the run each position belongs to.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    run_rank = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of one class; NaN when only one class is present."""
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc_per_class(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each column of an (images x classes) label and score matrix."""
    return np.array([auroc(labels[:, k], scores[:, k]) for k in range(labels.shape[1])])


def f1_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """F1 of predicting positive when ``score >= threshold``; 0 when nothing is positive."""
    labels = np.asarray(labels).astype(bool)
    pred = np.asarray(scores) >= threshold
    tp = int((pred & labels).sum())
    denom = int(pred.sum()) + int(labels.sum())
    return 2.0 * tp / denom if denom else 0.0


def f1_per_class(labels: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return np.array([f1_at(labels[:, k], scores[:, k], thresholds[k]) for k in range(labels.shape[1])])


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold that maximises F1 on these (validation) labels.

    Every distinct score is a candidate (predict positive when ``score >= t``). With no positive
    image F1 is 0 everywhere, and the threshold is 1.0 (predict nothing).
    """
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    if n_pos == 0:
        return 1.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    s, y = np.asarray(scores, dtype=np.float64)[order], labels[order]
    tp = np.cumsum(y)
    predicted = np.arange(1, len(s) + 1)
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # thresholds fall between distinct scores
    f1 = 2.0 * tp[last_of_run] / (predicted[last_of_run] + n_pos)
    return float(s[last_of_run[int(np.argmax(f1))]])


def best_f1_thresholds(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return np.array([best_f1_threshold(labels[:, k], scores[:, k]) for k in range(labels.shape[1])])


def nanmean(values) -> float:
    """Mean over the classes that have a value; NaN when none has."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr[~np.isnan(arr)].mean()) if (~np.isnan(arr)).any() else float("nan")
