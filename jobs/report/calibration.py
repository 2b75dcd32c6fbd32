"""Calibration in the report, per architecture: each run's and the seed ensemble's Brier score and
expected calibration error (equal-mass bins) per class on test, and a reliability diagram.

The metrics are :mod:`jobs.scoring.calibration`'s, computed from the runs' stored test predictions.
Each run's class averages also go into the reference's "Overall Metrics Comparison" table
(:mod:`jobs.report.build`), beside Avg AUROC and Avg F1.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.data.labels import CLASSES
from jobs.report import figures
from jobs.report.seeds import Ensemble, RunPredictions
from jobs.report.tables import fmt, markdown_table, mean_std
from jobs.scoring.calibration import ECE_BINS, calibration_of, reliability_points
from jobs.scoring.metrics import json_number


@dataclass
class CalibrationSection:
    text: str
    rows: list[list]  # <arch>_calibration.csv
    structured: dict
    png: bytes  # the reliability diagram


def calibration_section(name: str, arch: str, runs: list[RunPredictions], ensemble: Ensemble) -> CalibrationSection:
    """One architecture's calibration table (seeds' mean +/- std and the ensemble, per class), its CSV
    rows, its report.json part and its reliability diagram."""
    runs = sorted(runs, key=lambda r: r.seed)
    per_seed = [r.calibration for r in runs]
    ens = calibration_of(ensemble.test.labels, ensemble.test.probs)
    rows = []
    for k, c in enumerate(CLASSES):
        rows.append(
            [
                c,
                mean_std([m.brier[k] for m in per_seed]),
                fmt(ens.brier[k]),
                mean_std([m.ece[k] for m in per_seed]),
                fmt(ens.ece[k]),
            ]
        )
    rows.append(
        [
            "**Average**",
            mean_std([m.avg_brier for m in per_seed]),
            fmt(ens.avg_brier),
            mean_std([m.avg_ece for m in per_seed]),
            fmt(ens.avg_ece),
        ]
    )
    best = min(range(len(runs)), key=lambda i: per_seed[i].avg_ece)
    text = "\n\n".join(
        [
            f"## {name}: Calibration",
            (
                f"Per class on test: the Brier score (mean squared difference of probability and label) and the "
                f"expected calibration error with {ECE_BINS} equal-mass bins (images sorted by probability, cut into "
                f"bins of equal count; the count-weighted mean of |observed frequency - mean probability|), over the "
                f"{len(runs)} seeds (mean ± std) and for the seed ensemble. Lower is better for both. F1 thresholds "
                "are chosen on validation, so a model whose calibration shifts between splits loses F1."
            ),
            markdown_table(["Class", "Brier (seeds)", "Brier (ensemble)", "ECE (seeds)", "ECE (ensemble)"], rows),
            (
                f"- Seed {runs[best].seed} is the best calibrated (Avg ECE {fmt(per_seed[best].avg_ece)}); the "
                f"ensemble's Avg ECE is {fmt(ens.avg_ece)} and its Avg Brier {fmt(ens.avg_brier)}."
            ),
            f"![{name}: reliability diagram, each seed and the ensemble](figures/{arch}_reliability.png)",
        ]
    )
    csv_rows = [["Scorer", "Class", "Brier", "ECE"]]
    for label, m in [*((f"seed {r.seed}", m) for r, m in zip(runs, per_seed)), ("ensemble", ens)]:
        csv_rows += [[label, c, m.brier[k], m.ece[k]] for k, c in enumerate(CLASSES)]
        csv_rows.append([label, "Average", m.avg_brier, m.avg_ece])
    structured = {
        "bins": ECE_BINS,
        "seeds": {
            str(r.seed): {"avg_brier": json_number(m.avg_brier), "avg_ece": json_number(m.avg_ece)}
            for r, m in zip(runs, per_seed)
        },
        "ensemble": {
            "avg_brier": json_number(ens.avg_brier),
            "avg_ece": json_number(ens.avg_ece),
            "brier": dict(zip(CLASSES, map(json_number, ens.brier))),
            "ece": dict(zip(CLASSES, map(json_number, ens.ece))),
        },
    }
    png = figures.reliability_figure(
        name,
        [r.seed for r in runs],
        [reliability_points(r.test.labels, r.test.probs) for r in runs],
        reliability_points(ensemble.test.labels, ensemble.test.probs),
    )
    return CalibrationSection(text, csv_rows, structured, png)
