"""Comparisons the reference tables do not make: paired DeLong tests between any two scorers, and
external baselines beside the study's architectures.

A *scorer* is anything with per-image test probabilities: an architecture's seed ensemble
(named by the architecture, ``densenet121``), one run (``densenet121:42``) or an external baseline
(its name, ``chexnet``). Two scorers are compared on the test images both have scored.

What a user asks of the report (the pairs to compare, the baselines) is kept with the study by
:mod:`jobs.report.options`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from jobs.data.labels import CLASSES
from jobs.report.baselines import BaselineScore
from jobs.report.seeds import Ensemble
from jobs.report.tables import fmt, markdown_table, mean_std
from jobs.scoring.bootstrap import Resampling, bootstrap_auroc, interval, row_nanmean
from jobs.scoring.delong import comparable, delong_test, holm
from jobs.scoring.metrics import json_number, nanmean
from jobs.scoring.predictions import Predictions


@dataclass
class Scorer:
    """Per-image test probabilities under a name, sorted by image name."""

    name: str
    test: Predictions


def on_common_images(a: Predictions, b: Predictions) -> tuple[Predictions, Predictions]:
    """Both restricted to the images both scored (in name order); labels come from ``a``."""
    if a.names == b.names:
        return a, b
    common = sorted(set(a.names) & set(b.names))
    ia, ib = {n: i for i, n in enumerate(a.names)}, {n: i for i, n in enumerate(b.names)}
    rows_a, rows_b = [ia[n] for n in common], [ib[n] for n in common]
    return (
        Predictions(common, a.probs[rows_a], a.labels[rows_a]),
        Predictions(common, b.probs[rows_b], a.labels[rows_a]),
    )


Resample = Callable[[list[str]], Resampling]  # the study's bootstrap of a set of test images


def delong_design(resampling: Resampling | None) -> str:
    """How the section's DeLong tests treat the films of one patient, for its intro."""
    if resampling is not None and resampling.clusters is not None:
        return (
            "DeLong's variances are clustered by patient (Obuchowski 1997), as the bootstrap intervals are: a "
            "patient's films count as one unit."
        )
    return "DeLong's tests take each test image as independent, as the bootstrap intervals here do (by image)."


def delong_table(a: Scorer, b: Scorer, resample: Resample | None = None) -> tuple[list[str], list[list]]:
    """Markdown parts and CSV rows of a per-class paired DeLong test of ``a`` against ``b``, Holm-adjusted
    over the classes compared (a class needs two positives and two negatives among the common images).
    ``resample``: the study's bootstrap, whose clusters (each image's patient, when it resamples patients)
    the tests share; None: images independent."""
    pa, pb = on_common_images(a.test, b.test)
    if not pa.names:
        return [f"{a.name} and {b.name} share no scored test image: not compared."], []
    clusters = resample(pa.names).clusters if resample is not None else None
    kept, ps = [], []
    for k, c in enumerate(CLASSES):
        y = pa.labels[:, k]
        if not comparable(y, clusters):
            continue
        auc_a, auc_b, p = delong_test(y, pa.probs[:, k], pb.probs[:, k], clusters)
        kept.append((c, auc_a, auc_b, p))
        ps.append(p)
    table, rows = [], []
    for (c, auc_a, auc_b, p), p_holm in zip(kept, holm(ps)):
        table.append([c, fmt(auc_a), fmt(auc_b), f"{auc_a - auc_b:+.4f}", f"{p:.4g}", f"{p_holm:.4g}"])
        rows.append([a.name, b.name, c, len(pa.names), auc_a, auc_b, p, p_holm])
    significant = [row[0] for row in table if float(row[5]) < 0.05]
    verdict = f"significant for {', '.join(significant)}." if significant else "no class differs significantly."
    parts = [
        f"### {a.name} vs {b.name} ({len(pa.names):,} test images)",
        markdown_table(["Class", a.name, b.name, "Difference", "p", "p (Holm)"], table),
        f"- {len(kept)} classes compared, so p-values are adjusted for multiple comparisons (Holm-Bonferroni, "
        f"family-wise error 5%): {verdict}",
    ]
    return parts, rows


DELONG_HEADER = ["A", "B", "Class", "Images", "AUROC A", "AUROC B", "p", "p Holm"]


def delong_pairs_section(
    title: str, intro: str, pairs: list[tuple[Scorer, Scorer]], resample: Resample | None = None
) -> tuple[str, list[list]]:
    design = f" {delong_design(resample(pairs[0][0].test.names) if resample is not None else None)}" if pairs else ""
    text, rows = [title, intro + design], [DELONG_HEADER]
    for a, b in pairs:
        parts, pair_rows = delong_table(a, b, resample)
        text += parts
        rows += pair_rows
    return "\n\n".join(text), rows


def ensembles_section(ensembles: list[Ensemble], resample: Resample | None = None) -> tuple[str, list[list]]:
    """Per-class paired DeLong tests between every two architectures' seed ensembles."""
    pairs = [
        (Scorer(a.name, a.test), Scorer(b.name, b.test)) for i, a in enumerate(ensembles) for b in ensembles[i + 1 :]
    ]
    return delong_pairs_section(
        "## Paired DeLong Tests Between Architecture Ensembles",
        "Per class, the two seed ensembles' AUROCs on the same test images (DeLong's paired test, fast midrank "
        "algorithm of Sun & Xu 2014), two-sided.",
        pairs,
        resample,
    )


def requested_section(
    compare: list[list[str]], scorers: dict[str, Scorer], resample: Resample | None = None
) -> tuple[str, list[list]]:
    """DeLong tests of the pairs asked for with ``cxrstudy report --compare A B``."""
    pairs, notes = [], []
    for a, b in compare:
        missing = [x for x in (a, b) if x not in scorers]
        if missing:
            notes.append(f"- {a} vs {b}: no finished run or baseline named {' or '.join(missing)}; not compared.")
        else:
            pairs.append((scorers[a], scorers[b]))
    text, rows = delong_pairs_section(
        "## Requested Comparisons (paired DeLong tests)",
        "Pairs asked for with `cxrstudy report --compare`: an architecture name is its seed ensemble, "
        "`architecture:seed` one run, a baseline its name. Each pair is compared on the test images both scored.",
        pairs,
        resample,
    )
    return text + ("\n\n" + "\n".join(notes) if notes else ""), rows


def baseline_section(
    baselines: list[BaselineScore],
    ensembles: list[Ensemble],
    seed_auroc: dict[str, np.ndarray],
    resample: Resample,
) -> tuple[str, dict[str, list[list]], dict]:
    """External baselines beside each architecture's seeds and ensemble, with intervals and DeLong tests.
    ``resample(names)``: the study's bootstrap of those test images."""
    ci = {
        b.name: interval(row_nanmean(bootstrap_auroc(b.labels, b.probs, resample(b.names).counts))) for b in baselines
    }
    text = [
        "## Comparison With External Baselines",
        "Predictions made by other systems, scored against this study's test labels (per-class AUROC; seeds as "
        "mean ± std). A baseline is scored on the test images its file has; the tests below compare it with each "
        "seed ensemble on exactly those images.",
        baseline_table(baselines, ensembles, seed_auroc),
    ]
    for b in baselines:
        text.append(
            f"- **{b.name}**: scored on {len(b.names):,} of {b.split_images:,} test images ({b.missing:,} missing from "
            f"the file; {b.extra:,} row{'' if b.extra == 1 else 's'} in neither the study's test nor validation "
            f"split, ignored); Avg AUROC "
            f"{fmt(b.avg_auroc)} (95% CI {fmt(ci[b.name][0])}-{fmt(ci[b.name][1])}), Avg F1 {fmt(b.avg_f1)} at "
            f"thresholds from {b.threshold_source}."
        )
        if b.extra:
            text.append(
                f"- **Warning:** {b.name}'s file has predictions for {b.extra:,} image{'' if b.extra == 1 else 's'} "
                "outside this study's test and validation splits: images this study's dataset lacks (a partial "
                "download), or this study's training images. If the latter, the baseline was made under another "
                "split protocol (official vs random): it may have trained on images this study tests on, and its "
                "numbers are not comparable with the runs'."
            )
    pairs = [
        (Scorer(b.name, Predictions(b.names, b.probs, b.labels)), Scorer(e.name, e.test))
        for b in baselines
        for e in ensembles
    ]
    delong_text, delong_rows = delong_pairs_section(
        "### Baselines vs Seed Ensembles (paired DeLong tests)",
        "Each baseline against each seed ensemble, on the test images the baseline scored.",
        pairs,
        resample,
    )
    text.append(delong_text)
    csv_rows = [["Baseline", "Class", "Images", "Missing", "Extra", "AUROC", "F1", "Threshold"]]
    for b in baselines:
        for k, c in enumerate(CLASSES):
            csv_rows.append([b.name, c, len(b.names), b.missing, b.extra, b.auroc[k], b.f1[k], b.thresholds[k]])
    return (
        "\n\n".join(text),
        {"baselines.csv": csv_rows, "baselines_delong.csv": delong_rows},
        baselines_json(baselines, ci),
    )


def baseline_table(baselines: list[BaselineScore], ensembles: list[Ensemble], seed_auroc: dict[str, np.ndarray]) -> str:
    """Per class: each architecture's seeds (mean ± std) and ensemble, then each baseline's AUROC."""
    headers = ["Class"]
    for e in ensembles:
        headers += [f"{e.name} seeds", f"{e.name} ensemble"]
    headers += [f"{b.name} ({len(b.names):,} images)" for b in baselines]
    rows = []
    for k, c in enumerate(CLASSES):
        row = [c]
        for e in ensembles:
            row += [mean_std(list(seed_auroc[e.name][:, k])), fmt(e.auroc[k])]
        rows.append(row + [fmt(b.auroc[k]) for b in baselines])
    avg = ["**Average**"]
    for e in ensembles:
        avg += [mean_std([nanmean(a) for a in seed_auroc[e.name]]), fmt(nanmean(e.auroc))]
    rows.append(avg + [fmt(b.avg_auroc) for b in baselines])
    return markdown_table(headers, rows)


def baselines_json(baselines: list[BaselineScore], ci: dict[str, tuple[float, float]]) -> dict:
    return {
        b.name: {
            "images": len(b.names),
            "missing": b.missing,
            "extra": b.extra,
            "threshold_source": b.threshold_source,
            "avg_auroc": json_number(b.avg_auroc),
            "avg_auroc_ci": [json_number(v) for v in ci[b.name]],
            "avg_f1": json_number(b.avg_f1),
            "auroc": dict(zip(CLASSES, map(json_number, b.auroc))),
            "f1": dict(zip(CLASSES, map(json_number, b.f1))),
        }
        for b in baselines
    }
