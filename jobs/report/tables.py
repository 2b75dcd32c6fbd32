"""The report's formatting: numbers at four decimals, padded markdown tables, CSV text, display names."""

from __future__ import annotations

import csv
import io
import math

import numpy as np

from jobs.spec.runs import ARM_SEPARATOR

DISPLAY_NAMES = {"densenet121": "DenseNet-121", "efficientnet_b2": "EfficientNet-B2", "resnet50": "ResNet-50"}
LOSS_NAMES = {"focal": "Focal Loss", "bce": "BCE Loss", "asl": "Asymmetric Loss"}


def fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def markdown_table(headers: list[str], rows: list[list[str]], centered: set[int] = frozenset()) -> str:
    """A padded markdown table; columns in ``centered`` get ``:---:`` alignment."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) + 1 for i, h in enumerate(headers)]
    widths = [max(w, 6) for w in widths]

    def line(cells: list[str]) -> str:
        out = []
        for i, c in enumerate(cells):
            out.append(f" {c.center(widths[i] - 1) if i in centered else c.ljust(widths[i] - 1)} ")
        return "|" + "|".join(out) + "|"

    rule = (
        "|"
        + "|".join(":" + "-" * (w - 1) + ":" if i in centered else "-" * (w + 1) for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def mean_std(values: list[float]) -> str:
    arr = np.array(values, dtype=np.float64)
    if len(arr) < 2:
        return f"{fmt(float(arr.mean()))} ± n/a"
    return f"{fmt(float(arr.mean()))} ± {fmt(float(arr.std(ddof=1)))}"


def display_name(architecture: str) -> str:
    """An architecture as the write-ups name it (DenseNet-121); an arm with its variant in brackets
    (``densenet121@plain`` -> DenseNet-121 (plain))."""
    arch, separator, variant = architecture.partition(ARM_SEPARATOR)
    name = DISPLAY_NAMES.get(arch, arch)
    return f"{name} ({variant})" if separator else name


def csv_text(rows: list[list]) -> str:
    """Rows as CSV text (``\\n`` line ends)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()
