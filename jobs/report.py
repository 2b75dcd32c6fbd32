"""Markdown for the seed tables, in the shape of the reference write-ups.

Per architecture: "Overall Metrics Comparison (per seed)", "Per-Class AUROC Comparison (per seed)",
"Best Seed per Class" (ties written ``32/42``: equal at the four printed decimals) and a "Summary"
written from the numbers. Then one cross-architecture table of mean +/- std over seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from jobs.labels import CLASSES

DISPLAY_NAMES = {"densenet121": "DenseNet-121", "efficientnet_b2": "EfficientNet-B2", "resnet50": "ResNet-50"}
LOSS_NAMES = {"focal": "Focal Loss", "bce": "BCE Loss", "asl": "Asymmetric Loss"}


@dataclass
class SeedRun:
    """The test metrics of one finished run."""

    seed: int
    loss: float
    avg_auroc: float
    avg_f1: float
    auroc: np.ndarray  # 14 values, NaN where the test split has no positive


def fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def markdown_table(headers: list[str], rows: list[list[str]], centered: set[int] = frozenset()) -> str:
    """A padded markdown table; columns in ``centered`` get ``:---:`` alignment."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) + 1 for i, h in enumerate(headers)]
    widths = [max(w, 6) for w in widths]

    def line(cells: list[str]) -> str:
        out = []
        for i, c in enumerate(cells):
            out.append(f" {c.center(widths[i] - 1) if i in centered else c.ljust(widths[i] - 1)} ")
        return "|" + "|".join(out) + "|"

    rule = (
        "|"
        + "|".join(":" + "-" * (w - 1) + ":" if i in centered else "-" * (w + 1) for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


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
    overall = markdown_table(
        ["Seed", "Loss", "Avg AUROC", "Avg F1"],
        [[str(r.seed), fmt(r.loss), fmt(r.avg_auroc), fmt(r.avg_f1)] for r in runs],
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


def mean_std(values: list[float]) -> str:
    arr = np.array(values, dtype=np.float64)
    if len(arr) < 2:
        return f"{fmt(float(arr.mean()))} ± n/a"
    return f"{fmt(float(arr.mean()))} ± {fmt(float(arr.std(ddof=1)))}"


def cross_architecture_section(groups: list[tuple[str, list[SeedRun]]]) -> str:
    rows = [
        [
            title,
            str(len(runs)),
            mean_std([r.loss for r in runs]),
            mean_std([r.avg_auroc for r in runs]),
            mean_std([r.avg_f1 for r in runs]),
        ]
        for title, runs in groups
        if runs
    ]
    table = markdown_table(["Architecture", "Seeds", "Loss", "Avg AUROC", "Avg F1"], rows)
    return "\n\n".join(
        [
            "# Cross-Architecture Comparison (mean ± std over seeds)",
            "Mean and sample standard deviation (n-1) over each architecture's seeds, on the test split.",
            table,
        ]
    )


def display_name(architecture: str) -> str:
    return DISPLAY_NAMES.get(architecture, architecture)
