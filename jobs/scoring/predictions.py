"""The per-image predictions CSV: the one module that writes and reads it.

The format is the CheXNet-style CSV of public reimplementations: a column ``Image Index`` and one
column ``prob_<Class>`` per finding (``prob_Pleural_Thickening``). A run's own
``predictions_{val,test}.csv`` adds the image's ``Patient ID`` (second column; the report's bootstrap
resamples patients) and one ``label_<Class>`` column per finding (:func:`predictions_csv` writes it,
:func:`read_predictions` reads it back fast: a report reads two of them per run). Files of runs from
before the patient column are still read, without patients.

:func:`read_prediction_csv` reads another system's file (a baseline, ``cxrstudy evaluate``): columns
in any order, other columns ignored; every problem is a :class:`PredictionsError` naming the file,
the line and the column. Its cells must be probabilities, in [0, 1]: the F1 of a threshold means
nothing on another scale (percentages, logits), so such a file is refused, not scored.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobs.data.labels import CLASSES, NUM_CLASSES
from jobs.errors import DamagedArtifact, PredictionsError
from jobs.store import Store, open_store

IMAGE_COLUMN = "Image Index"
PATIENT_COLUMN = "Patient ID"
PROB_COLUMNS: tuple[str, ...] = tuple(f"prob_{c}" for c in CLASSES)
LABEL_COLUMNS: tuple[str, ...] = tuple(f"label_{c}" for c in CLASSES)
RUN_HEADER: tuple[str, ...] = (IMAGE_COLUMN, PATIENT_COLUMN, *PROB_COLUMNS, *LABEL_COLUMNS)  # a run's own file
OLD_RUN_HEADER: tuple[str, ...] = (IMAGE_COLUMN, *PROB_COLUMNS, *LABEL_COLUMNS)  # before the patient column
_FORMAT = f"a predictions CSV has an '{IMAGE_COLUMN}' column and one 'prob_<Class>' column per finding"


def _nearest(expected: str, candidates: list[str]) -> str | None:
    """The candidate header that looks like a misspelling of ``expected`` (case-insensitive), if any."""
    lowered = {c.lower(): c for c in candidates}
    match = difflib.get_close_matches(expected.lower(), list(lowered), n=1, cutoff=0.8)
    return lowered[match[0]] if match else None


def _csv_rows(data: bytes, where: str) -> tuple[list[list[str]], list[int]]:
    """The non-blank rows of a CSV and the line number each ends on."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PredictionsError(
            f"{where}: not UTF-8 text (bad byte at offset {exc.start}); save it as a UTF-8 CSV"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, lines = [], []
    try:
        for row in reader:
            if len(row) > 1 or (row and row[0].strip()):
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as exc:
        raise PredictionsError(f"{where}, line {reader.line_num}: not valid CSV ({exc})") from None
    return rows, lines


def _column_index(header: list[str], where: str, line: int) -> dict[str, int]:
    """Where ``Image Index`` and each ``prob_<Class>`` column is; a clear error for any that is missing."""
    index = {name: j for j, name in enumerate(header)}
    for name in (IMAGE_COLUMN, *PROB_COLUMNS):
        if header.count(name) > 1:
            raise PredictionsError(f"{where}, line {line}: the column {name!r} appears {header.count(name)} times")
    others = [h for h in header if h not in PROB_COLUMNS and h != IMAGE_COLUMN and not h.startswith("label_")]
    if IMAGE_COLUMN not in index:
        near = _nearest(IMAGE_COLUMN, others)
        hint = f" (is {near!r} meant?)" if near else ""
        raise PredictionsError(f"{where}, line {line}: no {IMAGE_COLUMN!r} column{hint}; {_FORMAT}")
    missing = [c for c in PROB_COLUMNS if c not in index]
    if missing:
        named = []
        for column in missing:
            near = _nearest(column, others)
            named.append(f"{column} (found {near!r}: a misspelling?)" if near else column)
        raise PredictionsError(
            f"{where}, line {line}: missing {len(missing)} of the {NUM_CLASSES} probability columns: "
            f"{', '.join(named)}; each finding needs a column named prob_<Class>, the class spelled as in "
            f"NIH's labels ({', '.join(CLASSES)})"
        )
    return index


def _column_values(cells: list[str], column: str, j: int, lines: list[int], where: str) -> np.ndarray:
    """A column of probabilities; numpy converts it whole, and the bad cell is looked for only if that fails."""
    try:
        values = np.array(cells, dtype=np.float64)
        if np.isfinite(values).all():
            return values
    except ValueError:
        pass
    values = np.empty(len(cells), dtype=np.float64)
    for i, cell in enumerate(cells):
        try:
            values[i] = float(cell)
        except ValueError:
            values[i] = math.nan
        if not math.isfinite(values[i]):
            shown = "an empty cell" if not cell.strip() else repr(cell)
            raise PredictionsError(
                f"{where}, line {lines[i]}, column {column!r} (column {j + 1}): {shown} is not a finite number; "
                "each prob_<Class> cell must be a probability such as 0.137"
            )
    return values


def read_prediction_csv(data: bytes, where: str) -> tuple[list[str], np.ndarray]:
    """Parse a CheXNet-style predictions CSV.

    Args:
        data: the file's bytes (UTF-8, a BOM allowed).
        where: how to name the file in error messages (a path or an ``s3://`` URI).

    Returns:
        The image names in file order and an (images, 14) float64 matrix, columns in ``CLASSES`` order.
    """
    rows, lines = _csv_rows(data, where)
    if not rows:
        raise PredictionsError(f"{where}: the file is empty; {_FORMAT}")
    header = [h.strip() for h in rows[0]]
    index = _column_index(header, where, lines[0])
    body, lines = rows[1:], lines[1:]
    if not body:
        raise PredictionsError(f"{where}: the file has a header but no rows of predictions")
    width = len(header)
    for row, line in zip(body, lines):
        if len(row) != width:
            raise PredictionsError(
                f"{where}, line {line}: {len(row)} cells, but the header has {width} columns; "
                "every row needs one cell per column (is a value with a comma not quoted?)"
            )
    j = index[IMAGE_COLUMN]
    names = [row[j].strip() for row in body]
    if len(set(names)) != len(names) or "" in names:
        first: dict[str, int] = {}
        for name, line in zip(names, lines):
            if not name:
                raise PredictionsError(f"{where}, line {line}: the {IMAGE_COLUMN!r} cell is empty")
            if name in first:
                raise PredictionsError(
                    f"{where}: the image {name} appears twice, on lines {first[name]} and {line}; "
                    "keep one row per image"
                )
            first[name] = line
    probs = np.empty((len(body), NUM_CLASSES), dtype=np.float64)
    for k, column in enumerate(PROB_COLUMNS):
        j = index[column]
        probs[:, k] = _column_values([row[j] for row in body], column, j, lines, where)
    _check_probabilities(probs, body, lines, index, where)
    return names, probs


def _cells(n: int) -> str:
    return f"{n:,} cells are" if n != 1 else "1 cell is"


def _check_probabilities(probs: np.ndarray, body: list[list[str]], lines: list[int], index: dict, where: str) -> None:
    """Every value in [0, 1]; else an error naming the first offending cell (by line, then column)."""
    outside = (probs < 0) | (probs > 1)
    if not outside.any():
        return
    i = int(np.flatnonzero(outside.any(axis=1))[0])
    k = min(np.flatnonzero(outside[i]), key=lambda k: index[PROB_COLUMNS[k]])  # leftmost in the file
    j = index[PROB_COLUMNS[k]]
    raise PredictionsError(
        f"{where}, line {lines[i]}, column {PROB_COLUMNS[k]!r} (column {j + 1}): {body[i][j].strip()!r} is not a "
        f"probability between 0 and 1 ({_cells(int(outside.sum()))} outside [0, 1]; the values run from "
        f"{probs.min():g} to {probs.max():g}); each prob_<Class> cell must be a probability: an F1 threshold "
        "means nothing on another scale (divide percentages by 100, pass logits through a sigmoid)"
    )


def read_location(uri: str) -> tuple[bytes, str]:
    """The bytes of a file given as a local path or ``s3://bucket/key``, and the name to show for it."""
    text = str(uri)
    if text.startswith("s3://"):
        parent, _, name = text.rpartition("/")
        if parent == "s3:/" or not name:
            raise PredictionsError(f"{text}: names a bucket or a folder, not a file; give s3://BUCKET/KEY of the CSV")
    else:
        path = Path(text.removeprefix("file://")).expanduser()
        if path.is_dir():
            raise PredictionsError(f"{text} is a folder; give the path of the predictions CSV itself")
        parent, name = str(path.parent), path.name
    store = open_store(parent)
    if not store.exists(name):
        raise PredictionsError(f"{store.url(name)}: no such predictions file; check the path (or s3://BUCKET/KEY)")
    return store.get_bytes(name), store.url(name)


@dataclass
class Predictions:
    names: list[str]
    probs: np.ndarray  # (images, 14)
    labels: np.ndarray  # (images, 14) 0/1
    patients: np.ndarray | None = None  # (images,) each image's patient id, when known


def probability_cells(probs: np.ndarray) -> np.ndarray:
    """The probabilities as a run's predictions file writes them: six decimals."""
    return np.char.mod("%.6f", np.asarray(probs, dtype=np.float64))


def as_stored(probs: np.ndarray) -> np.ndarray:
    """The probabilities a report reads back from a run's predictions file (what its metrics see)."""
    return probability_cells(probs).astype(np.float64)


def predictions_csv(names: list[str], probs: np.ndarray, labels: np.ndarray, patients) -> str:
    """A run's predictions file: ``Image Index``, ``Patient ID``, ``prob_<Class>`` (six decimals),
    ``label_<Class>`` (0/1)."""
    cells = probability_cells(probs)
    rows = [
        ",".join([n, str(int(pid)), *p, *map(str, y)])
        for n, pid, p, y in zip(names, patients, cells.tolist(), np.asarray(labels).tolist(), strict=True)
    ]
    return ",".join(RUN_HEADER) + "\n" + "".join(row + "\n" for row in rows)


RUN_FIX = "it is written again with the run's result: delete the run's result.json, then `cxrstudy resume STUDY_ID`"


def read_predictions(store: Store, key: str, fix: str = RUN_FIX) -> Predictions:
    """A run's ``predictions_{val,test}.csv`` (as :func:`predictions_csv` writes it), sorted by image name.

    A file that is not what :func:`predictions_csv` wrote (truncated, edited, cut mid-line, values
    that are no probabilities or labels) is a :class:`DamagedArtifact` naming the key, the line and ``fix``.
    """
    where = store.url(key)
    try:
        text = store.get_text(key)
    except UnicodeDecodeError as exc:
        raise DamagedArtifact(f"{where} is damaged: not UTF-8 text (bad byte at offset {exc.start}); {fix}") from None
    header, _, body = text.partition("\n")
    columns = tuple(header.split(","))
    if columns not in (RUN_HEADER, OLD_RUN_HEADER):
        raise DamagedArtifact(
            f"{where} is damaged or from another version: its header is not a run's predictions header "
            f"({header[:80]!r}...); {fix}"
        )
    lines = body.splitlines()
    commas = len(columns) - 1
    bad = next((i for i, line in enumerate(lines) if line.count(",") != commas), None)
    if bad is not None:
        cells = lines[bad].count(",") + 1 if lines[bad] else 0
        raise DamagedArtifact(
            f"{where} is damaged: line {bad + 2} has {cells} cells where {commas + 1} are expected "
            f"(the file is cut short or edited); {fix}"
        )
    names = [line.split(",", 1)[0] for line in lines]
    values = _run_values(body, len(names), columns, where, fix)
    order = np.argsort(np.array(names), kind="stable")
    values = values[order]
    patients = values[:, 0].astype(np.int64) if columns == RUN_HEADER else None
    probs, labels = values[:, -2 * NUM_CLASSES : -NUM_CLASSES], values[:, -NUM_CLASSES:]
    return Predictions([names[i] for i in order], probs, labels.astype(np.uint8), patients)


def _run_values(body: str, rows: int, header: tuple[str, ...], where: str, fix: str) -> np.ndarray:
    """The values of a run's predictions file after the image name (the patient id, when the file has
    it, then the 14 probabilities and the 14 labels), checked."""
    columns = len(header) - 1
    if not rows:
        return np.zeros((0, columns))
    try:  # numpy's C parser: ~25x csv.DictReader, which matters at 100 runs x 34k images.
        values = np.loadtxt(io.StringIO(body), delimiter=",", usecols=range(1, 1 + columns), ndmin=2)
    except ValueError:
        raise DamagedArtifact(f"{where} is damaged: {_first_non_number(body, header)}; {fix}") from None
    start = columns - 2 * NUM_CLASSES  # 1 with the patient column
    if start:
        patients = values[:, 0]
        ok = np.isfinite(patients) & (patients >= 0) & (patients == np.round(patients))
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise DamagedArtifact(
                f"{where} is damaged: line {i + 2}, column {PATIENT_COLUMN!r}: {patients[i]:g} is not a patient id; "
                f"{fix}"
            )
    probs, labels = values[:, start : start + NUM_CLASSES], values[:, start + NUM_CLASSES :]
    checks = (
        (probs, 0, np.isfinite(probs) & (probs >= 0) & (probs <= 1), "a probability between 0 and 1"),
        (labels, NUM_CLASSES, (labels == 0) | (labels == 1), "a label (0 or 1)"),
    )
    for part, offset, ok, what in checks:
        if not ok.all():
            i, k = (int(v[0]) for v in np.nonzero(~ok))  # the first offending cell, by line
            column = header[1 + start + offset + k]
            raise DamagedArtifact(
                f"{where} is damaged: line {i + 2}, column {column!r}: {part[i, k]:g} is not {what}; {fix}"
            )
    return values


def _first_non_number(body: str, header: tuple[str, ...]) -> str:
    """Where the first cell of a run's predictions body that is not a number is (line 1 is the header)."""
    for n, line in enumerate(body.splitlines(), start=2):
        for j, cell in enumerate(line.split(",")[1:], start=1):
            try:
                float(cell)
            except ValueError:
                return f"line {n}, column {header[j]!r}: {cell!r} is not a number"
    return "its cells do not parse as numbers"
