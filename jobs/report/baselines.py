"""Score another system's predictions (a published CheXNet reimplementation, say) on a dataset's split.

The predictions file is the CheXNet-style CSV of public reimplementations: a column ``Image Index``
and one column ``prob_<Class>`` per finding (``prob_Pleural_Thickening``); other columns, such as
``label_*``, are ignored. Labels come from the dataset's metadata CSV and split lists alone, so no
image needs to be downloaded, and the split is exactly the one :func:`jobs.data.nih.read_nih` gives.

AUROC is computed on the file's rows of the split being scored. F1 needs a threshold per class:
when the file also has rows for validation images, the F1-maximising thresholds on those rows
(never on the scored split, which would flatter the F1); otherwise a fixed threshold, 0.5.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

from jobs.data.labels import CLASSES, NUM_CLASSES
from jobs.data.nih import SPLITS, labelled_splits, require_images
from jobs.errors import ConfigError, PredictionsError
from jobs.report.tables import fmt, markdown_table
from jobs.scoring.metrics import auroc_per_class, best_f1_thresholds, f1_per_class, json_number, nanmean
from jobs.scoring.predictions import read_location, read_prediction_csv
from jobs.store import open_store

# ---------------------------------------------------------------- scoring


@dataclass
class BaselineScore:
    """The metrics of one predictions file on one split, and how the file matched the split."""

    name: str
    split: str
    names: list[str]  # the images scored, sorted
    probs: np.ndarray  # (images, 14), rows aligned with names
    labels: np.ndarray  # (images, 14) uint8
    auroc: np.ndarray  # 14, NaN where the scored rows have no positive or no negative
    f1: np.ndarray  # 14
    thresholds: np.ndarray  # 14
    threshold_source: str  # "validation (N images in the file)" or "fixed 0.5"
    split_images: int  # images in the split
    missing: int  # split images the file lacks
    extra: int  # file rows in neither the split nor the validation split (ignored)
    val_rows: int  # file rows that are validation images (thresholds come from them)

    @property
    def avg_auroc(self) -> float:
        return nanmean(self.auroc)

    @property
    def avg_f1(self) -> float:
        return nanmean(self.f1)

    @property
    def positives(self) -> np.ndarray:
        return self.labels.sum(axis=0).astype(np.int64)


def score_predictions(
    name: str,
    file_names: list[str],
    file_probs: np.ndarray,
    split_names: list[str],
    split_labels: np.ndarray,
    val: tuple[list[str], np.ndarray] | None = None,
    threshold: float = 0.5,
    *,
    split: str = "test",
) -> BaselineScore:
    """Score a file's rows of one split.

    Args:
        name: what the predictions are called in the write-up (e.g. ``chexnet``).
        file_names, file_probs: the file's images and (images, 14) probabilities.
        split_names, split_labels: the split being scored, and its (n, 14) labels.
        val: the validation split's names and labels; when the file has rows for validation images
            (that are not in the scored split), the F1 thresholds are the F1-maximising ones on them.
        threshold: the fixed threshold of every class when the file has no validation row.
        split: the scored split's name, for the write-up.
    """
    file_probs = np.asarray(file_probs, dtype=np.float64)
    if file_probs.shape != (len(file_names), NUM_CLASSES):
        raise ValueError(f"file_probs has shape {file_probs.shape}, expected ({len(file_names)}, {NUM_CLASSES})")
    if np.shape(split_labels) != (len(split_names), NUM_CLASSES):
        raise ValueError(f"split_labels has shape {np.shape(split_labels)}, expected ({len(split_names)}, 14)")
    row_of = {n: i for i, n in enumerate(file_names)}
    if len(row_of) != len(file_names):
        raise PredictionsError(f"{name}: the predictions name some images more than once; keep one row per image")
    label_row = {n: i for i, n in enumerate(split_names)}
    scored = sorted(n for n in label_row if n in row_of)
    if not scored:
        examples = [
            f"{what} has {names[0]!r}"
            for what, names in (("the file", file_names), ("the split", split_names))
            if names
        ]
        raise PredictionsError(
            f"{name}: none of the file's {len(file_names):,} rows is an image of the {split} split "
            f"({len(split_names):,} images; {', '.join(examples)}); "
            "check that 'Image Index' holds NIH image names (00000003_000.png) and that the split is the right one"
        )
    probs = file_probs[[row_of[n] for n in scored]]
    labels = np.asarray(split_labels, dtype=np.uint8)[[label_row[n] for n in scored]]

    thresholds, source, val_rows = _thresholds(row_of, file_probs, set(label_row), val, threshold)
    return BaselineScore(
        name=name,
        split=split,
        names=scored,
        probs=probs,
        labels=labels,
        auroc=auroc_per_class(labels, probs),
        f1=np.where(labels.sum(axis=0) > 0, f1_per_class(labels, probs, thresholds), np.nan),  # as for the runs
        thresholds=thresholds,
        threshold_source=source,
        split_images=len(split_names),
        missing=len(split_names) - len(scored),
        extra=len(file_names) - len(scored) - val_rows,
        val_rows=val_rows,
    )


def _thresholds(
    row_of: dict[str, int],
    file_probs: np.ndarray,
    scored_split: set[str],
    val: tuple[list[str], np.ndarray] | None,
    threshold: float,
) -> tuple[np.ndarray, str, int]:
    """F1 thresholds from the file's validation rows (never the scored split's), else ``threshold``:
    the thresholds, where they came from, and how many validation rows the file has."""
    val_names, val_labels = val if val is not None else ([], np.zeros((0, NUM_CLASSES), dtype=np.uint8))
    val_in_file = [(i, row_of[n]) for i, n in enumerate(val_names) if n in row_of and n not in scored_split]
    if not val_in_file:
        return np.full(NUM_CLASSES, float(threshold)), f"fixed {threshold:g}", 0
    val_idx, file_idx = (list(t) for t in zip(*val_in_file))
    thresholds = best_f1_thresholds(np.asarray(val_labels)[val_idx], file_probs[file_idx])
    return thresholds, f"validation ({len(val_in_file):,} images in the file)", len(val_in_file)


# ---------------------------------------------------------------- write-ups


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _be(n: int) -> str:
    return "is" if n == 1 else "are"


def evaluation_markdown(score: BaselineScore) -> str:
    """The evaluation in the style of the reference write-ups (four decimals, padded tables)."""
    coverage = (
        f"Scored on {score.split_images - score.missing:,} of {score.split_images:,} {score.split} images; "
        f"{_count(score.missing, 'image')} of the split {_be(score.missing)} missing from the file; "
        f"{_count(score.extra, 'row')} {_be(score.extra)} not in the split (ignored)."
    )
    if score.val_rows:
        thresholds = (
            f"F1 thresholds: chosen per class to maximise F1 on the file's {_count(score.val_rows, 'validation image')}"
            f" (never on the {score.split} split itself); source: {score.threshold_source}."
        )
    else:
        thresholds = f"F1 thresholds: {score.threshold_source} for every class (the file has no validation rows)."
    unscored = [CLASSES[k].replace("_", " ") for k in range(NUM_CLASSES) if math.isnan(score.auroc[k])]
    if unscored:
        thresholds += f" No AUROC for {', '.join(unscored)}: the scored rows have no positive or no negative image."
    overall = markdown_table(
        ["Images", "Avg AUROC", "Avg F1"], [[f"{len(score.names):,}", fmt(score.avg_auroc), fmt(score.avg_f1)]]
    )
    per_class = markdown_table(
        ["Class".ljust(20), "Positives", "AUROC", "F1", "Threshold"],
        [
            [c, f"{score.positives[k]:,}", fmt(score.auroc[k]), fmt(score.f1[k]), fmt(float(score.thresholds[k]))]
            for k, c in enumerate(CLASSES)
        ],
        centered={1, 2, 3, 4},
    )
    return "\n\n".join(
        [
            f"# {score.name}: evaluation on the {score.split} split",
            coverage,
            thresholds,
            "## Overall Metrics",
            overall,
            "## Per-Class AUROC and F1",
            per_class,
        ]
    )


def evaluation_files(score: BaselineScore) -> dict[str, str]:
    """``evaluation.md``, ``evaluation.csv`` (per class, then an Average row) and ``evaluation.json``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["Class", "Positives", "AUROC", "F1", "Threshold"])
    for k, c in enumerate(CLASSES):
        cells = [score.auroc[k], score.f1[k], score.thresholds[k]]
        writer.writerow([c, int(score.positives[k]), *("" if math.isnan(v) else repr(float(v)) for v in cells)])
    average = ["" if math.isnan(v) else repr(v) for v in (score.avg_auroc, score.avg_f1)]
    writer.writerow(["Average", "", *average, ""])
    record = {
        "name": score.name,
        "split": score.split,
        "split_images": score.split_images,
        "scored": len(score.names),
        "missing": score.missing,
        "extra": score.extra,
        "val_rows": score.val_rows,
        "threshold_source": score.threshold_source,
        "avg_auroc": json_number(score.avg_auroc, None),
        "avg_f1": json_number(score.avg_f1, None),
        "classes": [
            {
                "class": c,
                "positives": int(score.positives[k]),
                "auroc": json_number(score.auroc[k], None),
                "f1": json_number(score.f1[k], None),
                "threshold": json_number(score.thresholds[k], None),
            }
            for k, c in enumerate(CLASSES)
        ],
    }
    return {
        "evaluation.md": evaluation_markdown(score) + "\n",
        "evaluation.csv": out.getvalue(),
        "evaluation.json": json.dumps(record, indent=2, allow_nan=False) + "\n",
    }


def evaluate(
    predictions_uri: str,
    dataset_uri: str,
    split: str = "test",
    out_dir: str | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 20171,
    threshold: float = 0.5,
    log: Callable[[str], None] = print,
    name: str | None = None,
) -> BaselineScore:
    """``cxrstudy evaluate PREDICTIONS.csv --dataset DIR_OR_S3``, minus the argument parsing.

    Reads the predictions and the dataset's split labels, scores the split (thresholds from the file's
    validation rows when it has any), logs one line, and writes the evaluation files into ``out_dir``
    when given. ``name`` defaults to the predictions file's stem. Returns the score.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if not 0 < threshold < 1:  # NaN too
        raise ConfigError(
            f"--threshold {threshold:g}: the F1 threshold is a probability strictly between 0 and 1 "
            "(the default is 0.5); the predictions must be probabilities too"
        )
    data, where = read_location(predictions_uri)
    file_names, file_probs = read_prediction_csv(data, where)
    store = open_store(dataset_uri)
    splits = labelled_splits(store, {split, "val"}, val_fraction, split_seed)
    require_images(store, split, splits[split][0])
    score = score_predictions(
        name or PurePosixPath(where).stem,
        file_names,
        file_probs,
        *splits[split],
        val=None if split == "val" else splits["val"],
        threshold=threshold,
        split=split,
    )
    log(
        f"evaluate: {where}: {len(file_names):,} rows; scored {len(score.names):,} of {score.split_images:,} "
        f"{split} images ({score.missing:,} missing, {score.extra:,} rows ignored); thresholds: "
        f"{score.threshold_source}; Avg AUROC {fmt(score.avg_auroc)}, Avg F1 {fmt(score.avg_f1)}"
    )
    if out_dir is not None:
        target = open_store(out_dir)
        for filename, text in evaluation_files(score).items():
            target.put_text(filename, text)
        log(f"evaluate: wrote evaluation.md, evaluation.csv, evaluation.json to {target.uri}")
    return score
