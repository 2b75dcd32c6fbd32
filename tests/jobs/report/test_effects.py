"""Variant effects: which arms are paired, the differences and their intervals, Holm over the section."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.stats import ttest_ind, ttest_rel
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


def seeds_arm(variant: str, avg: dict[int, float]) -> effects.ArmResult:
    runs = [SeedRun(seed, 0.1, value, 0.3, np.full(14, value)) for seed, value in avg.items()]
    return effects.ArmResult(f"densenet121@{variant}", "densenet121", variant, runs, None)


def test_across_seeds_is_a_t_test_paired_by_seed_else_welchs():
    a = seeds_arm("clahe", {12: 0.80, 22: 0.82, 32: 0.81, 42: float("nan")})  # a NaN Avg AUROC is left out
    b = seeds_arm("plain", {12: 0.79, 22: 0.80, 32: 0.805, 52: 0.9})
    paired = effects.seed_effect(a, b)
    expected = ttest_rel([0.80, 0.82, 0.81], [0.79, 0.80, 0.805])
    assert paired.paired and paired.seeds == (12, 22, 32) and paired.df == 2
    assert paired.p == pytest.approx(expected.pvalue, abs=1e-12) and paired.diff == pytest.approx(0.035 / 3)
    assert (paired.low, paired.high) == pytest.approx(tuple(expected.confidence_interval()), abs=1e-12)
    assert paired.design == "paired by seed over seeds 12, 22, 32; t-test with 2 df"
    # No seed in common: Welch's test on the two sets of runs.
    other = seeds_arm("bce", {1: 0.70, 2: 0.74})
    welch = effects.seed_effect(a, other)
    expected = ttest_ind([0.80, 0.82, 0.81], [0.70, 0.74], equal_var=False)
    assert not welch.paired and welch.p == pytest.approx(expected.pvalue, abs=1e-12)
    assert welch.df == pytest.approx(expected.df) and welch.design.startswith("unpaired; Welch's t-test with")
    # One seed in common is not a pairing: Welch's again; one seed on a side: nothing to test.
    assert not effects.seed_effect(a, seeds_arm("x", {12: 0.7, 5: 0.72})).paired
    assert effects.seed_effect(a, seeds_arm("y", {12: 0.7})) is None
    # The same difference at every seed: no spread to test it against, so no p (and no place in Holm's family).
    p, q = seeds_arm("p", {1: 0.8, 2: 0.9}), seeds_arm("q", {1: 0.7, 2: 0.8})
    flat = effects.seed_effect(p, q)
    assert flat.diff == pytest.approx(0.1) and np.isnan([flat.p, flat.low, flat.high]).all()
    effect = effects.Effect("variant", "densenet121", p, q, 0, *[np.zeros(14)] * 6, (0,) * 5, 0.0, over_seeds=flat)
    assert effects.adjust_seeds([effect]) == 0
    assert "the same difference +0.1000 at every seed: no spread to test it against; not tested." in (
        effects.seed_line(effect)
    )
    effect.over_seeds = None
    assert effects.seed_line(effect) == (
        "- **Across seeds**: not tested; each arm needs two seeds with a test Avg AUROC (2 and 2 here)."
    )


def test_the_seed_comparisons_are_their_own_holm_family_and_each_table_has_its_line():
    a = arm("densenet121", "clahe", -0.1)
    b = arm("densenet121", "plain", -0.5, seed_base=10)
    c = arm("densenet121", "bce", -0.3)
    for x, values in ((a, (0.80, 0.82)), (b, (0.70, 0.71)), (c, (0.78, 0.83))):
        x.runs[:] = [SeedRun(seed, 0.1, v, 0.3, np.full(14, v)) for seed, v in zip((1, 2), values)]
    text, files, structured, _ = effects.effects_section([a, b, c], by_image)
    tested = [ttest_rel(x, y).pvalue for x, y in (((0.8, 0.82), (0.7, 0.71)), ((0.8, 0.82), (0.78, 0.83)))]
    tested.append(ttest_rel((0.7, 0.71), (0.78, 0.83)).pvalue)
    from jobs.scoring.delong import holm

    adjusted = holm(tested)
    got = [e["over_seeds"]["p_holm"] for e in structured["effects"]]
    assert got == pytest.approx(adjusted, abs=1e-6) and structured["seed_holm_family"] == 3  # report.json: 6 places
    assert text.count("- **Across seeds** (each arm's runs, paired by seed over seeds 1, 2; t-test with 1 df)") == 3
    for value in adjusted:  # each line gives its own Holm-adjusted p
        assert f"p Holm {value:.4g} over the section's seed comparisons." in text
    seeds_rows = [r for r in files["effects.csv"] if r[4] == "Average over seeds"]
    assert [r[12] for r in seeds_rows] == ["paired-t-seeds"] * 3
    assert [r[13] for r in seeds_rows] == pytest.approx(adjusted, abs=1e-12)
    assert "**Across seeds** (Holm over the section's 3 seed comparisons):" in text
