"""The report's figures, drawn as PNG bytes with matplotlib's object-oriented API on the Agg canvas.

- ``seed_spread_figure``: one architecture's per-class test AUROC, one marker per seed and a line from
  the class's lowest to highest seed, so the spread over seeds shows at a glance; the seed ensemble
  as a star.
- ``roc_figure``: a 4x4 grid, one panel per finding, with the ROC curve of each scorer (the seed
  ensembles of each architecture, external baselines) and its AUROC in the legend.
- ``avg_auroc_figure``: Avg AUROC per seed with its bootstrap 95% CI, one column per architecture,
  with the mean over seeds as a tick and the seed ensemble as a star.
- ``reliability_figure``: one architecture's reliability diagram, every (image, class) pair pooled in
  equal-mass bins: observed frequency against mean predicted probability, per seed and for the
  ensemble, with the diagonal of perfect calibration.
- ``effects_figure``: a study with variants' effects, one row per pair of arms: the difference of the
  seed ensembles' Avg AUROC with its bootstrap 95% interval, each class's difference as a dot.

No pyplot: nothing global, nothing that needs a display, so worker processes can draw. Sizes are fixed
(no ``bbox_inches="tight"``) so the pixel dimensions below hold, and the PNG carries no software or
date metadata so the same inputs give the same bytes.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sklearn.metrics import roc_curve as sklearn_roc_curve

from jobs.data.labels import CLASSES, NUM_CLASSES
from jobs.scoring import metrics

DPI = 100
SEED_SPREAD_SIZE = (1600, 800)  # width, height in pixels
ROC_GRID_SIZE = (1600, 1600)
AVG_AUROC_SIZE = (1000, 700)
RELIABILITY_SIZE = (900, 800)
EFFECTS_WIDTH, EFFECTS_ROW, EFFECTS_MARGIN = 1200, 60, 160  # the effects figure grows by one row per effect

# One colour per seed (tab10 without red and grey: red is the ensemble's, grey the min-max lines').
SEED_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
SEED_MARKERS = ("o", "s", "^", "D")  # after the colours run out, the next seeds change shape
ENSEMBLE_COLOUR = "#d62728"
SPREAD_COLOUR = "#7f7f7f"
LEGEND_SEEDS = 16  # seed_spread_figure names each seed in its legend up to this many seeds
CURVE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _figure(size: tuple[int, int]) -> Figure:
    fig = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _seed_style(i: int) -> tuple[str, str]:
    """Colour and marker of the i-th seed: distinct for up to 32 seeds."""
    return SEED_COLOURS[i % len(SEED_COLOURS)], SEED_MARKERS[(i // len(SEED_COLOURS)) % len(SEED_MARKERS)]


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of one class: ``sklearn.metrics.roc_curve(drop_intermediate=False)``.

    One threshold per distinct score, highest first (tied scores move the curve in one step), starting at
    (0, 0) and ending at (1, 1).

    Args:
        labels: 0/1 (or bool) ground truth of each image.
        scores: the scorer's output for each image; higher means more likely positive.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"roc_curve: {len(labels)} labels but {len(scores)} scores; pass one score per label")
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == len(labels):
        raise ValueError(f"roc_curve: only one class present ({n_pos} positives of {len(labels)}); no ROC curve")
    fpr, tpr, _ = sklearn_roc_curve(labels, scores, drop_intermediate=False)
    return fpr, tpr


def _class_label(k: int, missing: int, total: int) -> str:
    name = CLASSES[k].replace("_", " ")
    if missing == 0:
        return name
    return f"{name}\n(n/a)" if missing == total else f"{name}\n(n/a in {missing} of {total})"


def seed_spread_figure(name: str, seeds: list[int], auroc: np.ndarray, ensemble: np.ndarray | None = None) -> bytes:
    """Per-class test AUROC of one architecture across seeds, as PNG bytes of ``SEED_SPREAD_SIZE`` pixels.

    Args:
        name: the architecture as shown in the title, e.g. ``"DenseNet-121"``.
        seeds: the seeds, in the order of ``auroc``'s rows.
        auroc: (len(seeds), 14) per-class AUROC; NaN (no test positive) is skipped and the class marked n/a.
        ensemble: optional 14 per-class AUROCs of the seed ensemble, drawn as a star.
    """
    values = np.asarray(auroc, dtype=np.float64)
    if values.shape != (len(seeds), NUM_CLASSES):
        raise ValueError(f"seed_spread_figure: auroc has shape {values.shape}; expected ({len(seeds)}, {NUM_CLASSES})")
    fig = _figure(SEED_SPREAD_SIZE)
    ax = fig.add_subplot()
    x = np.arange(NUM_CLASSES)
    offsets = np.linspace(-0.2, 0.2, len(seeds)) if len(seeds) > 1 else np.zeros(1)
    finite = ~np.isnan(values)
    has_any = finite.any(axis=0)
    low = np.where(finite, values, np.inf).min(axis=0)
    high = np.where(finite, values, -np.inf).max(axis=0)
    ax.vlines(x[has_any], low[has_any], high[has_any], colors=SPREAD_COLOUR, linewidth=2, zorder=1)
    labelled = len(seeds) <= LEGEND_SEEDS  # past that the legend would crowd out the plot
    for i, seed in enumerate(seeds):
        colour, marker = _seed_style(i)
        keep = finite[i]
        label = f"seed {seed}" if labelled else ("_" if i else f"{len(seeds)} seeds, one marker each")
        ax.scatter(x[keep] + offsets[i], values[i, keep], color=colour, marker=marker, s=50, zorder=3, label=label)
    if ensemble is not None:
        ens = np.asarray(ensemble, dtype=np.float64)
        keep = ~np.isnan(ens)
        ax.scatter(
            x[keep],
            ens[keep],
            color=ENSEMBLE_COLOUR,
            marker="*",
            s=260,
            edgecolors="black",
            linewidths=0.6,
            zorder=4,
            label="seed ensemble",
        )
    missing = (~finite).sum(axis=0)
    ax.set_xticks(x, [_class_label(k, int(missing[k]), len(seeds)) for k in x], rotation=35, ha="right")
    ax.set_xlim(-0.6, NUM_CLASSES - 0.4)
    ax.set_ylabel("test AUROC")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{name}: per-class test AUROC across {len(seeds)} seed{'s' if len(seeds) != 1 else ''}")
    if finite.any() or ensemble is not None:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _png(fig)


def _roc_panel(ax: Axes, k: int, curves: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """One class's panel: a curve per entry that has both positives and negatives for this class."""
    ax.plot([0, 1], [0, 1], linestyle="--", color=SPREAD_COLOUR, linewidth=1)
    drawn = 0
    for j, (name, labels, scores) in enumerate(curves):
        y, s = np.asarray(labels)[:, k], np.asarray(scores)[:, k]
        area = metrics.auroc(y, s)
        if np.isnan(area):
            continue
        fpr, tpr = roc_curve(y, s)
        ax.plot(fpr, tpr, color=CURVE_COLOURS[j % len(CURVE_COLOURS)], linewidth=1.4, label=f"{name} {area:.4f}")
        drawn += 1
    if drawn:
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no positives", ha="center", va="center", fontsize=12, color="black")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_title(CLASSES[k].replace("_", " "))
    ax.tick_params(labelsize=8)


def roc_figure(curves: list[tuple[str, np.ndarray, np.ndarray]]) -> bytes:
    """ROC curves of several scorers, one panel per finding, as PNG bytes of ``ROC_GRID_SIZE`` pixels.

    Args:
        curves: ``(name, labels (n, 14) 0/1, scores (n, 14))`` per scorer; n may differ between scorers.
            A scorer without a positive (or negative) for a class is left out of that class's panel.
    """
    fig = _figure(ROC_GRID_SIZE)
    axes = fig.subplots(4, 4).ravel()
    for k in range(NUM_CLASSES):
        _roc_panel(axes[k], k, curves)
        if k % 4 == 0:
            axes[k].set_ylabel("true-positive rate")
        if k >= NUM_CLASSES - 4:
            axes[k].set_xlabel("false-positive rate")
    key, spare = axes[NUM_CLASSES], axes[NUM_CLASSES + 1]
    key.axis("off")
    spare.axis("off")
    for j, (name, _, _) in enumerate(curves):
        key.plot([], [], color=CURVE_COLOURS[j % len(CURVE_COLOURS)], linewidth=2, label=name)
    key.plot([], [], linestyle="--", color=SPREAD_COLOUR, label="chance")
    key.legend(loc="center", frameon=False, title="scorer (AUROC in each panel)")
    return _png(fig)


def _avg_column(ax: Axes, col: int, group: tuple) -> None:
    """One architecture's column: seeds with CI bars, the mean tick, the ensemble star."""
    _, seeds, avg, lo, hi, ens = group
    avg, lo, hi = (np.asarray(a, dtype=np.float64).ravel() for a in (avg, lo, hi))
    xs = col + (np.linspace(-0.25, 0.25, len(seeds)) if len(seeds) > 1 else np.zeros(1))
    for i, seed in enumerate(seeds):
        if np.isnan(avg[i]):
            continue
        colour, marker = _seed_style(i)
        if not (np.isnan(lo[i]) or np.isnan(hi[i])):
            err = [[max(avg[i] - lo[i], 0.0)], [max(hi[i] - avg[i], 0.0)]]
            ax.errorbar(xs[i], avg[i], yerr=err, color=colour, capsize=4, linewidth=1.5, zorder=2)
        ax.scatter(xs[i], avg[i], color=colour, marker=marker, s=50, zorder=3)
        ax.annotate(str(seed), (xs[i], avg[i]), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8)
    if not np.isnan(avg).all():
        ax.hlines(np.nanmean(avg), col - 0.35, col + 0.35, colors="black", linewidth=2, zorder=1)
    if ens is not None and not np.isnan(ens):
        ax.scatter(col + 0.4, ens, color=ENSEMBLE_COLOUR, marker="*", s=260, edgecolors="black", zorder=4)


def avg_auroc_figure(groups: list[tuple[str, list[int], np.ndarray, np.ndarray, np.ndarray, float | None]]) -> bytes:
    """The seed spread of Avg AUROC, one column per architecture, as PNG bytes of ``AVG_AUROC_SIZE`` pixels.

    Args:
        groups: ``(name, seeds, avg_auroc, ci_low, ci_high, ensemble_avg_auroc)`` per architecture; the three
            arrays have one value per seed, a NaN CI bound draws no error bar, and the ensemble may be None.
    """
    fig = _figure(AVG_AUROC_SIZE)
    ax = fig.add_subplot()
    for col, group in enumerate(groups):
        _avg_column(ax, col, group)
    ax.set_xticks(range(len(groups)), [g[0] for g in groups])
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel("test Avg AUROC")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Seed spread of Avg AUROC (one point per seed, bootstrap 95% CI)")
    key = [
        Line2D([], [], color=SEED_COLOURS[0], marker="o", label="seed (labelled), 95% CI"),
        Line2D([], [], color="black", linewidth=2, label="mean over seeds"),
    ]
    if any(g[5] is not None for g in groups):
        key.append(
            Line2D(
                [],
                [],
                linestyle="",
                marker="*",
                markersize=14,
                markerfacecolor=ENSEMBLE_COLOUR,
                markeredgecolor="black",
                label="seed ensemble",
            )
        )
    ax.legend(handles=key, loc="best")  # wherever it hides the fewest error bars
    return _png(fig)


def reliability_figure(
    name: str, seeds: list[int], points: list[tuple[np.ndarray, np.ndarray]], ensemble: tuple[np.ndarray, np.ndarray]
) -> bytes:
    """One architecture's reliability diagram as PNG bytes of ``RELIABILITY_SIZE`` pixels.

    Args:
        name: the architecture as shown in the title.
        seeds: the seeds, in the order of ``points``.
        points: per seed, (mean predicted probability, observed frequency) of each equal-mass bin.
        ensemble: the same for the seed ensemble.
    """
    if len(points) != len(seeds):
        raise ValueError(f"reliability_figure: {len(points)} point sets for {len(seeds)} seeds")
    fig = _figure(RELIABILITY_SIZE)
    ax = fig.add_subplot()
    values = [v for pair in [*points, ensemble] for v in pair]
    top = min(1.0, 1.05 * max(float(np.max(v)) for v in values if len(v))) if any(len(v) for v in values) else 1.0
    ax.plot([0, top], [0, top], linestyle="--", color=SPREAD_COLOUR, linewidth=1, label="perfect calibration")
    labelled = len(seeds) <= LEGEND_SEEDS
    for i, (seed, (mean_p, observed)) in enumerate(zip(seeds, points)):
        colour, marker = _seed_style(i)
        label = f"seed {seed}" if labelled else ("_" if i else f"{len(seeds)} seeds")
        ax.plot(mean_p, observed, color=colour, marker=marker, markersize=4, linewidth=1, alpha=0.8, label=label)
    ax.plot(*ensemble, color=ENSEMBLE_COLOUR, marker="*", markersize=10, linewidth=2.2, label="seed ensemble")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel("mean predicted probability (equal-mass bins, all classes pooled)")
    ax.set_ylabel("observed frequency of the finding")
    ax.grid(alpha=0.3)
    ax.set_title(f"{name}: reliability on the test split")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def effects_size(rows: int) -> tuple[int, int]:
    return EFFECTS_WIDTH, EFFECTS_MARGIN + EFFECTS_ROW * max(rows, 1)


def effects_figure(effects: list[tuple[str, float, float, float, np.ndarray]]) -> bytes:
    """The effects of a study with variants as PNG bytes of ``effects_size(len(effects))`` pixels.

    Args:
        effects: ``(title, avg_difference, ci_low, ci_high, class_differences)`` per pair of arms, top to
            bottom; a NaN bound draws no interval.
    """
    fig = _figure(effects_size(len(effects)))
    ax = fig.add_subplot()
    ys = np.arange(len(effects))[::-1]
    for y, (_, diff, lo, hi, classes) in zip(ys, effects):
        classes = np.asarray(classes, dtype=np.float64)
        ax.scatter(classes, np.full(len(classes), y), color=SPREAD_COLOUR, s=14, alpha=0.6, zorder=2)
        if not (np.isnan(lo) or np.isnan(hi)):
            ax.hlines(y, lo, hi, color=ENSEMBLE_COLOUR, linewidth=2.5, zorder=3)
        ax.scatter([diff], [y], color=ENSEMBLE_COLOUR, marker="D", s=60, edgecolors="black", zorder=4)
    ax.axvline(0.0, color="black", linewidth=1, linestyle="--")
    ax.set_yticks(ys, [e[0] for e in effects])
    ax.set_ylim(-0.7, len(effects) - 0.3)
    ax.set_xlabel("difference of the seed ensembles' test AUROC (A − B)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Variant effects: Avg AUROC difference with its bootstrap 95% CI; dots: each class")
    return _png(fig)
