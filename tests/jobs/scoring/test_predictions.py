"""The predictions CSVs: another system's file must hold probabilities; a run's own file, read back, must
be whole (a damaged one is an error naming the key and the line, never a crash inside numpy)."""

import numpy as np
import pytest

from jobs.data.labels import CLASSES
from jobs.errors import DamagedArtifact, PredictionsError
from jobs.scoring.predictions import PROB_COLUMNS, RUN_HEADER, predictions_csv, read_prediction_csv, read_predictions
from jobs.store import LocalStore

WHY = (
    "each prob_<Class> cell must be a probability: an F1 threshold means nothing on another scale "
    "(divide percentages by 100, pass logits through a sigmoid)"
)


def baseline(rows: list[list[str]]) -> bytes:
    """Another system's file: ``Image Index`` and the probability columns in class order."""
    lines = [",".join(["Image Index", *PROB_COLUMNS])]
    lines += [",".join([f"{i:08d}_000.png", *row]) for i, row in enumerate(rows)]
    return ("\n".join(lines) + "\n").encode()


def cells(n: int = 4, value: str = "0.25") -> list[list[str]]:
    return [[value] * len(CLASSES) for _ in range(n)]


# ---------------------------------------------------------------- another system's predictions


@pytest.mark.parametrize(
    "cell, shown, low, high",
    [("1.7", "'1.7'", "0.25", "1.7"), ("-3", "'-3'", "-3", "0.25"), ("1.0000001", "'1.0000001'", "0.25", "1")],
)
def test_a_value_outside_0_1_names_line_column_and_why(cell, shown, low, high):
    rows = cells()
    rows[2][4] = cell
    with pytest.raises(PredictionsError) as err:
        read_prediction_csv(baseline(rows), "p.csv")
    assert str(err.value) == (
        f"p.csv, line 4, column 'prob_Effusion' (column 6): {shown} is not a probability between 0 and 1 "
        f"(1 cell is outside [0, 1]; the values run from {low} to {high}); {WHY}"
    )


def test_a_percentage_scale_names_the_first_offending_cell_by_line_then_column():
    rows = cells(value="0.5")
    rows[0][:2] = ["0", "1"]  # the bounds are probabilities
    rows[3][0] = "97"  # later line, first column
    rows[1][9] = "55.5"  # earlier line: this one is named
    rows[1][12] = "80"
    with pytest.raises(PredictionsError) as err:
        read_prediction_csv(baseline(rows), "s3://b/p.csv")
    assert str(err.value).startswith(
        "s3://b/p.csv, line 3, column 'prob_Mass' (column 11): '55.5' is not a probability between 0 and 1 "
        "(3 cells are outside [0, 1]; the values run from 0 to 97)"
    )


# ---------------------------------------------------------------- a run's own predictions


@pytest.fixture
def run_file(tmp_path):
    """A run's predictions_test.csv of 6 images, as the trainer writes it."""
    store = LocalStore(tmp_path)
    rng = np.random.default_rng(0)
    names = [f"{i:08d}_000.png" for i in range(6)][::-1]
    labels = (rng.random((6, 14)) < 0.3).astype(np.uint8)
    probs = rng.random((6, 14))
    store.put_text("run/predictions_test.csv", predictions_csv(names, probs, labels, [7, 7, 9, 11, 11, 11]))
    return store, "run/predictions_test.csv", probs, labels


def test_a_run_file_reads_back_sorted_with_each_images_patient(run_file):
    store, key, probs, labels = run_file
    got = read_predictions(store, key)
    assert got.names == [f"{i:08d}_000.png" for i in range(6)]
    assert got.patients.tolist() == [11, 11, 11, 9, 7, 7]  # written in reverse name order
    np.testing.assert_allclose(got.probs, np.round(probs[::-1], 6), atol=1e-12)
    np.testing.assert_array_equal(got.labels, labels[::-1])


def test_a_run_file_from_before_the_patient_column_reads_without_patients(run_file):
    store, key, probs, labels = run_file
    lines = [line.split(",") for line in store.get_text(key).splitlines()]
    store.put_text(key, "".join(",".join([cells[0], *cells[2:]]) + "\n" for cells in lines))
    got = read_predictions(store, key)
    assert got.patients is None and got.names == [f"{i:08d}_000.png" for i in range(6)]
    np.testing.assert_allclose(got.probs, np.round(probs[::-1], 6), atol=1e-12)


@pytest.mark.parametrize("cell, shown", [("-3", "-3"), ("7.5", "7.5")])
def test_a_patient_cell_that_is_no_id_is_damage(run_file, cell, shown):
    store, key, _, _ = run_file
    lines = store.get_text(key).splitlines()
    cells = lines[2].split(",")
    cells[1] = cell
    lines[2] = ",".join(cells)
    store.put_text(key, "\n".join(lines) + "\n")
    with pytest.raises(DamagedArtifact, match=rf"is damaged: line 3, column 'Patient ID': {shown} is not a patient id"):
        read_predictions(store, key)


def edit(store, key, change) -> None:
    store.put_text(key, change(store.get_text(key)))


@pytest.mark.parametrize(
    "change, what",
    [
        (lambda t: t[: len(t) // 2], r"line 3 has 13 cells where 30 are expected \(the file is cut short or edited\)"),
        (lambda t: t[:40], r"from another version: its header is not a run's predictions header"),
        (lambda t: t.replace("\n", "\n\n", 2), r"line 2 has 0 cells where 30 are expected"),
        (lambda t: t.replace(",0.", ",0.x", 1), r"line 2, column 'prob_Atelectasis': '0.x\d+' is not a number"),
        (lambda t: t.replace(",0.", ",1.", 1), r"line 2, column 'prob_Atelectasis': 1\.\d+ is not a probability"),
        (lambda t: t[:-2] + "7\n", r"line 7, column 'label_Pneumothorax': 7 is not a label \(0 or 1\)"),
    ],
)
def test_a_damaged_file_names_the_key_and_the_line(run_file, change, what):
    store, key, _, _ = run_file
    edit(store, key, change)
    with pytest.raises(DamagedArtifact, match=rf"^{store.url(key)} is damaged(: | or ){what}.*; delete it, then x$"):
        read_predictions(store, key, "delete it, then x")


def test_nan_in_a_run_file_is_damage_naming_the_line(run_file):
    store, key, _, _ = run_file
    lines = store.get_text(key).splitlines()
    cells_ = lines[3].split(",")
    cells_[5] = "nan"
    lines[3] = ",".join(cells_)
    store.put_text(key, "\n".join(lines) + "\n")
    with pytest.raises(DamagedArtifact) as err:
        read_predictions(store, key)
    assert str(err.value).startswith(f"{store.url(key)} is damaged: line 4, column {RUN_HEADER[5]!r}: nan is not a")


def test_a_file_that_is_not_utf8_is_damage(run_file):
    store, key, _, _ = run_file
    store.put_bytes(key, store.get_bytes(key)[:100] + b"\xff\xfe")
    with pytest.raises(DamagedArtifact, match=r"is damaged: not UTF-8 text \(bad byte at offset 100\); it is written"):
        read_predictions(store, key)
