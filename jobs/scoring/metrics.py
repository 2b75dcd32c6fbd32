"""Point metrics of the 14 findings, from scikit-learn: AUROC, F1, and F1 thresholds chosen on validation.

A class with no positive or no negative image has no AUROC: it is NaN, and averages skip it (the
report says so). The bootstrap and DeLong statistics, which no library does fast, are in
:mod:`jobs.scoring.bootstrap` and :mod:`jobs.scoring.delong`, tested against these.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of one class (ties count one half); NaN when only one class is present."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def auroc_per_class(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each column of an (images x classes) label and score matrix."""
    return np.array([auroc(labels[:, k], scores[:, k]) for k in range(labels.shape[1])])


def f1_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """F1 of predicting positive when ``score >= threshold``; 0 when nothing is positive."""
    labels = np.asarray(labels).astype(bool)
    pred = np.asarray(scores) >= threshold
    # sklearn.metrics.f1_score, without its per-call validation (it runs 14 x per epoch and per ensemble).
    tp = int((pred & labels).sum())
    denom = int(pred.sum()) + int(labels.sum())
    return 2.0 * tp / denom if denom else 0.0


def f1_per_class(labels: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return np.array([f1_at(labels[:, k], scores[:, k], thresholds[k]) for k in range(labels.shape[1])])


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold that maximises F1 on these (validation) labels.

    Every distinct score is a candidate (predict positive when ``score >= t``); of thresholds with
    equal F1 the highest wins. With no positive image F1 is 0 everywhere, and the threshold is 1.0
    (predict nothing).
    """
    labels = np.asarray(labels).astype(bool)
    if not labels.any():
        return 1.0
    precision, recall, thresholds = precision_recall_curve(labels, np.asarray(scores, dtype=np.float64))
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    # F1 from the counts, 2 tp / (predicted + positives): exact, so equal F1s tie exactly.
    positives = int(labels.sum())
    tp = np.rint(recall * positives)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.where(tp > 0, np.rint(tp / precision), 0.0)
    f1 = 2.0 * tp / (predicted + positives)
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))  # thresholds ascend: the last maximum is the highest
    return float(thresholds[best])


def best_f1_thresholds(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return np.array([best_f1_threshold(labels[:, k], scores[:, k]) for k in range(labels.shape[1])])


def nanmean(values) -> float:
    """Mean over the classes that have a value; NaN when none has."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr[~np.isnan(arr)].mean()) if (~np.isnan(arr)).any() else float("nan")


def json_number(x, digits: int | None = 6) -> float | None:
    """A metric for a JSON file: NaN (no value) or an infinity as null, rounded to ``digits`` decimals
    (None: as is). JSON has neither."""
    x = float(x)
    if not math.isfinite(x):
        return None
    return x if digits is None else round(x, digits)
