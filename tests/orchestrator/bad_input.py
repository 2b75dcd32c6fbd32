"""The harness of the bad-input tests: run the CLI in a sandbox folder, then check the promise.

The promise (README, "What bad input gets"): exit code 2, one line on stderr that names the file or
field and what to do, no traceback, and nothing created or changed outside the store and the
output folder the command was given.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cxrstudy(*args, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``cxrstudy ARGS`` run from ``cwd`` (the sandbox), as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=timeout,
    )


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root``: relative path -> (size, mtime in ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_size if path.is_file() else 0, st.st_mtime_ns)
    return out


def assert_rejected(
    proc: subprocess.CompletedProcess,
    *fragments: str,
    sandbox: Path | None = None,
    before: dict | None = None,
    allowed: tuple[str, ...] = (),
) -> str:
    """Exit 2, one ``cxrstudy: error:`` line containing every fragment, no traceback; with ``sandbox``
    and its ``before`` snapshot, nothing changed in it except under the ``allowed`` relative paths
    (the store, the output folder). Returns the line."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cxrstudy: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    if sandbox is not None:
        after = snapshot(sandbox)
        changed = {
            path
            for path in set(before) | set(after)
            if before.get(path) != after.get(path) and not any(path == a or path.startswith(a + "/") for a in allowed)
        }
        assert not changed, f"changed outside {allowed}: {sorted(changed)}"
    return lines[0]
