"""The report's calibration section: per class Brier and ECE of each seed and the ensemble, and the
overall table's class averages, equal to the scoring functions on the stored predictions."""

import numpy as np
import pytest

from jobs.data.labels import CLASSES
from jobs.report import seeds as analysis
from jobs.report.calibration import calibration_section
from jobs.report.reference import architecture_section
from jobs.report.tables import fmt
from jobs.scoring.calibration import brier_per_class, ece_per_class
from tests.jobs.report.test_seeds import runs_of


def test_the_section_gives_each_seed_and_the_ensemble_per_class_and_on_average():
    runs = runs_of([12, 22, 32])
    ens = analysis.ensemble("X", runs)
    section = calibration_section("X", "x", runs, ens)
    rows = {(r[0], r[1]): r[2:] for r in section.rows[1:]}
    for r in runs:
        brier = ((r.test.probs - r.test.labels) ** 2).mean(axis=0)
        ece = ece_per_class(r.test.labels, r.test.probs)
        for k, c in enumerate(CLASSES):
            assert rows[(f"seed {r.seed}", c)] == pytest.approx([brier[k], ece[k]], abs=1e-15)
        assert rows[(f"seed {r.seed}", "Average")] == pytest.approx([brier.mean(), ece.mean()], abs=1e-15)
    ens_brier = brier_per_class(ens.test.labels, ens.test.probs)
    assert rows[("ensemble", "Average")][0] == pytest.approx(ens_brier.mean(), abs=1e-15)
    assert section.structured["ensemble"]["avg_brier"] == pytest.approx(ens_brier.mean(), abs=1e-6)
    assert "## X: Calibration" in section.text and "15 equal-mass bins" in section.text
    assert "![X: reliability diagram, each seed and the ensemble](figures/x_reliability.png)" in section.text
    table = [line for line in section.text.splitlines() if line.startswith("| **Average**")][0]
    seed_means = [np.mean([ece_per_class(r.test.labels, r.test.probs).mean() for r in runs])]
    assert fmt(seed_means[0]) in table
    assert section.png.startswith(b"\x89PNG")


def test_the_overall_table_gains_brier_and_ece_only_when_they_are_known():
    from jobs.report.reference import SeedRun

    plain = [SeedRun(1, 0.1, 0.8, 0.3, np.full(14, 0.8)), SeedRun(2, 0.1, 0.7, 0.3, np.full(14, 0.7))]
    text = architecture_section("T", plain, "intro")
    assert "| Seed  | Loss   | Avg AUROC | Avg F1 |\n" in text
    calibrated = [SeedRun(1, 0.1, 0.8, 0.3, np.full(14, 0.8), 0.0512, 0.0123)]
    text = architecture_section("T", calibrated, "intro")
    assert "| Avg Brier | Avg ECE |" in text and "| 0.0512    | 0.0123  |" in text
