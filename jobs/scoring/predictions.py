"""The per-image predictions CSV: the one module that writes and reads it.

The format is the CheXNet-style CSV of public reimplementations: a column ``Image Index`` and one
column ``prob_<Class>`` per finding (``prob_Pleural_Thickening``). A run's own
``predictions_{val,test}.csv`` adds one ``label_<Class>`` column per finding (:func:`predictions_csv`
writes it, :func:`read_predictions` reads it back fast: a report reads two of them per run).

:func:`read_prediction_csv` reads another system's file (a baseline, ``cxrstudy evaluate``): columns
in any order, other columns ignored; every problem is a :class:`PredictionsError` naming the file,
the line and the column.
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
from jobs.errors import PredictionsError
from jobs.store import Store, open_store

IMAGE_COLUMN = "Image Index"
PROB_COLUMNS: tuple[str, ...] = tuple(f"prob_{c}" for c in CLASSES)
LABEL_COLUMNS: tuple[str, ...] = tuple(f"label_{c}" for c in CLASSES)
RUN_HEADER: tuple[str, ...] = (IMAGE_COLUMN, *PROB_COLUMNS, *LABEL_COLUMNS)  # a run's own file
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
    return names, probs


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


def predictions_csv(names: list[str], probs: np.ndarray, labels: np.ndarray) -> str:
    """A run's predictions file: ``Image Index``, ``prob_<Class>`` (six decimals), ``label_<Class>`` (0/1)."""
    cells = np.char.mod("%.6f", np.asarray(probs, dtype=np.float64))
    rows = [",".join([n, *p, *map(str, y)]) for n, p, y in zip(names, cells.tolist(), np.asarray(labels).tolist())]
    return ",".join(RUN_HEADER) + "\n" + "".join(row + "\n" for row in rows)


def read_predictions(store: Store, key: str) -> Predictions:
    """A run's ``predictions_{val,test}.csv`` (as :func:`predictions_csv` writes it), sorted by image name."""
    text = store.get_text(key)
    header, _, body = text.partition("\n")
    if tuple(header.split(",")) != RUN_HEADER:
        raise PredictionsError(f"{store.url(key)}: not a predictions file of this version (header {header[:80]!r}...)")
    names = [line.split(",", 1)[0] for line in body.splitlines()]
    columns = 2 * NUM_CLASSES
    # numpy's C parser: ~25x csv.DictReader, which matters at 100 runs x 34k images.
    values = (
        np.loadtxt(io.StringIO(body), delimiter=",", usecols=range(1, 1 + columns), ndmin=2)
        if names
        else np.zeros((0, columns))
    )
    order = np.argsort(np.array(names), kind="stable")
    probs, labels = values[order, :NUM_CLASSES], values[order, NUM_CLASSES:]
    return Predictions([names[i] for i in order], probs, labels.astype(np.uint8))
