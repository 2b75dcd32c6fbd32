"""Predictions CSVs of other systems scored on a dataset's split: reading, split labels, metrics, evaluate."""

import csv
import io
import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from jobs.data.labels import CLASSES, encode_findings
from jobs.data.nih import read_nih, split_labels
from jobs.errors import ConfigError, PredictionsError
from jobs.report.baselines import evaluate, evaluation_files, evaluation_markdown, score_predictions
from jobs.scoring.metrics import best_f1_thresholds
from jobs.scoring.predictions import PROB_COLUMNS, read_location, read_prediction_csv
from jobs.store import LocalStore, open_store

HEADER = ["Image Index", *PROB_COLUMNS]


def predictions_csv(names, probs, header=HEADER, extra_columns=True, bom=False) -> bytes:
    """A CheXNet-style file: label_* columns first (ignored), then the probabilities in a shuffled order."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    order = list(range(len(CLASSES)))[::-1]  # columns not in CLASSES order: the reader must map them
    labels = [f"label_{c}" for c in CLASSES] if extra_columns else []
    writer.writerow([header[0], *labels, *(header[1 + k] for k in order)])
    for name, row in zip(names, probs):
        writer.writerow([name, *(["0"] * len(labels)), *(repr(float(row[k])) for k in order)])
    return ("\ufeff" if bom else "").encode() + out.getvalue().encode()


def image(i: int) -> str:
    return f"{i:08d}_000.png"


def random_split(rng, n: int, start: int = 0):
    names = [image(start + i) for i in range(n)]
    labels = (rng.random((n, len(CLASSES))) < 0.3).astype(np.uint8)
    labels[0], labels[1] = 1, 0  # every class has a positive and a negative
    return names, labels


# ---------------------------------------------------------------- reading


def test_reads_bom_shuffled_columns_into_class_order_and_ignores_other_columns():
    rng = np.random.default_rng(0)
    names = [image(i) for i in range(5)]
    probs = rng.random((5, len(CLASSES)))
    got_names, got = read_prediction_csv(predictions_csv(names, probs, bom=True), "p.csv")
    assert got_names == names
    assert got.dtype == np.float64 and got.shape == (5, 14)
    np.testing.assert_array_equal(got, probs)


def test_blank_lines_are_skipped_and_line_numbers_stay_physical():
    data = predictions_csv([image(0)], np.full((1, 14), 0.25), extra_columns=False).decode()
    bad = data + "\n\n" + image(1) + "," + ",".join(["0.1"] * 13) + ",oops\n"
    with pytest.raises(PredictionsError, match=r"line 5, column 'prob_\w+' \(column \d+\): 'oops' is not a finite"):
        read_prediction_csv(bad.encode(), "p.csv")


@pytest.mark.parametrize(
    "header, message",
    [
        (
            [c.replace("prob_Pleural_Thickening", "prob_Pleural Thickening") for c in HEADER],
            r"p.csv, line 1: missing 1 of the 14 probability columns: prob_Pleural_Thickening "
            r"\(found 'prob_Pleural Thickening': a misspelling\?\); each finding needs a column named prob_<Class>",
        ),
        (
            [c.replace("prob_Mass", "mass_prob").replace("prob_Hernia", "prob_hernia") for c in HEADER],
            r"missing 2 of the 14 probability columns: prob_Hernia \(found 'prob_hernia': a misspelling\?\), "
            r"prob_Mass; ",
        ),
        (["Image", *PROB_COLUMNS], r"p.csv, line 1: no 'Image Index' column; a predictions CSV has"),
        (["image_index", *PROB_COLUMNS], r"no 'Image Index' column \(is 'image_index' meant\?\)"),
    ],
)
def test_missing_columns_name_the_expected_pattern_and_the_nearest_header(header, message):
    data = predictions_csv([image(0)], np.zeros((1, 14)), header=header)
    with pytest.raises(PredictionsError, match=message):
        read_prediction_csv(data, "p.csv")


def test_label_columns_are_not_offered_as_misspellings():
    header = ["Image Index", *(c if c != "prob_Mass" else "probability_Mass" for c in PROB_COLUMNS)]
    with pytest.raises(PredictionsError) as err:
        read_prediction_csv(predictions_csv([image(0)], np.zeros((1, 14)), header=header), "p.csv")
    assert "prob_Mass" in str(err.value) and "label_Mass" not in str(err.value)


@pytest.mark.parametrize(
    "cell, shown", [("abc", "'abc'"), ("", "an empty cell"), ("nan", "'nan'"), ("inf", "'inf'"), ("1e999", "'1e999'")]
)
def test_a_value_that_is_not_a_finite_number_names_line_column_and_value(cell, shown):
    text = predictions_csv([image(i) for i in range(4)], np.full((4, 14), 0.5), extra_columns=False).decode()
    lines = text.splitlines()
    cells = lines[3].split(",")
    cells[2] = cell  # the third column: the second prob column written (reversed class order)
    lines[3] = ",".join(cells)
    column = HEADER[1 + len(CLASSES) - 2]
    with pytest.raises(PredictionsError) as err:
        read_prediction_csv("\n".join(lines).encode(), "s3://b/p.csv")
    assert str(err.value).startswith(f"s3://b/p.csv, line 4, column '{column}' (column 3): {shown} is not a finite")


def test_a_duplicated_image_names_both_lines():
    names = [image(1), image(2), image(3), image(2)]
    with pytest.raises(PredictionsError, match=r"p.csv: the image 00000002_000.png appears twice, on lines 3 and 5"):
        read_prediction_csv(predictions_csv(names, np.zeros((4, 14))), "p.csv")


def test_a_row_with_the_wrong_number_of_cells_names_its_line():
    text = predictions_csv([image(0), image(1)], np.zeros((2, 14)), extra_columns=False).decode()
    text += image(2) + ",0.5,0.5\n"
    with pytest.raises(PredictionsError, match=r"p.csv, line 4: 3 cells, but the header has 15 columns"):
        read_prediction_csv(text.encode(), "p.csv")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", r"p.csv: the file is empty"),
        (b"\xef\xbb\xbf\n\n", r"p.csv: the file is empty"),
        (",".join(HEADER).encode() + b"\n", r"p.csv: the file has a header but no rows"),
        (b"\xff\xfeI\x00", r"p.csv: not UTF-8 text"),
    ],
)
def test_empty_and_headerless_files(data, message):
    with pytest.raises(PredictionsError, match=message):
        read_prediction_csv(data, "p.csv")


def test_read_location_reads_a_local_file_and_names_a_missing_one(tmp_path):
    (tmp_path / "p.csv").write_bytes(b"abc")
    data, where = read_location(str(tmp_path / "p.csv"))
    assert data == b"abc" and where == str(tmp_path / "p.csv")
    with pytest.raises(PredictionsError, match=rf"{tmp_path}/nope.csv: no such predictions file"):
        read_location(str(tmp_path / "nope.csv"))
    with pytest.raises(PredictionsError, match="is a folder"):
        read_location(str(tmp_path))
    with pytest.raises(PredictionsError, match="names a bucket or a folder"):
        read_location("s3://bucket/")


# ---------------------------------------------------------------- scoring


def test_auroc_and_f1_equal_sklearn_on_the_split_rows_only():
    rng = np.random.default_rng(1)
    test_names, test_labels = random_split(rng, 200)
    # The file: 150 of the test images (shuffled) and 30 images of no split; probabilities carry some signal.
    chosen = rng.permutation(200)[:150]
    file_names = [test_names[i] for i in chosen] + [image(10_000 + i) for i in range(30)]
    file_probs = rng.random((180, 14))
    file_probs[:150] = 0.6 * test_labels[chosen] + 0.7 * file_probs[:150]
    shuffled = rng.permutation(200)  # the split in no particular order: the scored rows come out sorted by name
    score = score_predictions(
        "m", file_names, file_probs, [test_names[i] for i in shuffled], test_labels[shuffled], split="test"
    )

    assert score.names == sorted(test_names[i] for i in chosen)
    assert (score.split_images, score.missing, score.extra, score.val_rows) == (200, 50, 30, 0)
    rows = {n: i for i, n in enumerate(test_names)}
    labels = test_labels[[rows[n] for n in score.names]]
    probs = file_probs[[file_names.index(n) for n in score.names]]
    np.testing.assert_array_equal(score.labels, labels)
    np.testing.assert_array_equal(score.probs, probs)
    expected_auroc = [roc_auc_score(labels[:, k], probs[:, k]) for k in range(14)]
    np.testing.assert_allclose(score.auroc, expected_auroc, rtol=0, atol=1e-12)
    assert 0.6 < score.avg_auroc < 1.0  # the signal is seen: rows are aligned with their labels
    # No validation rows: a fixed 0.5 for every class.
    assert score.threshold_source == "fixed 0.5"
    np.testing.assert_array_equal(score.thresholds, np.full(14, 0.5))
    expected_f1 = [f1_score(labels[:, k], probs[:, k] >= 0.5) for k in range(14)]
    np.testing.assert_allclose(score.f1, expected_f1, rtol=0, atol=1e-12)
    assert score.avg_f1 == pytest.approx(np.mean(expected_f1))


def test_thresholds_come_from_the_validation_rows_never_from_the_scored_split():
    rng = np.random.default_rng(2)
    test_names, test_labels = random_split(rng, 120)
    val_names, val_labels = random_split(rng, 80, start=5_000)
    # Test rows: positives score 0.6-0.9, negatives 0.1-0.5 (a threshold near 0.6 gives F1 = 1 on test).
    # Validation rows: positives 0.25-0.35, negatives 0.0-0.2 (the best validation threshold is near 0.25).
    test_probs = np.where(test_labels, rng.uniform(0.6, 0.9, test_labels.shape), rng.uniform(0.1, 0.5, (120, 14)))
    val_probs = np.where(val_labels, rng.uniform(0.25, 0.35, val_labels.shape), rng.uniform(0.0, 0.2, (80, 14)))
    held = 60  # the file has only 60 of the validation images
    file_names = test_names + val_names[:held]
    file_probs = np.vstack([test_probs, val_probs[:held]])
    score = score_predictions("m", file_names, file_probs, test_names, test_labels, val=(val_names, val_labels))

    assert score.threshold_source == "validation (60 images in the file)"
    assert (score.val_rows, score.extra, score.missing) == (held, 0, 0)
    np.testing.assert_array_equal(score.thresholds, best_f1_thresholds(val_labels[:held], val_probs[:held]))
    assert (score.thresholds < 0.36).all()
    test_optimal = best_f1_thresholds(score.labels, score.probs)
    assert (test_optimal > 0.55).all()
    expected = [f1_score(score.labels[:, k], score.probs[:, k] >= score.thresholds[k]) for k in range(14)]
    np.testing.assert_allclose(score.f1, expected, rtol=0, atol=1e-12)
    assert score.avg_f1 < 0.9  # on test-optimal thresholds it would be 1.0
    assert [f1_score(score.labels[:, k], score.probs[:, k] >= test_optimal[k]) for k in range(14)] == [1.0] * 14

    # Validation labels given but no validation row in the file: the fixed threshold.
    fixed = score_predictions("m", test_names, test_probs, test_names, test_labels, val=(val_names, val_labels))
    assert fixed.threshold_source == "fixed 0.5" and fixed.val_rows == 0
    np.testing.assert_array_equal(fixed.thresholds, np.full(14, 0.5))
    # Scoring the validation split itself: its rows never choose its thresholds.
    on_val = score_predictions(
        "m", file_names, file_probs, val_names, val_labels, val=(val_names, val_labels), threshold=0.3, split="val"
    )
    assert on_val.threshold_source == "fixed 0.3" and on_val.val_rows == 0 and on_val.extra == 120


def test_a_class_without_positives_has_no_auroc_and_is_left_out_of_the_average():
    rng = np.random.default_rng(3)
    names, labels = random_split(rng, 50)
    labels[:, 7] = 0  # no Hernia
    probs = rng.random((50, 14))
    score = score_predictions("m", names, probs, names, labels)
    assert np.isnan(score.auroc[7]) and not np.isnan(score.auroc[np.arange(14) != 7]).any()
    assert score.avg_auroc == pytest.approx(np.mean(np.delete(score.auroc, 7)))
    assert np.isnan(score.f1[7]) and score.avg_f1 == pytest.approx(np.mean(np.delete(score.f1, 7)))
    markdown = evaluation_markdown(score)
    assert "| Hernia               |     0     |  n/a   |" in markdown
    assert "No AUROC for Hernia: the scored rows have no positive or no negative image." in markdown
    files = evaluation_files(score)
    record = json.loads(files["evaluation.json"])
    assert record["classes"][7] == {"class": "Hernia", "positives": 0, "auroc": None, "f1": None, "threshold": 0.5}
    assert record["avg_auroc"] == pytest.approx(score.avg_auroc) and record["scored"] == 50
    rows = list(csv.reader(io.StringIO(files["evaluation.csv"])))
    assert rows[0] == ["Class", "Positives", "AUROC", "F1", "Threshold"]
    assert rows[8][:3] == ["Hernia", "0", ""] and float(rows[1][2]) == pytest.approx(score.auroc[0])
    assert rows[15][0] == "Average" and float(rows[15][2]) == pytest.approx(score.avg_auroc)
    assert float(rows[15][3]) == pytest.approx(score.avg_f1) and len(rows) == 16


def test_a_file_with_no_row_of_the_split_says_what_it_has():
    with pytest.raises(
        PredictionsError,
        match=r"chexnet: none of the file's 2 rows is an image of the test split \(3 images; "
        r"the file has 'images/00000001_000.png', the split has '00000005_000.png'\)",
    ):
        score_predictions(
            "chexnet",
            ["images/00000001_000.png", "images/00000002_000.png"],
            np.zeros((2, 14)),
            [image(5), image(6), image(7)],
            np.zeros((3, 14), dtype=np.uint8),
        )


# ---------------------------------------------------------------- split labels


def test_val_and_train_labels_match_read_nih_splits(synthetic):
    store = LocalStore(synthetic)
    for val_fraction, split_seed in ((0.1, 20171), (0.25, 3)):
        ds = read_nih(store, val_fraction=val_fraction, split_seed=split_seed)
        assert ds.missing_total == 0  # every image is present: the splits must agree exactly
        for split in ("train", "val", "test"):
            names, labels = split_labels(store, split, val_fraction=val_fraction, split_seed=split_seed)
            records = sorted(ds.splits[split], key=lambda r: r.image)
            assert names == [r.image for r in records]
            np.testing.assert_array_equal(labels, np.array([r.labels for r in records], dtype=np.uint8))
            assert labels.dtype == np.uint8


def test_an_unknown_split_lists_the_choices(synthetic):
    with pytest.raises(ConfigError, match=r"unknown split 'validation'; choose one of: train, val, test"):
        split_labels(LocalStore(synthetic), "validation")


@pytest.mark.parametrize("threshold", [7, 0, 1, -0.5, float("nan")])
def test_evaluate_refuses_a_threshold_that_is_no_probability_before_reading_anything(tmp_path, threshold):
    with pytest.raises(ConfigError) as err:
        evaluate(str(tmp_path / "absent.csv"), str(tmp_path / "absent"), threshold=threshold, log=lambda m: None)
    assert str(err.value) == (
        f"--threshold {threshold:g}: the F1 threshold is a probability strictly between 0 and 1 "
        "(the default is 0.5); the predictions must be probabilities too"
    )


def test_evaluate_refuses_predictions_on_a_0_100_scale_naming_the_file_and_cell(tmp_path):
    path = tmp_path / "percent.csv"
    path.write_bytes(predictions_csv([image(i) for i in range(3)], np.full((3, 14), 37.5)))
    with pytest.raises(PredictionsError) as err:
        evaluate(str(path), str(tmp_path / "no-dataset-needed"), log=lambda m: None)
    assert str(err.value).startswith(
        f"{path}, line 2, column 'prob_Pneumothorax' (column 16): '37.5' is not a probability between 0 and 1 "
        "(42 cells are outside [0, 1]; the values run from 37.5 to 37.5)"
    )


@pytest.fixture(scope="module")
def sample_splits(nih_sample):
    store = LocalStore(nih_sample)
    return {split: split_labels(store, split) for split in ("test", "val", "train")}


def test_real_sample_test_split_comes_from_the_list_and_the_metadata(nih_sample, sample_splits):
    listed = [line.strip() for line in (nih_sample / "test_list.txt").read_text().splitlines() if line.strip()]
    names, labels = sample_splits["test"]
    assert len(names) == len(listed) == 25_596 and names == sorted(listed)
    assert labels.shape == (25_596, 14) and labels.dtype == np.uint8
    with open(nih_sample / "Data_Entry_2017_v2020.csv", newline="") as fh:
        findings = {row["Image Index"]: row["Finding Labels"] for row in csv.DictReader(fh)}
    row = {n: i for i, n in enumerate(names)}
    for name in ("00000003_000.png", "00030805_000.png", names[1000], names[20_000]):
        np.testing.assert_array_equal(labels[row[name]], encode_findings(findings[name]))
    assert labels[row["00000003_000.png"]].sum() == 1  # Hernia
    assert labels.sum() > 20_000  # real labels, not zeros
    val, train = set(sample_splits["val"][0]), set(sample_splits["train"][0])
    assert not val & train and len(val) + len(train) == 86_524 and not (val | train) & set(names)


def test_evaluate_on_the_real_sample_counts_and_writes_the_files(sample_splits, nih_sample, tmp_path):
    rng = np.random.default_rng(4)
    test_names, test_labels = sample_splits["test"]
    picked = {
        "test": rng.choice(len(test_names), 300, replace=False),
        "train": rng.choice(len(sample_splits["train"][0]), 20, replace=False),
        "val": rng.choice(len(sample_splits["val"][0]), 10, replace=False),
    }
    names = [sample_splits[s][0][i] for s, idx in picked.items() for i in idx]
    labels = np.vstack([sample_splits[s][1][idx] for s, idx in picked.items()])
    probs = np.clip(0.5 * labels + 0.6 * rng.random(labels.shape), 0, 1)
    order = rng.permutation(len(names))
    path = tmp_path / "chexnet.csv"
    path.write_bytes(predictions_csv([names[i] for i in order], probs[order], bom=True))
    logged = []

    score = evaluate(str(path), str(nih_sample), out_dir=str(tmp_path / "out" / "eval"), log=logged.append)

    assert (len(score.names), score.split_images, score.missing) == (300, 25_596, 25_596 - 300)
    assert (score.extra, score.val_rows) == (20, 10)
    assert score.name == "chexnet" and score.split == "test"
    assert score.threshold_source == "validation (10 images in the file)"
    np.testing.assert_array_equal(score.thresholds, best_f1_thresholds(labels[320:], probs[320:]))
    test_auroc = [
        roc_auc_score(labels[:300, k], probs[:300, k]) if labels[:300, k].any() else np.nan for k in range(14)
    ]
    np.testing.assert_allclose(score.auroc, test_auroc, rtol=0, atol=1e-12)
    markdown = evaluation_markdown(score)
    assert markdown.startswith("# chexnet: evaluation on the test split\n\n")
    assert (
        "Scored on 300 of 25,596 test images; 25,296 images of the split are missing from the file; "
        "20 rows are not in the split (ignored)." in markdown
    )
    assert "## Overall Metrics\n\n| Images | Avg AUROC | Avg F1 |" in markdown
    assert f"| 300    | {score.avg_auroc:.4f}    | {score.avg_f1:.4f} |" in markdown
    assert "## Per-Class AUROC and F1\n\n| Class                | Positives | AUROC  |   F1   | Threshold |" in markdown
    assert len(logged) == 2 and "scored 300 of 25,596 test images (25,296 missing, 20 rows ignored)" in logged[0]
    out = tmp_path / "out" / "eval"
    assert (out / "evaluation.md").read_text() == markdown + "\n"
    assert json.loads((out / "evaluation.json").read_text())["missing"] == 25_296
    assert (out / "evaluation.csv").read_text().splitlines()[-1].startswith("Average,,")

    # The validation split scored: its own rows never choose its thresholds, the test rows are ignored.
    on_val = evaluate(str(path), str(nih_sample), split="val", log=logged.append)
    assert (len(on_val.names), on_val.extra, on_val.val_rows) == (10, 320, 0)
    assert on_val.threshold_source == "fixed 0.5"


def test_read_location_reads_from_s3_and_names_a_missing_key(s3_env):
    open_store("s3://cxrstudy-test/baseline").put_bytes("runs/chexnet.csv", b"Image Index\n")
    data, where = read_location("s3://cxrstudy-test/baseline/runs/chexnet.csv")
    assert data == b"Image Index\n" and where == "s3://cxrstudy-test/baseline/runs/chexnet.csv"
    with pytest.raises(PredictionsError, match=r"s3://cxrstudy-test/baseline/runs/none.csv: no such predictions file"):
        read_location("s3://cxrstudy-test/baseline/runs/none.csv")
