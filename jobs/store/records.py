"""What the store says about a study: ``study.json``, each run's state, and its terminal files.

A run's state is decided here, by :func:`run_state`, from the run's files alone; ``status``, ``wait``,
the fan-in and the aggregate job all ask it. Each terminal file has one writer here, with one shape:

    result.json     succeeded        (written by the train job, through :func:`write_result`)
    cancelled.json  cancelled        (:func:`write_cancelled`)
    error.json      failed when ``final`` (no attempt left), else retrying (:func:`write_error`)
    progress.json   running, while its ``updated`` time is fresh; a stale one means the worker
                    died and the job waits for redelivery (or ``cxrstudy resume``)
    nothing         queued

Precedence, in this order: result, cancelled, final error, fresh progress, non-final error, queued.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from jobs.errors import CxrStudyError
from jobs.spec.runs import JobSpec
from jobs.store import layout
from jobs.store.backends import Store

QUEUED, RUNNING, RETRYING = "queued", "running", "retrying"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)


def utc_timestamp(seconds: float | None = None) -> str:
    """``2026-11-23T19:27:45Z``: the one format of every time written to the store."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def read_json(store: Store, key: str) -> dict | None:
    """The object at ``key`` as JSON, or None when there is none."""
    return json.loads(store.get_text(key)) if store.exists(key) else None


def write_json(store: Store, key: str, record: dict) -> None:
    store.put_text(key, json.dumps(record, indent=2))


# --- study.json -------------------------------------------------------------------------------------
def write_study(store: Store, spec: dict, sid: str, data_prefix: str, jobs: list[JobSpec], source: str = "") -> None:
    """``studies/<id>/study.json``: the spec as submitted and the expanded job list (kept if present:
    the same id means the same content)."""
    key = layout.study_key(sid)
    if store.exists(key):
        return
    doc = {
        "study_id": sid,
        "spec": spec,
        "data_prefix": data_prefix,
        "source": source,
        "submitted": utc_timestamp(),
        "jobs": [j.to_json() for j in jobs],
    }
    write_json(store, key, doc)


def read_study(store: Store, study_id: str) -> dict:
    """``study.json`` of a study; a one-line error when the store has no such study."""
    doc = read_json(store, layout.study_key(study_id))
    if doc is None:
        raise CxrStudyError(f"no study {study_id!r} in {store.url(layout.STUDIES)} (see `cxrstudy list`)")
    return doc


def study_jobs(doc: dict) -> list[JobSpec]:
    return [JobSpec.from_json(j, "study.json") for j in doc["jobs"]]


def study_ids(store: Store) -> list[str]:
    """Every study in the store, sorted."""
    return sorted({sid for o in store.list(layout.studies_prefix()) if (sid := layout.study_id_of(o.key))})


# --- run state --------------------------------------------------------------------------------------
@dataclass
class RunState:
    job: JobSpec
    state: str  # one of STATES
    detail: dict  # the file that decided the state (result / cancelled / error / progress), or {}

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL


def run_state(store: Store, job: JobSpec, stale_after: float = 120.0) -> RunState:
    """The state of one run, from its files in the store (see the module's docstring for the order)."""
    keys = job.keys
    if (result := read_json(store, keys.result)) is not None:
        return RunState(job, SUCCEEDED, result)
    if (cancelled := read_json(store, keys.cancelled)) is not None:
        return RunState(job, CANCELLED, cancelled)
    error = read_json(store, keys.error)
    if error is not None and error.get("final", True):
        return RunState(job, FAILED, error)
    progress = read_json(store, keys.progress)
    if (
        progress is not None
        and progress.get("state") == RUNNING
        and time.time() - progress.get("updated", 0) < stale_after
    ):
        return RunState(job, RUNNING, progress)
    if error is not None:
        return RunState(job, RETRYING, {**error, "progress": progress})
    return RunState(job, QUEUED, {"progress": progress} if progress else {})


def study_states(store: Store, study_id: str, stale_after: float = 120.0) -> tuple[dict, list[RunState]]:
    doc = read_study(store, study_id)
    return doc, [run_state(store, j, stale_after) for j in study_jobs(doc)]


def report_covers(store: Store, study_id: str, states: list[RunState]) -> bool:
    """The study's report is complete and was written for exactly these end states of its runs."""
    if not all(s.ended for s in states) or not store.exists(layout.report_markdown_key(study_id)):
        return False
    report = read_json(store, layout.report_json_key(study_id))
    if report is None:
        return False
    reported = {r["job_id"]: r["status"] for r in report["runs"]}
    return all(reported.get(s.job.job_id) == s.state for s in states)


# --- the terminal files: one writer each --------------------------------------------------------------
def write_result(store: Store, job: JobSpec, result: dict) -> None:
    write_json(store, job.keys.result, result)


def write_cancelled(store: Store, job: JobSpec) -> None:
    write_json(store, job.keys.cancelled, {"status": CANCELLED, "at": utc_timestamp()})


def write_error(
    store: Store,
    job: JobSpec,
    error: str,
    *,
    final: bool,
    stage: str = "train",
    attempts: int | None = None,
    max_attempts: int | None = None,
    traceback: str | None = None,
    worker: str | None = None,
) -> None:
    """``error.json``: the last failure of a run. ``final``: no attempt is left (the run has failed)."""
    record = {
        "status": "failed",
        "final": final,
        "stage": stage,
        "error": error,
        "attempts": attempts,
        "max_attempts": max_attempts,
        "worker": worker,
        "at": utc_timestamp(),
        "traceback": traceback,
    }
    write_json(store, job.keys.error, record)


def clear_ending(store: Store, job: JobSpec) -> None:
    """Remove a run's error and cancelled files (``resume`` runs it again); a result is never removed."""
    for key in (job.keys.error, job.keys.cancelled):
        if store.exists(key):
            store.delete(key)
