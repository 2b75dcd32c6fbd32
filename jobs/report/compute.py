"""The report's "Compute and Provenance" section, from every run's ``provenance.json``.

- GPU-hours and compute hours per architecture and for the study (every attempt counts, a failed
  one too: it was paid for), attempts beyond the first;
- wall time from the study's submission to its last run's end (the aggregate job writes the report
  right after it): what a user waited;
- the versions, GPU models, drivers and determinism settings the runs used, with how many runs used
  each; one warning line when the runs differ in any of them, since two runs of one study on
  different software or hardware can differ for that reason alone.

The section reads the records as data (``jobs.training.provenance`` writes them; it imports torch,
this module does not). A record that cannot be read is counted as missing, never fatal: it is
evidence about the runs, not one of their results.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable
from dataclasses import dataclass

from jobs.errors import DamagedArtifact
from jobs.report.tables import markdown_table
from jobs.store import Store
from jobs.store.records import RunState, read_json

# What a warning compares, by the name the section gives it -> where it sits in a record.
VERSIONS = ("python", "torch", "torchvision", "timm", "numpy", "opencv", "cxrstudy", "cuda", "cudnn")
BUILD = ("image", "git_commit")
DETERMINISM = ("deterministic", "cudnn_benchmark", "amp", "channels_last")


def seconds_since_epoch(stamp: str) -> float | None:
    """A store timestamp (``2026-11-23T19:27:45Z``) as seconds since the epoch; None when it is not one."""
    try:
        return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))
    except (TypeError, ValueError):
        return None


@dataclass
class RunCompute:
    """What one run's record says, flattened for the section."""

    state: RunState
    label: str  # the group it is counted in (an architecture's display name)
    attempts: int
    wall_seconds: float
    gpu_seconds: float
    ended: str | None
    facts: dict[str, str]  # what the warning compares: "torch" -> "2.14.1+cu130", "GPU" -> "NVIDIA H100 80GB HBM3"


def run_compute(store: Store, state: RunState, label: str) -> RunCompute | None:
    """One run's record as :class:`RunCompute`; None when it has none, or one that cannot be read."""
    try:
        record = read_json(store, state.job.keys.provenance)
    except DamagedArtifact:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("attempts"), list):
        return None
    env = record.get("environment") if isinstance(record.get("environment"), dict) else {}
    gpu = env.get("gpu") if isinstance(env.get("gpu"), dict) else None
    determinism = record.get("determinism") if isinstance(record.get("determinism"), dict) else {}
    facts = {name: str(env.get(name)) for name in (*VERSIONS, *BUILD) if env.get(name) is not None}
    facts["GPU"] = str(gpu.get("name")) if gpu else "none (CPU)"
    if gpu and gpu.get("driver"):
        facts["driver"] = str(gpu["driver"])
    facts.update({name: str(determinism[name]).lower() for name in DETERMINISM if name in determinism})
    try:
        wall, gpu_seconds = float(record.get("wall_seconds") or 0), float(record.get("gpu_seconds") or 0)
    except (TypeError, ValueError):
        return None
    return RunCompute(state, label, len(record["attempts"]), wall, gpu_seconds, record.get("ended"), facts)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f}"


def _span(seconds: float) -> str:
    """``3 h 12 min`` / ``14 min`` / ``42 s``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def _values(runs: list[RunCompute], name: str) -> dict[str, int]:
    """The values of one fact over the runs, with how many runs had each (most used first)."""
    counts: dict[str, int] = {}
    for r in runs:
        if name in r.facts:
            counts[r.facts[name]] = counts.get(r.facts[name], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _shown(values: dict[str, int], runs: int) -> str:
    if len(values) == 1 and next(iter(values.values())) == runs:
        return f"`{next(iter(values))}`"
    return ", ".join(f"`{v}` ({n} run{'s' if n != 1 else ''})" for v, n in values.items())


def compute_section(
    store: Store, submitted: str | None, states: list[RunState], label: Callable[[RunState], str]
) -> tuple[str, list[list], dict]:
    """The section's markdown, ``compute.csv``'s rows and report.json's ``compute`` part.

    Args:
        submitted: study.json's submission time.
        states: every run of the study.
        label: the group a run is counted in (its architecture's display name, or its arm).
    """
    runs = [c for s in states if (c := run_compute(store, s, label(s))) is not None]
    missing = len(states) - len(runs)
    text = ["# Compute and Provenance"]
    if not runs:
        text.append(
            f"None of the {len(states)} runs has a readable provenance.json (runs of an older cxrstudy have none): "
            "no compute or version record to report."
        )
        return "\n\n".join(text), [["job_id"]], {"runs_with_record": 0, "runs": len(states)}

    groups: dict[str, list[RunCompute]] = {}
    for r in runs:
        groups.setdefault(r.label, []).append(r)
    rows = []
    for name, members in groups.items():
        gpu, wall = sum(r.gpu_seconds for r in members), sum(r.wall_seconds for r in members)
        retries = sum(r.attempts - 1 for r in members)
        rows.append([name, str(len(members)), _hours(gpu), _hours(wall), _hours(wall / len(members)), str(retries)])
    total_gpu, total_wall = sum(r.gpu_seconds for r in runs), sum(r.wall_seconds for r in runs)
    rows.append(
        [
            "**Study**",
            str(len(runs)),
            _hours(total_gpu),
            _hours(total_wall),
            _hours(total_wall / len(runs)),
            str(sum(r.attempts - 1 for r in runs)),
        ]
    )
    text.append(
        "From each run's provenance.json: GPU-hours (attempts on a GPU), compute hours (every attempt, on any "
        "device; a failed or killed attempt counts up to its last finished epoch) and the attempts beyond the "
        "first (retries after a failure, resumes after a lost worker)."
    )
    text.append(
        markdown_table(["Group", "Runs", "GPU-hours", "Compute hours", "Hours per run", "Extra attempts"], rows)
    )
    ends = [t for r in runs if (t := seconds_since_epoch(r.ended)) is not None]
    start = seconds_since_epoch(submitted)
    wait = max(ends) - start if ends and start is not None and all(s.ended for s in states) else None
    if wait is not None and wait >= 0:
        text.append(
            f"- Wall time from submission ({submitted}) to the last run's end: **{_span(wait)}** "
            f"({_hours(total_wall)} compute hours in it: {total_wall / max(wait, 1):.1f} runs in parallel on average)."
        )
    elif wait is None:
        text.append(f"- Submitted {submitted}; not every run has ended yet, so the wall time to the report is open.")
    else:  # a record ended before the study was submitted: clocks that disagree, or a study submitted again
        text.append(f"- Submitted {submitted}, after its last run ended: no wall time to report.")
        wait = None
    if missing:
        text.append(
            f"- {missing} of {len(states)} runs have no readable provenance.json (not started, or run by an older "
            "cxrstudy); the hours above leave them out."
        )

    names = [*VERSIONS, *BUILD, "GPU", "driver", *DETERMINISM]
    used = {name: values for name in names if (values := _values(runs, name))}
    text.append("Versions, hardware and settings the runs used (with how many runs used each where they differ):")
    text.append(markdown_table(["What", "Used"], [[name, _shown(v, len(runs))] for name, v in used.items()]))
    differing = [name for name in (*VERSIONS, *BUILD, "GPU", "driver", *DETERMINISM) if len(used.get(name, {})) > 1]
    if differing:
        text.append(
            f"**Warning:** the runs differ in {', '.join(differing)}; differences between them may come from "
            "that as well as from the seed."
        )

    csv_rows = [["job_id", "group", "seed", "attempts", "wall_seconds", "gpu_seconds", *names]]
    for r in runs:
        job = r.state.job
        facts = [r.facts.get(name, "") for name in names]
        csv_rows.append([job.job_id, r.label, job.seed, r.attempts, r.wall_seconds, r.gpu_seconds, *facts])
    structured = {
        "runs": len(states),
        "runs_with_record": len(runs),
        "gpu_hours": round(total_gpu / 3600, 4),
        "compute_hours": round(total_wall / 3600, 4),
        "groups": {
            name: {
                "runs": len(members),
                "gpu_hours": round(sum(r.gpu_seconds for r in members) / 3600, 4),
                "compute_hours": round(sum(r.wall_seconds for r in members) / 3600, 4),
            }
            for name, members in groups.items()
        },
        "submitted": submitted,
        "submit_to_last_result_seconds": wait,
        "used": used,
        "differ_in": differing,
    }
    return "\n\n".join(text), csv_rows, structured
