"""Appending a benchmark's figures to bench/results.md: a dated heading with the machine, then one bullet each."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results.md"


def append_results(lines: list[str], title: str | None = None) -> None:
    heading = f"{time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores ({platform.machine()})"
    with open(RESULTS, "a") as fh:
        fh.write(f"\n## {heading}{f': {title}' if title else ''}\n\n" + "\n".join(f"- {line}" for line in lines) + "\n")
