"""Variant effects: which arms are paired, the differences and their intervals, Holm over the section."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jobs.data.labels import CLASSES
from jobs.report import effects, seeds
from jobs.report.figures import effects_size
from jobs.report.reference import SeedRun
from jobs.scoring.bootstrap import resampling
from jobs.scoring.delong import delong_test
from jobs.scoring.predictions import Predictions
from tests.jobs.report.test_seeds import runs_of


def arm(architecture: str, variant: str, shift: float, seed_base: int = 0) -> effects.ArmResult:
    runs = runs_of([seed_base + 1, seed_base + 2], shift=shift)
    done = [SeedRun(r.seed, 0.1, 0.7, 0.3, np.full(14, 0.7)) for r in runs]
    return effects.ArmResult(f"{architecture}@{variant}", architecture, variant, done, seeds.ensemble(variant, runs))


def by_image(names: list[str]) -> object:
    return resampling(names, None, "image", 300)


def test_with_the_patient_bootstrap_an_effects_class_p_is_the_clustered_delong():
    strong, weak = arm("densenet121", "clahe", -0.3), arm("densenet121", "plain", -0.5, seed_base=10)
    names = strong.ensemble.test.names
    patient_of = {name: i // 3 for i, name in enumerate(names)}

    def by_patient(of: list[str]):
        return resampling(of, patient_of, "patient", 300)

    effect = effects.measure_effect("variant", "densenet121", strong, weak, by_patient)
    clusters = [patient_of[n] for n in names]
    y, pa, pb = strong.ensemble.test.labels, strong.ensemble.test.probs, weak.ensemble.test.probs
    for k in range(len(CLASSES)):
        assert effect.p[k] == delong_test(y[:, k], pa[:, k], pb[:, k], clusters)[2]
        assert effect.p[k] != delong_test(y[:, k], pa[:, k], pb[:, k])[2]
    text, *_ = effects.effects_section([strong, weak], by_patient)
    assert "DeLong's variances are clustered by patient (Obuchowski 1997)" in text
    assert "take each test image as independent" in effects.effects_section([strong, weak], by_image)[0]


def test_pairs_are_variants_within_an_architecture_then_architectures_within_a_variant():
    arms = [arm(a, v, 0.0) for a in ("densenet121", "efficientnet_b2") for v in ("clahe", "plain", "bce")]
    pairs = [(kind, within, a.key, b.key) for kind, within, a, b in effects.effect_pairs(arms)]
    assert pairs == [
        ("variant", "densenet121", "densenet121@clahe", "densenet121@plain"),
        ("variant", "densenet121", "densenet121@clahe", "densenet121@bce"),
        ("variant", "densenet121", "densenet121@plain", "densenet121@bce"),
        ("variant", "efficientnet_b2", "efficientnet_b2@clahe", "efficientnet_b2@plain"),
        ("variant", "efficientnet_b2", "efficientnet_b2@clahe", "efficientnet_b2@bce"),
        ("variant", "efficientnet_b2", "efficientnet_b2@plain", "efficientnet_b2@bce"),
        ("architecture", "clahe", "densenet121@clahe", "efficientnet_b2@clahe"),
        ("architecture", "plain", "densenet121@plain", "efficientnet_b2@plain"),
        ("architecture", "bce", "densenet121@bce", "efficientnet_b2@bce"),
    ]


def test_an_effect_is_the_ensembles_auroc_difference_with_a_paired_interval_and_holm_over_the_section():
    strong, weak = arm("densenet121", "clahe", -0.1), arm("densenet121", "plain", -0.5, seed_base=10)
    effect = effects.measure_effect("variant", "densenet121", strong, weak, by_image)
    y = strong.ensemble.test.labels
    for k in range(len(CLASSES)):
        expected = roc_auc_score(y[:, k], strong.ensemble.test.probs[:, k]) - roc_auc_score(
            y[:, k], weak.ensemble.test.probs[:, k]
        )
        assert effect.diff[k] == pytest.approx(expected, abs=1e-12)
        assert effect.low[k] < effect.diff[k] < effect.high[k]
    assert effect.avg[2] == pytest.approx(np.mean(strong.ensemble.auroc) - np.mean(weak.ensemble.auroc), abs=1e-12)
    # The positives' scores shifted by 0.5 vs 0.1: every class and the average differ, far beyond noise.
    assert (effect.low > 0).all() and effect.avg[3] > 0 and effect.avg_p < 1e-6
    same = effects.measure_effect("variant", "densenet121", strong, arm("densenet121", "x", -0.1, 20), by_image)
    assert effects.adjust([effect, same]) == 2 * (14 + 1)
    assert (effect.p_holm < 0.05).all() and (same.p_holm > 0.05).all()
    ranked = sorted([*effect.p, effect.avg_p, *same.p, same.avg_p])  # Holm by hand: the smallest p times 30
    assert min(effect.p_holm) == pytest.approx(30 * ranked[0])
    sentence = effects.survivors([effect, same])
    assert len(sentence) == 1 and sentence[0].startswith("DenseNet-121: clahe − plain on the average (+")
    assert all(c in sentence[0] for c in CLASSES)


def test_the_average_p_is_a_wald_test_with_the_bootstraps_standard_error():
    resampled = np.array([-1.0, 1.0] * 50 + [np.nan])  # sd 1.005 (n-1) over the 100 defined resamples
    sd = float(np.std(resampled[:-1], ddof=1))
    assert effects.wald_p(1.96 * sd, resampled) == pytest.approx(0.05, abs=1e-4)
    assert effects.wald_p(0.0, resampled) == 1.0 and effects.wald_p(-3.0 * sd, resampled) == pytest.approx(
        0.0027, abs=1e-4
    )
    # Far beyond the noise, it goes below 2/(resamples+1), the floor of a share of resamples past zero.
    assert effects.wald_p(10 * sd, resampled) < 1e-20
    assert np.isnan(effects.wald_p(0.1, np.array([np.nan, 0.2]))) and effects.wald_p(0.1, np.array([0.1, 0.1])) == 0.0


def test_arms_tested_on_other_images_are_compared_on_the_images_both_scored():
    a, b = arm("densenet121", "official", 0.3), arm("densenet121", "random", 0.3, 5)
    names = b.ensemble.test.names
    b.ensemble.test = Predictions(
        [f"x{n}" for n in names[:40]] + names[40:], b.ensemble.test.probs, b.ensemble.test.labels
    )
    text, files, structured, pngs = effects.effects_section([a, b], by_image)
    assert "## DenseNet-121: official − random (200 test images; ensembles of 2 seeds each)" in text
    assert "**The arms were tested on different images** (official: 240, random: 240, 200 in common:" in text
    assert structured["effects"][0]["images"] == 200 and files["effects.csv"][1][5] == 200
    png = cv2.imdecode(np.frombuffer(pngs["effects.png"], np.uint8), cv2.IMREAD_COLOR)
    assert png.shape[1::-1] == effects_size(1)
    disjoint = arm("densenet121", "elsewhere", 0.3, 7)
    disjoint.ensemble.test = Predictions(
        [f"y{n}" for n in names], disjoint.ensemble.test.probs, disjoint.ensemble.test.labels
    )
    text, files, structured, pngs = effects.effects_section([a, disjoint], by_image)
    assert "- densenet121@official and densenet121@elsewhere share no scored test image: not compared." in text
    assert structured["effects"] == [] and pngs == {} and len(files["effects.csv"]) == 1
