"""What the report adds beyond the reference tables: seed spread per class, bootstrap intervals,
the seed ensemble, the best seed chosen on validation, and paired DeLong tests.

Everything is computed from the runs' stored per-image predictions (``predictions_val.csv``,
``predictions_test.csv``), never from the models, so a report can be rebuilt at any time.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from jobs.labels import CLASSES
from jobs.metrics import auroc_per_class, best_f1_thresholds, f1_per_class, nanmean
from jobs.report import fmt, markdown_table, mean_std
from jobs.stats import bootstrap_auroc, delong_test, holm, percentile_interval
from jobs.store import Store

RESAMPLES = 1000


@dataclass
class Predictions:
    names: list[str]
    probs: np.ndarray  # (images, 14)
    labels: np.ndarray  # (images, 14) 0/1


def read_predictions(store: Store, key: str) -> Predictions:
    rows = list(csv.DictReader(io.StringIO(store.get_text(key))))
    rows.sort(key=lambda r: r["Image Index"])
    return Predictions(
        [r["Image Index"] for r in rows],
        np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows]),
        np.array([[int(r[f"label_{c}"]) for c in CLASSES] for r in rows], dtype=np.uint8),
    )


@dataclass
class RunPredictions:
    seed: int
    val_auroc: np.ndarray  # per class, from result.json
    val: Predictions
    test: Predictions


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


def architecture_analysis(
    name: str, runs: list[RunPredictions], counts: np.ndarray
) -> tuple[str, dict, dict, Ensemble]:
    """The markdown section, CSV files (name -> rows), JSON and the ensemble of one architecture."""
    runs = sorted(runs, key=lambda r: r.seed)
    ens = ensemble(name, runs)
    test_auroc = np.array([auroc_per_class(r.test.labels, r.test.probs) for r in runs])  # (seeds, 14)

    # Bootstrap: every run and the ensemble on the same resamples of the test images.
    boots = [bootstrap_auroc(r.test.labels, r.test.probs, counts) for r in runs]
    ens_boot = bootstrap_auroc(ens.test.labels, ens.test.probs, counts)
    with np.errstate(invalid="ignore"), _quiet():
        avg_boot = [np.nanmean(b, axis=1) for b in boots]
        ens_avg_boot = np.nanmean(ens_boot, axis=1)
    ens_lo, ens_hi = percentile_interval(ens_boot)

    class_rows = []
    for k, c in enumerate(CLASSES):
        class_rows.append(
            [c, mean_std(list(test_auroc[:, k])), fmt(ens.auroc[k]), _ci(ens_lo[k], ens_hi[k]), fmt(ens.f1[k])]
        )
    lo, hi = percentile_interval(ens_avg_boot[:, None])
    seeds_mean = mean_std([nanmean(a) for a in test_auroc])
    class_rows.append(["**Average**", seeds_mean, fmt(nanmean(ens.auroc)), _ci(lo[0], hi[0]), fmt(nanmean(ens.f1))])

    seed_rows = []
    for r, a, b in zip(runs, test_auroc, avg_boot):
        lo, hi = percentile_interval(b[:, None])
        seed_rows.append([str(r.seed), fmt(nanmean(a)), _ci(lo[0], hi[0])])
    lo, hi = percentile_interval(ens_avg_boot[:, None])
    seed_rows.append([f"Ensemble of {len(runs)}", fmt(nanmean(ens.auroc)), _ci(lo[0], hi[0])])

    # Best seed per class on validation (honest) next to the one chosen on test (optimistic).
    val = np.array([r.val_auroc for r in runs])
    pick_rows, optimism = [], []
    for k, c in enumerate(CLASSES):
        if np.all(np.isnan(test_auroc[:, k])):
            pick_rows.append([c, "n/a", "n/a", "n/a", "n/a"])
            continue
        on_val = int(np.nanargmax(np.where(np.isnan(val[:, k]), -np.inf, val[:, k])))
        on_test = int(np.nanargmax(test_auroc[:, k]))
        optimism.append(test_auroc[on_test, k] - test_auroc[on_val, k])
        pick_rows.append(
            [
                c,
                str(runs[on_val].seed),
                fmt(test_auroc[on_val, k]),
                str(runs[on_test].seed),
                fmt(test_auroc[on_test, k]),
            ]
        )

    mean_seed = float(np.mean([nanmean(a) for a in test_auroc]))
    best_seed = float(np.max([nanmean(a) for a in test_auroc]))
    gain = nanmean(ens.auroc) - mean_seed
    text = [
        f"## {name}: Seed Spread, Bootstrap Intervals and the Seed Ensemble",
        (
            f"Per class: mean ± std of the test AUROC over the {len(runs)} seeds, and the **seed ensemble** (the "
            f"seeds' test probabilities averaged; F1 at thresholds chosen on the averaged validation "
            f"probabilities) with its bootstrap 95% interval ({counts.shape[0]:,} resamples of the "
            f"{len(ens.test.names):,} test images, percentile method)."
        ),
        markdown_table(["Class", "Mean ± Std (seeds)", "Ensemble AUROC", "Ensemble 95% CI", "Ensemble F1"], class_rows),
        "Avg AUROC of each seed and of the ensemble, with bootstrap 95% intervals (the same resamples for every run):",
        markdown_table(["Seed", "Avg AUROC", "95% CI"], seed_rows),
        (
            f"- The ensemble's Avg AUROC is {fmt(nanmean(ens.auroc))}: {gain:+.4f} over the mean seed "
            f"({fmt(mean_seed)}) and {nanmean(ens.auroc) - best_seed:+.4f} over the best single seed "
            f"({fmt(best_seed)})."
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
    files = {
        "ensemble.csv": [
            ["Class", "Seeds Mean", "Seeds Std", "Ensemble AUROC", "CI Low", "CI High", "Ensemble F1"],
            *(
                [
                    c,
                    np.nanmean(test_auroc[:, k]),
                    np.nanstd(test_auroc[:, k], ddof=1) if len(runs) > 1 else "",
                    ens.auroc[k],
                    ens_lo[k],
                    ens_hi[k],
                    ens.f1[k],
                ]
                for k, c in enumerate(CLASSES)
            ),
        ],
        "bootstrap_ci.csv": [
            ["Seed", "Class", "AUROC", "CI Low", "CI High"],
            *(
                [r.seed, c, test_auroc[i, k], lo_k, hi_k]
                for i, r in enumerate(runs)
                for k, (c, lo_k, hi_k) in enumerate(zip(CLASSES, *percentile_interval(boots[i])))
            ),
        ],
    }
    structured = {
        "ensemble": {
            "seeds": [r.seed for r in runs],
            "auroc": dict(zip(CLASSES, map(_num, ens.auroc))),
            "f1": dict(zip(CLASSES, map(_num, ens.f1))),
            "avg_auroc": _num(nanmean(ens.auroc)),
            "avg_auroc_ci": [_num(v[0]) for v in percentile_interval(ens_avg_boot[:, None])],
        },
        "avg_auroc_ci": {
            str(r.seed): [_num(percentile_interval(b[:, None])[0][0]), _num(percentile_interval(b[:, None])[1][0])]
            for r, b in zip(runs, avg_boot)
        },
        "best_seed_on_validation": {row[0]: row[1] for row in pick_rows},
    }
    return "\n\n".join(text), files, structured, ens


def delong_section(ensembles: list[Ensemble]) -> tuple[str, list[list]]:
    """Paired DeLong tests per class between every two architecture ensembles, Holm-adjusted."""
    text, rows = (
        ["## Paired DeLong Tests Between Architecture Ensembles"],
        [["A", "B", "Class", "AUROC A", "AUROC B", "p", "p Holm"]],
    )
    for i, a in enumerate(ensembles):
        for b in ensembles[i + 1 :]:
            if a.test.names != b.test.names:
                text.append(f"{a.name} and {b.name} were scored on different test images: not compared.")
                continue
            table, ps, kept = [], [], []
            for k, c in enumerate(CLASSES):
                y = a.test.labels[:, k]
                if y.sum() < 2 or (1 - y).sum() < 2:
                    continue
                auc_a, auc_b, p = delong_test(y, a.test.probs[:, k], b.test.probs[:, k])
                ps.append(p)
                kept.append((c, auc_a, auc_b, p))
            for (c, auc_a, auc_b, p), p_holm in zip(kept, holm(ps)):
                table.append([c, fmt(auc_a), fmt(auc_b), f"{auc_a - auc_b:+.4f}", f"{p:.4g}", f"{p_holm:.4g}"])
                rows.append([a.name, b.name, c, auc_a, auc_b, p, p_holm])
            significant = [row[0] for row in table if float(row[5]) < 0.05]
            text += [
                f"### {a.name} vs {b.name} (seed ensembles, {len(a.test.names):,} test images)",
                markdown_table(["Class", a.name, b.name, "Difference", "p", "p (Holm)"], table),
                (
                    f"- {len(kept)} classes compared, so p-values are adjusted for multiple comparisons (Holm-"
                    f"Bonferroni, family-wise error 5%): "
                    + (
                        f"significant for {', '.join(significant)}."
                        if significant
                        else "no class differs significantly."
                    )
                ),
            ]
    return "\n\n".join(text), rows


def _num(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else round(x, 6)


class _quiet:
    """Silence numpy's 'Mean of empty slice' for classes without positives in a resample."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)
