"""The status table of a study: one row per run, the summary line, and the report's state; in a study
with variants, a Variant column and a line per arm (an architecture with a variant).

Everything here reads what :func:`jobs.store.records.run_state` decided, and copes with records that
lack fields (a damaged or hand-edited ``result.json``): such a run still has its row, with a note
naming the file, so one bad file never hides the other runs.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from jobs.spec.runs import arm_name
from jobs.store import Store, layout
from jobs.store.backends import LocalStore
from jobs.store.records import RunState, missing_fields, read_aggregate_error, report_covers

# What a row shows of a succeeded run's result.json (the trainer writes these and more).
STATUS_FIELDS = ("epochs_run", "val.avg_auroc", "test.avg_auroc")


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _attempts(n, retry_at=None) -> str:
    """`` (2 attempts)``, and while a retry waits out its backoff `` (1 attempt, next in 14 s)``."""
    parts = [f"{n} attempt{'s' if n != 1 else ''}"] if n else []
    if (due := _number(retry_at)) is not None and due > time.time():
        parts.append(f"next in {due - time.time():.0f} s")
    return f" ({', '.join(parts)})" if parts else ""


def _elapsed(detail: dict) -> str:
    started, end = _number(detail.get("started")), _number(detail.get("updated", time.time()))
    if not started or end is None:
        return ""
    s = int(end - started)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _result_row(s: RunState, epochs: int) -> dict:
    """What a succeeded run's row shows from its result.json, and a note naming the fields it lacks."""
    d = s.detail
    val, test = d.get("val"), d.get("test")
    row = {
        "epoch": f"{d.get('epochs_run', '?')}/{epochs}",
        "val_auroc": _number(val.get("avg_auroc")) if isinstance(val, dict) else None,
        "test_auroc": _number(test.get("avg_auroc")) if isinstance(test, dict) else None,
    }
    if missing := missing_fields(d, STATUS_FIELDS):
        row["error"] = (
            f"{s.job.keys.result} is damaged: it has no {', '.join(map(repr, missing))}; delete it and "
            f"`cxrstudy resume {s.job.study_id}` runs the run again"
        )
    return row


def rows_of(states: list[RunState]) -> list[dict]:
    """One status row per run."""
    rows = []
    for s in states:
        d = s.detail
        p = d if s.state == "running" else (d.get("progress") or {})
        epochs = s.job.training.epochs
        row = {
            "job_id": s.job.job_id,
            "architecture": s.job.architecture,
            **({"variant": s.job.variant} if s.job.variant is not None else {}),
            "seed": s.job.seed,
            "state": s.state,
            "epoch": f"{p.get('epoch', 0)}/{epochs}" if p else "",
            "step": f"{p.get('step', 0)}/{p.get('steps', '?')}" if p.get("steps") else "",
            "val_auroc": _number(p.get("val_auroc")),
            "worker": str(p.get("worker", "")),
            "elapsed": _elapsed(p),
        }
        if s.state == "succeeded":
            row.update(_result_row(s, epochs))
        if s.state in ("failed", "retrying"):
            row["error"] = str(d.get("error", ""))
            row["attempts"] = d.get("attempts")
            row["retry_at"] = d.get("retry_at") if s.state == "retrying" else None
        if d.get("warning"):
            row["error"] = "; ".join(filter(None, [row.get("error"), d["warning"]]))
        rows.append(row)
    return rows


def format_status(sid: str, rows: list[dict], depths: dict[str, int] | None, report: str) -> str:
    """The status table; ``report`` is one of :func:`report_state`'s phrases (or "")."""
    variants = any("variant" in r for r in rows)
    header = ["Architecture", *(["Variant"] if variants else []), "Seed", "State", "Epoch", "Val AUROC", "Worker"]
    header.append("Elapsed")
    table = [header] + [
        [
            r["architecture"],
            *([r.get("variant", "")] if variants else []),
            str(r["seed"]),
            r["state"] + _attempts(r.get("attempts"), r.get("retry_at")),
            r["epoch"] + (f" step {r['step']}" if r["state"] == "running" and r["step"] else ""),
            "" if r["val_auroc"] is None else f"{r['val_auroc']:.4f}",
            r["worker"] if r["state"] == "running" else "",
            r["elapsed"],
        ]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    summary = state_counts(r["state"] for r in rows)
    queue = f"; queues: gpu {depths['gpu']}, cpu {depths['cpu']}" if depths else ""
    if depths and "running" in depths:  # held leases: the jobs KEDA counts with the queued ones
        queue += f", running {depths['running']}"
    done = f"; {report}" if report else ""
    errors = [f"  {run_label(r)} seed {r['seed']}: {r['error']}" for r in rows if r.get("error")]
    arms = arm_lines(rows) if variants else []
    return "\n".join([f"study {sid}: {len(rows)} runs: {summary}{queue}{done}", *arms, *lines, *errors])


def state_counts(states: Iterable[str]) -> str:
    """``2 succeeded, 1 running``: how many runs are in each state, in the order first seen."""
    return ", ".join(f"{n} {state}" for state, n in Counter(states).items())


def run_label(row: dict) -> str:
    """A row's arm as ``cxrstudy report --compare`` names it: ``densenet121``, or ``densenet121@plain-focal``
    in a study with variants."""
    return arm_name(row["architecture"], row.get("variant"))


def arm_lines(rows: list[dict]) -> list[str]:
    """One line per arm: its runs' states and the mean test Avg AUROC of those that succeeded."""
    arms: dict[str, list[dict]] = {}
    for r in rows:
        arms.setdefault(run_label(r), []).append(r)
    lines = []
    for arm, members in arms.items():
        tested = [r["test_auroc"] for r in members if r.get("test_auroc") is not None]
        mean = f"; test Avg AUROC {sum(tested) / len(tested):.4f} (mean of {len(tested)})" if tested else ""
        lines.append(f"  arm {arm}: {state_counts(r['state'] for r in members)}{mean}")
    return lines


def report_state(store: Store, sid: str, states: list[RunState]) -> tuple[str, str]:
    """The report's state, ready (it covers every run's end state), failed, stale or none, and a
    phrase for the status line."""
    if report_covers(store, sid, states):
        return "ready", "report ready"
    error = read_aggregate_error(store, sid)
    if error is not None:
        return "failed", f"the aggregate job failed: {error} (`cxrstudy resume {sid}` runs it again)"
    if store.exists(layout.report_markdown_key(sid)):
        return "stale", "the report is out of date (it predates the runs' current states)"
    return "none", ""


def render_status(store: Store, sid: str, doc: dict, states: list[RunState], depths: dict | None, as_json: bool) -> str:
    """``cxrstudy status``'s output (the table, or JSON) from the states already read."""
    rows = rows_of(states)
    report, phrase = report_state(store, sid, states)
    if as_json:
        record = {"study_id": sid, "name": doc["spec"]["name"], "runs": rows, "queues": depths}
        record["report"] = report == "ready"
        return json.dumps({**record, "report_note": phrase}, indent=2)
    return format_status(sid, rows, depths, phrase)


def cache_file(store: Store, sid: str) -> Path | None:
    """Where the client keeps its copies of a study's records between commands (see
    :class:`jobs.store.snapshot.Snapshot`): ``$CXRSTUDY_CACHE_DIR``, else ``$XDG_CACHE_HOME/cxrstudy``
    or ``~/.cache/cxrstudy``; none for a local store, whose reads cost what the copy would."""
    if isinstance(store, LocalStore):
        return None
    from worker.coord import scope_of

    base = os.environ.get("CXRSTUDY_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cxrstudy"
    )
    return Path(base) / scope_of(store.uri) / f"{sid}.json"
