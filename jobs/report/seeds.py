"""What the report adds beyond the reference tables, per architecture: seed spread per class,
bootstrap intervals, the seed ensemble and the best seed chosen on validation (the DeLong tests
between scorers are in ``jobs.report.comparison``).

Everything is computed from the runs' stored per-image predictions (``predictions_val.csv``,
``predictions_test.csv``), never from the models, so a report can be rebuilt at any time.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from jobs.data.labels import CLASSES
from jobs.report.tables import fmt, markdown_table, mean_std
from jobs.scoring.bootstrap import (
    Resampling,
    auroc_and_bootstrap,
    bootstrap_auroc,
    interval,
    percentile_interval,
    row_nanmean,
)
from jobs.scoring.calibration import Calibration, calibration_of
from jobs.scoring.metrics import auroc_per_class, best_f1_thresholds, f1_per_class, json_number, nanmean
from jobs.scoring.predictions import Predictions


@dataclass
class RunPredictions:
    seed: int
    val_auroc: np.ndarray  # per class, from result.json
    val: Predictions
    test: Predictions

    @functools.cached_property
    def calibration(self) -> Calibration:
        """The run's calibration on test (computed once: the overall table and the calibration section use it)."""
        return calibration_of(self.test.labels, self.test.probs)


@dataclass
class Ensemble:
    name: str  # display name of the architecture
    test: Predictions
    auroc: np.ndarray
    f1: np.ndarray


def ensemble(name: str, runs: list[RunPredictions]) -> Ensemble:
    """Average the seeds' probabilities; F1 thresholds chosen on the averaged validation probabilities."""
    for r in runs[1:]:
        if r.test.names != runs[0].test.names or r.val.names != runs[0].val.names:
            raise ValueError(f"{name}: the runs were scored on different images; they cannot be ensembled")
    val = np.mean([r.val.probs for r in runs], axis=0)
    test = Predictions(runs[0].test.names, np.mean([r.test.probs for r in runs], axis=0), runs[0].test.labels)
    thresholds = best_f1_thresholds(runs[0].val.labels, val)
    f1 = f1_per_class(test.labels, test.probs, thresholds)
    f1 = np.where(test.labels.sum(axis=0) > 0, f1, np.nan)
    return Ensemble(name, test, auroc_per_class(test.labels, test.probs), f1)


def _ci(lo: float, hi: float) -> str:
    return f"{fmt(lo)}-{fmt(hi)}"


@dataclass
class ArchitectureAnalysis:
    """One architecture's part of the report beyond the reference, and the numbers its figures need."""

    text: str
    files: dict[str, list[list]]  # CSV name -> rows
    structured: dict
    ensemble: Ensemble
    seeds: list[int]
    test_auroc: np.ndarray  # (seeds, 14)
    avg_auroc: np.ndarray  # (seeds,)
    avg_ci: np.ndarray  # (seeds, 2): bootstrap 95% interval of each seed's Avg AUROC


@dataclass
class SeedNumbers:
    """What one architecture's seeds and their ensemble measure, before it is written up."""

    runs: list[RunPredictions]  # sorted by seed
    ensemble: Ensemble
    resampling: Resampling  # the bootstrap resamples (shared by every run of the study)
    test_auroc: np.ndarray  # (seeds, 14)
    avg_auroc: np.ndarray  # (seeds,)
    boots: list[np.ndarray]  # per run: (resamples, 14) bootstrap AUROCs
    avg_ci: np.ndarray  # (seeds, 2)
    ens_ci: tuple[float, float]  # the ensemble's Avg AUROC interval
    ens_class_ci: tuple[np.ndarray, np.ndarray]  # the ensemble's per-class interval (low, high)
    per_image_std: float  # the predicted probability's std across seeds, on average
    mean_prob: float


def measure(name: str, runs: list[RunPredictions], resampling: Resampling) -> SeedNumbers:
    """Every run and the ensemble on the same bootstrap resamples of the test images (or patients)."""
    runs = sorted(runs, key=lambda r: r.seed)
    counts = resampling.counts
    ens = ensemble(name, runs)
    scored = [auroc_and_bootstrap(r.test.labels, r.test.probs, counts) for r in runs]  # one sort per run
    test_auroc = np.array([exact for exact, _ in scored])
    boots = [boot for _, boot in scored]
    ens_boot = bootstrap_auroc(ens.test.labels, ens.test.probs, counts)
    probs = np.array([r.test.probs for r in runs])
    return SeedNumbers(
        runs=runs,
        ensemble=ens,
        resampling=resampling,
        test_auroc=test_auroc,
        avg_auroc=np.array([nanmean(a) for a in test_auroc]),
        boots=boots,
        avg_ci=np.array([interval(row_nanmean(b)) for b in boots]),
        ens_ci=interval(row_nanmean(ens_boot)),
        ens_class_ci=percentile_interval(ens_boot),
        # How much the seeds disagree on single images (Zech et al. 2019): what the ensemble averages out.
        per_image_std=float(np.std(probs, axis=0, ddof=1).mean()) if len(runs) > 1 else 0.0,
        mean_prob=float(probs.mean()),
    )


def architecture_analysis(name: str, runs: list[RunPredictions], resampling: Resampling) -> ArchitectureAnalysis:
    """Seed spread, the seed ensemble, bootstrap intervals and the validation-chosen best seed."""
    n = measure(name, runs, resampling)
    pick_rows, optimism = best_seed_choices(n.runs, n.test_auroc)
    return ArchitectureAnalysis(
        seed_markdown(name, n, pick_rows, optimism),
        seed_files(n),
        seed_structured(n, pick_rows),
        n.ensemble,
        [r.seed for r in n.runs],
        n.test_auroc,
        n.avg_auroc,
        n.avg_ci,
    )


def seed_markdown(name: str, n: SeedNumbers, pick_rows: list[list[str]], optimism: list[float]) -> str:
    ens, runs, avg_auroc = n.ensemble, n.runs, n.avg_auroc
    ens_lo, ens_hi = n.ens_class_ci
    class_rows = [
        [c, mean_std(list(n.test_auroc[:, k])), fmt(ens.auroc[k]), _ci(ens_lo[k], ens_hi[k]), fmt(ens.f1[k])]
        for k, c in enumerate(CLASSES)
    ]
    class_rows.append(
        ["**Average**", mean_std(list(avg_auroc)), fmt(nanmean(ens.auroc)), _ci(*n.ens_ci), fmt(nanmean(ens.f1))]
    )
    seed_rows = [[str(r.seed), fmt(a), _ci(*ci)] for r, a, ci in zip(runs, avg_auroc, n.avg_ci)]
    seed_rows.append([f"Ensemble of {len(runs)}", fmt(nanmean(ens.auroc)), _ci(*n.ens_ci)])
    gain = nanmean(ens.auroc) - float(avg_auroc.mean())
    text = [
        f"## {name}: Seed Spread, Bootstrap Intervals and the Seed Ensemble",
        (
            f"Per class: mean ± std of the test AUROC over the {len(runs)} seeds, and the **seed ensemble** (the "
            f"seeds' test probabilities averaged; F1 at thresholds chosen on the averaged validation "
            f"probabilities) with its bootstrap 95% interval ({n.resampling.describe()})."
        ),
        markdown_table(["Class", "Mean ± Std (seeds)", "Ensemble AUROC", "Ensemble 95% CI", "Ensemble F1"], class_rows),
        "Avg AUROC of each seed and of the ensemble, with bootstrap 95% intervals (the same resamples for every run):",
        markdown_table(["Seed", "Avg AUROC", "95% CI"], seed_rows),
        (
            f"- The ensemble's Avg AUROC is {fmt(nanmean(ens.auroc))}: {gain:+.4f} over the mean seed "
            f"({fmt(float(avg_auroc.mean()))}) and {nanmean(ens.auroc) - float(avg_auroc.max()):+.4f} over the best "
            f"single seed ({fmt(float(avg_auroc.max()))}). On single images the seeds disagree: the predicted "
            f"probability's std across seeds is {n.per_image_std:.4f} on average (mean probability "
            f"{n.mean_prob:.4f}); the ensemble averages that disagreement out."
        ),
        "Best seed per class chosen on **validation** (what a study can honestly report) next to the one chosen on "
        'test (the reference\'s "Best Seed per Class"), with the test AUROC each choice gets:',
        markdown_table(["Class", "Best on Validation", "Its Test AUROC", "Best on Test", "Its Test AUROC"], pick_rows),
        (
            f"- Choosing on test is the optimistic one: it gains {np.mean(optimism):+.4f} AUROC per class on "
            f"average over choosing on validation, a gain that would not carry to new data."
            if optimism
            else "- No class has test positives."
        ),
    ]
    return "\n\n".join(text)


def seed_files(n: SeedNumbers) -> dict[str, list[list]]:
    """``ensemble.csv`` and ``bootstrap_ci.csv`` of one architecture, as rows."""
    ens, test_auroc, several = n.ensemble, n.test_auroc, len(n.runs) > 1
    ens_lo, ens_hi = n.ens_class_ci
    ensemble_rows = [
        [
            c,
            np.nanmean(test_auroc[:, k]),
            np.nanstd(test_auroc[:, k], ddof=1) if several else "",
            ens.auroc[k],
            ens_lo[k],
            ens_hi[k],
            ens.f1[k],
        ]
        for k, c in enumerate(CLASSES)
    ]
    ci_rows = [
        [r.seed, c, test_auroc[i, k], lo_k, hi_k]
        for i, r in enumerate(n.runs)
        for k, (c, lo_k, hi_k) in enumerate(zip(CLASSES, *percentile_interval(n.boots[i])))
    ]
    return {
        "ensemble.csv": [
            ["Class", "Seeds Mean", "Seeds Std", "Ensemble AUROC", "CI Low", "CI High", "Ensemble F1"],
            *ensemble_rows,
        ],
        "bootstrap_ci.csv": [["Seed", "Class", "AUROC", "CI Low", "CI High"], *ci_rows],
    }


def seed_structured(n: SeedNumbers, pick_rows: list[list[str]]) -> dict:
    """One architecture's part of report.json beyond the reference."""
    ens = n.ensemble
    return {
        "ensemble": {
            "seeds": [r.seed for r in n.runs],
            "auroc": dict(zip(CLASSES, map(json_number, ens.auroc))),
            "f1": dict(zip(CLASSES, map(json_number, ens.f1))),
            "avg_auroc": json_number(nanmean(ens.auroc)),
            "avg_auroc_ci": [json_number(v) for v in n.ens_ci],
        },
        "avg_auroc_ci": {str(r.seed): [json_number(v) for v in ci] for r, ci in zip(n.runs, n.avg_ci)},
        "per_image_probability_std_across_seeds": json_number(n.per_image_std),
        "best_seed_on_validation": {row[0]: row[1] for row in pick_rows},
    }


def best_seed_choices(runs: list[RunPredictions], test_auroc: np.ndarray) -> tuple[list[list[str]], list[float]]:
    """Per class, the seed best on validation and the seed best on test with the test AUROC of each;
    and per class how much the test choice gains over the validation choice (its optimism)."""
    val = np.array([r.val_auroc for r in runs])
    rows, optimism = [], []
    for k, c in enumerate(CLASSES):
        if np.all(np.isnan(test_auroc[:, k])):
            rows.append([c, "n/a", "n/a", "n/a", "n/a"])
            continue
        on_val = int(np.nanargmax(np.where(np.isnan(val[:, k]), -np.inf, val[:, k])))
        on_test = int(np.nanargmax(test_auroc[:, k]))
        optimism.append(test_auroc[on_test, k] - test_auroc[on_val, k])
        rows.append(
            [
                c,
                str(runs[on_val].seed),
                fmt(test_auroc[on_val, k]),
                str(runs[on_test].seed),
                fmt(test_auroc[on_test, k]),
            ]
        )
    return rows, optimism
