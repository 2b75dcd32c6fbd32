import cv2
import numpy as np
import pytest

from jobs.data.labels import CLASSES
from jobs.report.figures import (
    AVG_AUROC_SIZE,
    CURVE_COLOURS,
    ENSEMBLE_COLOUR,
    ROC_GRID_SIZE,
    SEED_COLOURS,
    SEED_SPREAD_SIZE,
    avg_auroc_figure,
    roc_curve,
    roc_figure,
    seed_spread_figure,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEEDS = [12, 32, 42, 52]


def decode(png: bytes) -> np.ndarray:
    """The image as (height, width, 3) RGB."""
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a decodable PNG"
    return image[:, :, ::-1]


def pixels_near(image: np.ndarray, hex_colour: str, tol: int = 12) -> int:
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image.astype(int) - rgb).max(axis=2) <= tol).sum())


def assert_png(png: bytes, size: tuple[int, int]) -> np.ndarray:
    assert png.startswith(PNG_SIGNATURE)
    image = decode(png)
    assert image.shape == (size[1], size[0], 3)
    assert image.std() > 10, "the figure is (nearly) blank"
    return image


def per_class_auroc(rng: np.random.Generator) -> np.ndarray:
    return np.clip(0.8 + 0.05 * rng.standard_normal((len(SEEDS), len(CLASSES))), 0.5, 1.0)


def scorer(rng: np.random.Generator, n: int, signal: float) -> tuple[np.ndarray, np.ndarray]:
    labels = (rng.random((n, len(CLASSES))) < 0.15).astype(np.uint8)
    return labels, rng.random((n, len(CLASSES))) + signal * labels


# ---- roc_curve


def test_roc_curve_of_a_known_ranking_with_a_tie():
    # scores high to low: 0.9 (pos), 0.8 (neg), 0.7 (pos) and 0.7 (neg) tied, 0.1 (neg)
    fpr, tpr = roc_curve(np.array([1, 0, 1, 0, 0]), np.array([0.9, 0.8, 0.7, 0.7, 0.1]))
    assert fpr.tolist() == [0.0, 0.0, 1 / 3, 2 / 3, 1.0]  # the tie moves both rates in one step
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]


def test_roc_curve_takes_tied_scores_in_one_step():
    fpr, tpr = roc_curve(np.array([1, 0, 1, 0]), np.array([0.9, 0.5, 0.5, 0.1]))
    np.testing.assert_array_equal(fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(tpr, [0.0, 0.5, 1.0, 1.0])


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_roc_curve_rejects_a_single_class(labels):
    with pytest.raises(ValueError, match="only one class"):
        roc_curve(np.array(labels), np.array([0.1, 0.5, 0.9]))


# ---- seed_spread_figure


def test_seed_spread_figure_size_determinism_and_seed_colours():
    values = per_class_auroc(np.random.default_rng(1))
    png = seed_spread_figure("DenseNet-121", SEEDS, values)
    image = assert_png(png, SEED_SPREAD_SIZE)
    assert seed_spread_figure("DenseNet-121", SEEDS, values) == png
    for colour in SEED_COLOURS[: len(SEEDS)]:
        assert pixels_near(image, colour) > 200, f"no marker in seed colour {colour}"
    assert pixels_near(image, SEED_COLOURS[len(SEEDS)]) == 0  # a colour of no seed drawn
    assert pixels_near(image, ENSEMBLE_COLOUR) == 0


def test_seed_spread_figure_draws_the_ensemble_star_only_when_given():
    values = per_class_auroc(np.random.default_rng(2))
    with_star = decode(seed_spread_figure("ResNet-50", SEEDS, values, ensemble=values.mean(axis=0)))
    assert pixels_near(with_star, ENSEMBLE_COLOUR) > 500


def test_seed_spread_figure_skips_nan_classes():
    values = per_class_auroc(np.random.default_rng(3))
    values[:, CLASSES.index("Hernia")] = np.nan
    values[0, 0] = np.nan  # one seed without a value
    ensemble = values.mean(axis=0)
    full = seed_spread_figure("EfficientNet-B2", SEEDS, per_class_auroc(np.random.default_rng(3)))
    png = seed_spread_figure("EfficientNet-B2", SEEDS, values, ensemble=ensemble)
    assert_png(png, SEED_SPREAD_SIZE)
    assert png != full
    one_seed = seed_spread_figure("EfficientNet-B2", [7], np.full((1, len(CLASSES)), np.nan))
    assert_png(one_seed, SEED_SPREAD_SIZE)
    with pytest.raises(ValueError, match="expected"):
        seed_spread_figure("EfficientNet-B2", SEEDS, values.T)


# ---- roc_figure


def test_roc_figure_size_determinism_and_curve_colours():
    rng = np.random.default_rng(4)
    curves = [("DenseNet-121", *scorer(rng, 400, 0.6)), ("CheXNet (reported)", *scorer(rng, 250, 0.3))]
    png = roc_figure(curves)
    image = assert_png(png, ROC_GRID_SIZE)
    assert roc_figure(curves) == png
    one = decode(roc_figure(curves[:1]))
    # The second scorer's colour is there only when it is drawn.
    assert pixels_near(image, CURVE_COLOURS[1]) > 1000
    assert pixels_near(one, CURVE_COLOURS[1]) == 0
    assert pixels_near(one, CURVE_COLOURS[0]) > 1000


def test_roc_figure_leaves_out_a_class_without_positives():
    rng = np.random.default_rng(5)
    labels, scores = scorer(rng, 300, 0.5)
    labels[:, CLASSES.index("Hernia")] = 0
    other_labels, other_scores = scorer(rng, 120, 0.5)
    other_labels[:, CLASSES.index("Hernia")] = 0
    other_labels[:, CLASSES.index("Edema")] = 1  # no negatives
    png = roc_figure([("A", labels, scores), ("B", other_labels, other_scores)])
    assert_png(png, ROC_GRID_SIZE)


# ---- avg_auroc_figure


def groups(rng: np.random.Generator) -> list:
    out = []
    for name, n, ens in (("DenseNet-121", 4, 0.85), ("ResNet-50", 3, None), ("EfficientNet-B2", 1, 0.84)):
        avg = 0.82 + 0.01 * rng.standard_normal(n)
        out.append((name, SEEDS[:n], avg, avg - 0.01, avg + 0.01, ens))
    return out


def test_avg_auroc_figure_size_determinism_and_ensemble_marker():
    data = groups(np.random.default_rng(6))
    png = avg_auroc_figure(data)
    image = assert_png(png, AVG_AUROC_SIZE)
    assert avg_auroc_figure(data) == png
    assert pixels_near(image, SEED_COLOURS[3]) > 50  # the fourth seed of DenseNet-121
    assert pixels_near(image, ENSEMBLE_COLOUR) > 100  # two stars and the legend's
    without = decode(avg_auroc_figure([g[:5] + (None,) for g in data]))
    assert pixels_near(without, ENSEMBLE_COLOUR) == 0


def test_avg_auroc_figure_with_one_seed_and_nan_bounds():
    data = groups(np.random.default_rng(7))
    name, seeds, avg, low, high, ens = data[0]
    low, high = low.copy(), high.copy()
    low[1], high[2] = np.nan, np.nan
    png = avg_auroc_figure([(name, seeds, avg, low, high, ens), data[2]])
    assert_png(png, AVG_AUROC_SIZE)
    single = avg_auroc_figure([("ResNet-50", [42], np.array([0.81]), np.array([np.nan]), np.array([np.nan]), None)])
    assert_png(single, AVG_AUROC_SIZE)


def test_seed_spread_figure_of_many_seeds_keeps_its_plot(recwarn):
    # 50 seeds: a legend entry per seed would collapse the axes (matplotlib warns and lays nothing out).
    seeds = list(range(1, 51))
    values = np.clip(0.8 + 0.05 * np.random.default_rng(3).standard_normal((50, len(CLASSES))), 0.5, 1.0)
    image = assert_png(seed_spread_figure("X", seeds, values, values.mean(axis=0)), SEED_SPREAD_SIZE)
    assert not [w for w in recwarn if "constrained_layout" in str(w.message)]
    assert pixels_near(image, SEED_COLOURS[0]) > 200
