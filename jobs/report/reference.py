"""The reference write-ups' sections, per architecture, with their numbers and their prose.

Per architecture: "Overall Metrics Comparison (per seed)", "Per-Class AUROC Comparison (per seed)",
"Best Seed per Class" (ties written ``32/42``: equal at the four printed decimals) and a "Summary"
written from the numbers. Then one cross-architecture table of mean +/- std over seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from jobs.data.labels import CLASSES
from jobs.report.tables import fmt, markdown_table, mean_std


@dataclass
class SeedRun:
    """The test metrics of one finished run."""

    seed: int
    loss: float
    avg_auroc: float
    avg_f1: float
    auroc: np.ndarray  # 14 values, NaN where the test split has no positive
    avg_brier: float = math.nan  # class averages of the calibration (from the predictions; NaN without them)
    avg_ece: float = math.nan


def has_calibration(runs: list[SeedRun]) -> bool:
    """Whether the runs' calibration is known (their predictions were read): the overall table then
    gives Avg Brier and Avg ECE beside the reference's columns."""
    return any(not math.isnan(r.avg_brier) for r in runs)


def best_seeds(runs: list[SeedRun]) -> list[tuple[list[int], float]]:
    """Per class: the seeds with the highest AUROC (all that tie at four decimals) and that AUROC."""
    out = []
    for k in range(len(CLASSES)):
        values = [(r.seed, r.auroc[k]) for r in runs if not math.isnan(r.auroc[k])]
        if not values:
            out.append(([], float("nan")))
            continue
        top = max(round(v, 4) for _, v in values)
        out.append(([s for s, v in values if round(v, 4) == top], max(v for _, v in values)))
    return out


def _names(items: list[str]) -> str:
    items = [c.replace("_", " ") for c in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def summary_lines(runs: list[SeedRun]) -> list[str]:
    """Bullets written from the numbers: best seed overall, the spread, where seeds disagree."""
    if len(runs) == 1:
        r = runs[0]
        return [
            f"- One seed ({r.seed}): Avg AUROC {fmt(r.avg_auroc)}, Avg F1 {fmt(r.avg_f1)}, loss {fmt(r.loss)}; "
            "add seeds to measure the spread."
        ]
    by_auroc = sorted(runs, key=lambda r: r.avg_auroc)
    low, high = by_auroc[0], by_auroc[-1]
    aurocs = np.array([r.avg_auroc for r in runs])
    lines = [
        f"- Seed {high.seed} achieves the highest Avg AUROC ({fmt(high.avg_auroc)}) and seed {low.seed} the lowest "
        f"({fmt(low.avg_auroc)}): a spread of {fmt(high.avg_auroc - low.avg_auroc)} "
        f"(std {fmt(float(aurocs.std(ddof=1)))}) across {len(runs)} seeds."
    ]
    lowest_loss = min(runs, key=lambda r: r.loss)
    f1_low, f1_high = min(runs, key=lambda r: r.avg_f1), max(runs, key=lambda r: r.avg_f1)
    lines.append(
        f"- Seed {lowest_loss.seed} has the lowest test loss ({fmt(lowest_loss.loss)}); Avg F1 ranges from "
        f"{fmt(f1_low.avg_f1)} (seed {f1_low.seed}) to {fmt(f1_high.avg_f1)} (seed {f1_high.seed})."
    )
    matrix = np.array([r.auroc for r in runs])
    scored = [k for k in range(len(CLASSES)) if not np.isnan(matrix[:, k]).any()]
    if scored:
        ranges = {k: matrix[:, k].max() - matrix[:, k].min() for k in scored}
        wide, narrow = max(ranges, key=ranges.get), min(ranges, key=ranges.get)
        lines.append(
            f"- Per class, the seeds disagree most on {CLASSES[wide].replace('_', ' ')} "
            f"({fmt(matrix[:, wide].min())}-{fmt(matrix[:, wide].max())}, range {fmt(ranges[wide])}) and least on "
            f"{CLASSES[narrow].replace('_', ' ')} ({fmt(matrix[:, narrow].min())}-{fmt(matrix[:, narrow].max())}, "
            f"range {fmt(ranges[narrow])})."
        )
    unscored = [CLASSES[k] for k in range(len(CLASSES)) if np.isnan(matrix[:, k]).all()]
    if unscored:
        lines.append(f"- No AUROC for {_names(unscored)}: the test split has no positive image of it.")
    return lines


def best_seed_summary(runs: list[SeedRun], best: list[tuple[list[int], float]]) -> str:
    """ "Seed 22 achieves the highest AUROC for ... Seed 32 is best for ... (tied with 42 for ...)"."""
    sentences = []
    for r in sorted(runs, key=lambda r: r.seed):
        alone = [CLASSES[k] for k, (seeds, _) in enumerate(best) if seeds == [r.seed]]
        tied = [
            (CLASSES[k], [s for s in seeds if s != r.seed])
            for k, (seeds, _) in enumerate(best)
            if r.seed in seeds and len(seeds) > 1
        ]
        if not alone and not tied:
            sentences.append(f"Seed {r.seed} is best for no class.")
            continue
        parts = [f"Seed {r.seed} achieves the highest AUROC for {_names(alone)}" if alone else f"Seed {r.seed} ties"]
        if tied:
            ties = "; ".join(f"{c.replace('_', ' ')} (with {'/'.join(map(str, others))})" for c, others in tied)
            parts.append(f"{'and ' if alone else ''}is tied for {ties}")
        sentences.append(" ".join(parts) + ".")
    winners = {s for seeds, _ in best for s in seeds}
    closing = (
        "No single seed is best on every class: the per-class winner depends on the seed."
        if len(winners) > 1
        else "One seed is best on every class."
    )
    return " ".join(sentences) + " " + closing


def architecture_section(title: str, runs: list[SeedRun], intro: str) -> str:
    """The four reference sections for one architecture."""
    runs = sorted(runs, key=lambda r: r.seed)
    calibrated = has_calibration(runs)
    overall = markdown_table(
        ["Seed", "Loss", "Avg AUROC", "Avg F1", *(["Avg Brier", "Avg ECE"] if calibrated else [])],
        [
            [
                str(r.seed),
                fmt(r.loss),
                fmt(r.avg_auroc),
                fmt(r.avg_f1),
                *([fmt(r.avg_brier), fmt(r.avg_ece)] if calibrated else []),
            ]
            for r in runs
        ],
    )
    per_class = markdown_table(
        ["Class".ljust(20), *(f"Seed {r.seed}" for r in runs)],
        [[c, *(fmt(r.auroc[k]) for r in runs)] for k, c in enumerate(CLASSES)],
        centered=set(range(1, len(runs) + 1)),
    )
    best = best_seeds(runs)
    best_table = markdown_table(
        ["Class".ljust(20), "Best Seed", "Highest AUROC"],
        [[c, "/".join(map(str, seeds)) or "n/a", fmt(v)] for c, (seeds, v) in zip(CLASSES, best)],
        centered={1, 2},
    )
    return "\n\n".join(
        [
            f"# {title}",
            intro,
            "## Overall Metrics Comparison (per seed)",
            overall,
            "## Per-Class AUROC Comparison (per seed)",
            per_class,
            "## Best Seed per Class",
            best_table,
            "## Summary",
            "\n".join(summary_lines(runs)),
            f"**Summary:**\n{best_seed_summary(runs, best)}",
        ]
    )


# What the cross-architecture (and cross-arm) tables give as mean +/- std over seeds: field, column.
SEED_METRICS = (("loss", "Loss"), ("avg_auroc", "Avg AUROC"), ("avg_f1", "Avg F1"))
MEAN_STD_COLUMNS = [f"{label} {stat}" for _, label in SEED_METRICS for stat in ("mean", "std")]


def mean_std_cells(runs: list[SeedRun]) -> list[str]:
    """Loss, Avg AUROC and Avg F1 over the seeds, as the tables write them (``0.8412 ± 0.0031``)."""
    return [mean_std([getattr(r, f) for r in runs]) for f, _ in SEED_METRICS]


def mean_std_numbers(runs: list[SeedRun]) -> list:
    """The same as CSV cells (:data:`MEAN_STD_COLUMNS`): each mean and sample std ("" with one seed)."""
    values = [np.array([getattr(r, f) for r in runs]) for f, _ in SEED_METRICS]
    return [x for v in values for x in (v.mean(), v.std(ddof=1) if len(v) > 1 else "")]


def cross_architecture_section(groups: list[tuple[str, list[SeedRun]]]) -> str:
    rows = [[title, str(len(runs)), *mean_std_cells(runs)] for title, runs in groups if runs]
    table = markdown_table(["Architecture", "Seeds", "Loss", "Avg AUROC", "Avg F1"], rows)
    return "\n\n".join(
        [
            "# Cross-Architecture Comparison (mean ± std over seeds)",
            "Mean and sample standard deviation (n-1) over each architecture's seeds, on the test split.",
            table,
        ]
    )
