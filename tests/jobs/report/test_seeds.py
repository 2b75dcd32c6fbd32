"""The report's sections beyond the reference, on runs with known predictions."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jobs.data.labels import CLASSES
from jobs.report import seeds as analysis
from jobs.scoring.bootstrap import resampling
from jobs.scoring.metrics import best_f1_thresholds, f1_per_class
from jobs.scoring.predictions import Predictions


def runs_of(seeds, n=240, shift=0.0):
    rng = np.random.default_rng(0)
    labels = {s: (rng.random((n, 14)) < 0.25).astype(np.uint8) for s in ("val", "test")}
    names = {s: [f"{s}{i:04d}.png" for i in range(n)] for s in ("val", "test")}
    out = []
    for seed in seeds:
        r = np.random.default_rng(seed)
        preds = {s: Predictions(names[s], labels[s] * (0.6 + shift) + r.random((n, 14)), labels[s]) for s in names}
        val_auroc = np.array([roc_auc_score(labels["val"][:, k], preds["val"].probs[:, k]) for k in range(14)])
        out.append(analysis.RunPredictions(seed, val_auroc, preds["val"], preds["test"]))
    return out


def test_the_ensemble_is_the_mean_of_the_seeds_probabilities():
    runs = runs_of([12, 22, 32])
    ens = analysis.ensemble("X", runs)
    mean_test = np.mean([r.test.probs for r in runs], axis=0)
    y = runs[0].test.labels
    assert ens.auroc == pytest.approx([roc_auc_score(y[:, k], mean_test[:, k]) for k in range(14)], abs=1e-12)
    thresholds = best_f1_thresholds(runs[0].val.labels, np.mean([r.val.probs for r in runs], axis=0))
    assert ens.f1 == pytest.approx(f1_per_class(y, mean_test, thresholds), abs=1e-12)
    # Independent noise averages out: the ensemble beats the mean seed on every class here.
    seeds = np.array([[roc_auc_score(y[:, k], r.test.probs[:, k]) for k in range(14)] for r in runs])
    assert (ens.auroc > seeds.mean(axis=0)).all()


def test_the_architecture_section_reports_ensemble_intervals_and_the_validation_choice():
    runs = runs_of([12, 22])
    result = analysis.architecture_analysis("X", runs, resampling(runs[0].test.names, None, "image", 200))
    text, files, info, ens = result.text, result.files, result.structured, result.ensemble
    assert "## X: Seed Spread, Bootstrap Intervals and the Seed Ensemble" in text
    rows = {r[0]: r for r in files["ensemble.csv"][1:]}
    for k, c in enumerate(CLASSES):
        assert rows[c][3] == ens.auroc[k] and rows[c][4] < ens.auroc[k] < rows[c][5]
    for k, c in enumerate(CLASSES):
        chosen = runs[int(np.argmax([r.val_auroc[k] for r in runs]))].seed
        assert info["best_seed_on_validation"][c] == str(chosen)
    assert len(files["bootstrap_ci.csv"]) == 1 + 2 * 14
    assert f"| Ensemble of 2 | {ens.auroc.mean():.4f}" in text
    spread = np.std([r.test.probs for r in runs], axis=0, ddof=1).mean()
    assert info["per_image_probability_std_across_seeds"] == round(spread, 6) and spread > 0.1
    assert f"std across seeds is {spread:.4f} on average" in text
    # What the figures are drawn from: each seed's Avg AUROC inside its bootstrap interval.
    assert result.seeds == [12, 22] and result.test_auroc.shape == (2, 14)
    assert result.avg_auroc == pytest.approx(result.test_auroc.mean(axis=1))
    assert ((result.avg_ci[:, 0] < result.avg_auroc) & (result.avg_auroc < result.avg_ci[:, 1])).all()
