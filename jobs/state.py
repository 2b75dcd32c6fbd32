"""What state each run of a study is in, read from the store alone (the source of truth).

result.json     succeeded
error.json      failed (``final``: no attempt left), or retrying
cancelled.json  cancelled
progress.json   running, while its ``updated`` time is fresh; a stale one means the worker
                died and the job waits for redelivery (or ``cxrstudy resume``)
nothing         queued
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from jobs.errors import CxrStudyError
from jobs.store import Store
from jobs.study import JobSpec

TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class RunState:
    job: JobSpec
    state: str  # queued | running | retrying | succeeded | failed | cancelled
    detail: dict  # the file that decided the state (result / error / progress), or {}


def load_study(store: Store, study_id: str) -> dict:
    key = f"studies/{study_id}/study.json"
    if not store.exists(key):
        raise CxrStudyError(f"no study {study_id!r} in {store.url('studies')} (see `cxrstudy list`)")
    return json.loads(store.get_text(key))


def study_jobs(doc: dict) -> list[JobSpec]:
    return [JobSpec.from_json(j, "study.json") for j in doc["jobs"]]


def run_state(store: Store, job: JobSpec, stale_after: float = 120.0) -> RunState:
    def read(name):
        key = f"{job.prefix}/{name}"
        return json.loads(store.get_text(key)) if store.exists(key) else None

    if (r := read("result.json")) is not None:
        return RunState(job, "succeeded", r)
    if (c := read("cancelled.json")) is not None:
        return RunState(job, "cancelled", c)
    e = read("error.json")
    if e is not None and e.get("final", True):
        return RunState(job, "failed", e)
    p = read("progress.json")
    if p is not None and p.get("state") == "running" and time.time() - p.get("updated", 0) < stale_after:
        return RunState(job, "running", p)
    if e is not None:
        return RunState(job, "retrying", {**e, "progress": p})
    return RunState(job, "queued", {"progress": p} if p else {})


def study_states(store: Store, study_id: str, stale_after: float = 120.0) -> tuple[dict, list[RunState]]:
    doc = load_study(store, study_id)
    return doc, [run_state(store, j, stale_after) for j in study_jobs(doc)]


def cancel_key(study_id: str) -> str:
    return f"studies/{study_id}/cancel.json"
