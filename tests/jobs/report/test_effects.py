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
from jobs.scoring.predictions import Predictions
from tests.jobs.report.test_seeds import runs_of


def arm(architecture: str, variant: str, shift: float, seed_base: int = 0) -> effects.ArmResult:
    runs = runs_of([seed_base + 1, seed_base + 2], shift=shift)
    done = [SeedRun(r.seed, 0.1, 0.7, 0.3, np.full(14, 0.7)) for r in runs]
    return effects.ArmResult(f"{architecture}@{variant}", architecture, variant, done, seeds.ensemble(variant, runs))


def by_image(names: list[str]) -> object:
    return resampling(names, None, "image", 300)


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
    assert (effect.low > 0).all() and effect.avg[3] > 0 and effect.avg_p == pytest.approx(2 / 301)
    same = effects.measure_effect("variant", "densenet121", strong, arm("densenet121", "x", -0.1, 20), by_image)
    assert effects.adjust([effect, same]) == 2 * (14 + 1)
    # Its average's p is the 15th smallest of 30 (after its 14 classes' DeLong p): Holm multiplies it by 16.
    assert (effect.p_holm[:14] < 0.05).all() and effect.p_holm[14] == pytest.approx(16 * 2 / 301)
    sentence = effects.survivors([effect, same])
    assert len(sentence) == 1 and sentence[0].startswith("DenseNet-121: clahe − plain on Atelectasis (+")
    assert all(c in sentence[0] for c in CLASSES) and "the average" not in sentence[0]  # 0.106 after Holm


def test_the_bootstrap_p_counts_the_resamples_on_the_far_side_of_zero():
    assert effects.bootstrap_p(np.array([0.1] * 99)) == pytest.approx(2 / 100)
    assert effects.bootstrap_p(np.array([0.1] * 50 + [-0.1] * 49 + [np.nan])) == pytest.approx(1.0)
    assert effects.bootstrap_p(np.array([0.1] * 89 + [-0.1] * 10)) == pytest.approx(2 * 11 / 100)
    assert np.isnan(effects.bootstrap_p(np.array([np.nan])))


def test_arms_tested_on_other_images_are_compared_on_the_images_both_scored():
    a, b = arm("densenet121", "official", 0.3), arm("densenet121", "random", 0.3, 5)
    names = b.ensemble.test.names
    b.ensemble.test = Predictions(
        [f"x{n}" for n in names[:40]] + names[40:], b.ensemble.test.probs, b.ensemble.test.labels
    )
    text, files, structured, pngs = effects.effects_section([a, b], by_image)
    assert "## DenseNet-121: official − random (200 test images)" in text
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
