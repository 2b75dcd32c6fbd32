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

A record that cannot be read (truncated, not JSON, not an object) is damaged: a damaged result,
cancelled or error file makes the run ``failed``, its error naming the file, so that status, the
report and the workers all see it and none of them crashes (``resume`` removes the file and runs the
run again); a damaged progress file is a heartbeat that cannot be read, so not a fresh one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

from jobs.errors import CxrStudyError, DamagedArtifact, NoSuchObject
from jobs.spec.configs import PrepConfig
from jobs.spec.runs import JobSpec
from jobs.store import layout
from jobs.store.backends import Store
from jobs.store.snapshot import Snapshot

QUEUED, RUNNING, RETRYING = "queued", "running", "retrying"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)


def utc_timestamp(seconds: float | None = None) -> str:
    """``2026-11-23T19:27:45Z``: the one format of every time written to the store."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def read_json(store: Store, key: str, fix: str = "restore it from a copy, or delete it") -> dict | None:
    """The object at ``key`` as JSON, or None when there is none; a :class:`DamagedArtifact` naming the
    key, what is wrong and ``fix`` (what to do) when it is not a JSON object."""
    if not store.exists(key):
        return None
    try:
        data = store.get_bytes(key)
    except NoSuchObject:  # removed between the two requests (resume, a re-run's clean-up)
        return None
    try:
        record = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DamagedArtifact(damaged(store, key, f"not UTF-8 text (bad byte at offset {exc.start})", fix)) from None
    except ValueError as exc:  # json.JSONDecodeError: truncated, or not JSON at all
        raise DamagedArtifact(damaged(store, key, f"not valid JSON ({exc})", fix)) from None
    if not isinstance(record, dict):
        raise DamagedArtifact(damaged(store, key, f"a JSON {type(record).__name__}, not an object", fix))
    return record


def damaged(store: Store, key: str, what: str, fix: str) -> str:
    """The message of a damaged record: its location, what is wrong with it, what to do."""
    return f"{store.url(key)} is damaged: {what}; {fix}"


def missing_fields(record: dict, fields: Iterable[str]) -> list[str]:
    """The dotted ``fields`` (``test.avg_auroc``) that ``record`` lacks, in the order given."""
    missing = []
    for name in fields:
        node = record
        for part in name.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(name)
                break
            node = node[part]
    return missing


def write_json(store: Store, key: str, record: dict) -> None:
    store.put_text(key, json.dumps(record, indent=2))


# --- study.json -------------------------------------------------------------------------------------
STUDY_FIELDS = ("study_id", "spec.name", "data_prefix", "submitted", "jobs")


def write_study(
    store: Store,
    spec: dict,
    sid: str,
    data_prefix: str,
    jobs: list[JobSpec],
    source: str = "",
    datasets: dict[str, PrepConfig] | None = None,
) -> None:
    """``studies/<id>/study.json``: the spec as submitted and the expanded job list (kept if present:
    the same id means the same content; a damaged one is written again). ``datasets``: in a study with
    variants, each prepared dataset's prefix and preprocessing (``data_prefix`` is the first's)."""
    key = layout.study_key(sid)
    if store.exists(key):
        try:
            read_study(store, sid)
            return
        except DamagedArtifact:
            pass
    doc = {
        "study_id": sid,
        "spec": spec,
        "data_prefix": data_prefix,
        "source": source,
        "submitted": utc_timestamp(),
        "jobs": [j.to_json() for j in jobs],
    }
    if datasets is not None:
        doc["datasets"] = {prefix: config.spec() for prefix, config in datasets.items()}
    write_json(store, key, doc)


def read_study(store: Store, study_id: str) -> dict:
    """``study.json`` of a study, checked; a one-line error when the store has no such study, and a
    :class:`DamagedArtifact` naming the file when it is damaged."""
    key = layout.study_key(study_id)
    fix = "submit the study file again (`cxrstudy submit STUDY.yaml` writes it anew; the runs' files are kept)"
    doc = read_json(store, key, fix)
    if doc is None:
        raise CxrStudyError(f"no study {study_id!r} in {store.url(layout.STUDIES)} (see `cxrstudy list`)")
    if missing := missing_fields(doc, STUDY_FIELDS):
        raise DamagedArtifact(damaged(store, key, f"it has no {missing[0]!r}", fix))
    if not isinstance(doc["jobs"], list):
        raise DamagedArtifact(damaged(store, key, "'jobs' is not a list", fix))
    for i, job in enumerate(doc["jobs"]):
        try:
            JobSpec.from_json(job, f"jobs[{i}]")
        except (CxrStudyError, TypeError) as exc:
            what = str(exc) if isinstance(exc, CxrStudyError) else f"jobs[{i}]: {exc}"
            raise DamagedArtifact(damaged(store, key, what, fix)) from None
    return doc


def study_jobs(doc: dict) -> list[JobSpec]:
    return [JobSpec.from_json(j, "study.json") for j in doc["jobs"]]


def study_datasets(doc: dict) -> dict[str, dict]:
    """Each prepared dataset of a study (its prefix) with the preprocessing spec it is prepared with:
    one per distinct preprocessing of its variants, or the study's one."""
    datasets = doc.get("datasets")
    if isinstance(datasets, dict) and datasets:
        return datasets
    return {doc["data_prefix"]: doc["spec"]["preprocessing"]}


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
    rerun = f"`cxrstudy resume {job.study_id}` removes it and runs the run again"
    try:
        if (result := read_json(store, keys.result, rerun)) is not None:
            return RunState(job, SUCCEEDED, result)
        if (cancelled := read_json(store, keys.cancelled, rerun)) is not None:
            return RunState(job, CANCELLED, cancelled)
        error = read_json(store, keys.error, rerun)
    except DamagedArtifact as exc:
        return RunState(job, FAILED, {"status": FAILED, "final": True, "stage": "store", "error": str(exc)})
    if error is not None and error.get("final", True):
        return RunState(job, FAILED, error)
    try:
        progress, note = read_json(store, keys.progress, "the run's next heartbeat writes it again"), {}
    except DamagedArtifact as exc:
        progress, note = None, {"warning": str(exc)}
    updated = (progress or {}).get("updated")
    if (
        progress is not None
        and progress.get("state") == RUNNING
        and isinstance(updated, (int, float))
        and time.time() - updated < stale_after
    ):
        return RunState(job, RUNNING, progress)
    if error is not None:
        return RunState(job, RETRYING, {**error, "progress": progress, **note})
    return RunState(job, QUEUED, {**({"progress": progress} if progress else {}), **note})


def may_have_ended(store: Store, job: JobSpec) -> bool:
    """False when the run surely has not ended: it has none of the files an end state needs. With a
    :class:`Snapshot` this costs no request, so the fan-in can rule a study out from one listing."""
    keys = job.keys
    return any(store.exists(k) for k in (keys.result, keys.cancelled, keys.error))


def study_snapshot(store: Store, study_id: str, cache_file=None, prefetch: bool = True) -> Snapshot:
    """A :class:`Snapshot` of the study's folder, listed (and with ``prefetch``, its records read):
    what ``status``, ``wait`` and the fan-in read the study through, one listing per look."""
    return Snapshot(store, layout.study_folder(study_id), cache_file).refresh(prefetch)


def study_states(store: Store, study_id: str, stale_after: float = 120.0) -> tuple[dict, list[RunState]]:
    doc = read_study(store, study_id)
    return doc, [run_state(store, j, stale_after) for j in study_jobs(doc)]


def report_covers(store: Store, study_id: str, states: list[RunState]) -> bool:
    """The study's report is complete and was written for exactly these end states of its runs."""
    if not all(s.ended for s in states) or not store.exists(layout.report_markdown_key(study_id)):
        return False
    try:
        report = read_json(store, layout.report_json_key(study_id))
        reported = {r["job_id"]: r["status"] for r in report["runs"]} if report is not None else None
    except (DamagedArtifact, KeyError, TypeError):  # a damaged report.json covers nothing: aggregate again
        return False
    return reported is not None and all(reported.get(s.job.job_id) == s.state for s in states)


# --- the terminal files: one writer each --------------------------------------------------------------
def metrics_lines(store: Store, job: JobSpec) -> list[str]:
    """``metrics.jsonl``: one JSON line per finished epoch (of the checkpoint the run continues from)."""
    key = job.keys.metrics
    return [ln for ln in store.get_text(key).splitlines() if ln.strip()] if store.exists(key) else []


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
    retry_at: float | None = None,
) -> None:
    """``error.json``: the last failure of a run. ``final``: no attempt is left (the run has failed);
    ``retry_at``: when the next attempt is due (the backoff), in seconds since the epoch."""
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
    if retry_at is not None:
        record["retry_at"] = round(retry_at, 3)
    write_json(store, job.keys.error, record)


# --- aggregate_error.json: why the study's last aggregate job failed -------------------------------
def write_aggregate_error(store: Store, study_id: str, error: str) -> None:
    write_json(store, layout.aggregate_error_key(study_id), {"error": error, "at": utc_timestamp()})


def read_aggregate_error(store: Store, study_id: str) -> str | None:
    """Why the study's last aggregate job failed (None: it did not)."""
    key = layout.aggregate_error_key(study_id)
    try:
        record = read_json(store, key, "it is removed when the aggregate job runs again")
    except DamagedArtifact as exc:
        return str(exc)
    return None if record is None else str(record.get("error", f"no reason recorded in {store.url(key)}"))


def clear_aggregate_error(store: Store, study_id: str) -> None:
    """The aggregate job runs again (it starts, or ``resume`` asks for it)."""
    if store.exists(key := layout.aggregate_error_key(study_id)):
        store.delete(key)


def clear_ending(store: Store, job: JobSpec) -> None:
    """Remove a run's error and cancelled files (``resume`` runs it again), and its result and progress
    files when they are damaged (a result.json that cannot be read is no result); a result is never removed."""
    for key in (job.keys.error, job.keys.cancelled):
        if store.exists(key):
            store.delete(key)
    for key in (job.keys.result, job.keys.progress):
        try:
            read_json(store, key)
        except DamagedArtifact:
            store.delete(key)
