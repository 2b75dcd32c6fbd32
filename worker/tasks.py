"""The Celery tasks: thin shells over ``jobs`` with small JSON arguments (ids, never pickles).

``cxrstudy.prepare(study_id)``  (cpu) shards the dataset, then enqueues the study's train jobs
``cxrstudy.train(study_id, job_id)``  (gpu) one run, under a lease; the last run to end fans in
``cxrstudy.aggregate(study_id)``  (cpu) the report; idempotent

A train job's life: skip if it already has a terminal file; stop at once if the study is
cancelled; take the lease (a copy of a job that another worker holds is dropped); count the
attempt (past ``max_attempts`` it is recorded as failed); train with a heartbeat that renews the
lease and keeps the message invisible, progress written to the store, and a SIGTERM handler that
checkpoints and requeues. Torch is imported inside the task, in the pool's child process, so the
parent never initialises CUDA.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid

from celery import current_app, shared_task
from celery.exceptions import Reject
from celery.signals import worker_shutting_down
from celery.utils.log import get_task_logger

from jobs.errors import CxrStudyError
from jobs.store import layout, open_store
from jobs.store.records import (
    TERMINAL,
    read_json,
    read_study,
    run_state,
    study_jobs,
    write_cancelled,
    write_error,
)
from worker.coord import open_coord

# The worker's parent process imports this module: it must not import torch, so ``jobs.train`` and
# ``jobs.aggregate`` are imported inside the tasks, in the pool's child.

log_ = get_task_logger("cxrstudy")


def _log(message: str) -> None:
    log_.info(message)


def _context():
    settings = current_app.cxrstudy_settings.need("broker_url", "store")
    return settings, open_store(settings.store), open_coord(settings.broker_url)


def enqueue_train(app, study_id: str, job_ids: list[str]) -> None:
    for job_id in job_ids:
        app.send_task("cxrstudy.train", kwargs={"study_id": study_id, "job_id": job_id}, queue="gpu")


def maybe_aggregate(app, store, coord, study_id: str, stale_after: float) -> bool:
    """Enqueue the aggregate job once, when every run has ended (succeeded, failed or cancelled).

    The claim key carries a digest of the runs' end states: the same ending aggregates once however
    many workers see it; a later ending (``resume`` re-ran failed runs) aggregates again.
    """
    doc = read_study(store, study_id)
    states = [run_state(store, j, stale_after) for j in study_jobs(doc)]
    if any(s.state not in TERMINAL for s in states):
        return False
    digest = hashlib.sha256(json.dumps(sorted((s.job.job_id, s.state) for s in states)).encode()).hexdigest()[:12]
    if coord.claim(f"aggregate:{study_id}:{digest}"):
        app.send_task("cxrstudy.aggregate", kwargs={"study_id": study_id}, queue="cpu")
        _log(f"{study_id}: every run has ended; aggregate enqueued")
        return True
    return False


def _run_prepare(spec: dict, store_uri: str) -> str:
    """Run ``python -m jobs.prepare`` as a process of its own: Celery's pool children are daemonic
    and may not start the process pool CLAHE is spread over. Returns the prefix it wrote."""
    cmd = [
        sys.executable,
        "-m",
        "jobs.prepare",
        "--dataset",
        spec["dataset"]["location"],
        "--store",
        store_uri,
        "--config",
        json.dumps(spec["preprocessing"]),
    ]
    if spec["dataset"]["id"]:
        cmd += ["--dataset-id", spec["dataset"]["id"]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prefix = None
    for line in proc.stdout:
        _log(line.rstrip())
        if line.startswith("prefix: "):
            prefix = line.split(": ", 1)[1].strip()
    err = proc.stderr.read().strip()
    if proc.wait() != 0 or prefix is None:
        last = err.splitlines()[-1] if err else f"exit status {proc.returncode}"
        raise CxrStudyError(last.removeprefix("jobs.prepare: error: "))
    return prefix


@shared_task(name="cxrstudy.prepare", bind=True)
def prepare_task(self, study_id: str) -> None:
    settings, store, coord = _context()
    doc = read_study(store, study_id)
    try:
        prefix = _run_prepare(doc["spec"], settings.store)
        if prefix != doc["data_prefix"]:
            raise CxrStudyError(
                f"the dataset changed between submit and prepare ({doc['data_prefix']} -> {prefix}); "
                "submit the study again"
            )
    except Exception as exc:  # every run depends on the shards: record the failure on each, report it
        for job in study_jobs(doc):
            if not store.exists(job.keys.result):
                write_error(store, job, f"{type(exc).__name__}: {exc}", final=True, stage="prepare")
        _log(f"{study_id}: prepare failed: {exc}")
        maybe_aggregate(self.app, store, coord, study_id, settings.stale_after)
        return
    pending = [j.job_id for j in study_jobs(doc) if run_state(store, j).state not in TERMINAL]
    enqueue_train(self.app, study_id, pending)
    _log(f"{study_id}: shards ready; {len(pending)} train jobs enqueued")


@shared_task(name="cxrstudy.aggregate", bind=True)
def aggregate_task(self, study_id: str) -> None:
    from jobs import aggregate

    _, store, _ = _context()
    aggregate.run(study_id, store, log=_log)


class Monitor:
    """Heartbeat, progress, cancel checks and SIGTERM for one running job (in the pool's child)."""

    def __init__(self, settings, store, coord, job, owner: str, task_id: str):
        self.settings, self.store, self.coord, self.job, self.owner = settings, store, coord, job, owner
        self.task_id = task_id
        self.reason: str | None = None  # sigterm | cancel | lost
        self.progress = {"state": "running", "worker": owner, "started": time.time()}
        self._last_write = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="cxrstudy-heartbeat", daemon=True)

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._thread.start()
        self.write({"epoch": 0, "epochs": self.job.training.epochs, "step": 0})
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.write({"state": "ended"})
        signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        interval = self.settings.lease_ttl / 3
        self.coord.extend_visibility(self.task_id)
        while not self._stop.wait(interval):
            try:
                if not self.coord.heartbeat(self.job.job_id, self.owner, self.settings.lease_ttl):
                    self.reason = "lost"
                    return
                self.coord.extend_visibility(self.task_id)
                self.write({}, force=False)  # fresh while evaluating too: stale means the process died
            except Exception as exc:  # the broker is briefly away: the TTL covers a few misses
                _log(f"{self.job.job_id}: heartbeat failed ({type(exc).__name__}: {exc})")

    def _on_sigterm(self, signum, frame) -> None:
        if self.reason is None:
            self.reason = "sigterm"
            _log(f"{self.job.job_id}: SIGTERM: checkpointing and requeueing")
            grace = self.settings.sigterm_grace
            timer = threading.Timer(max(grace - 5, grace * 0.8), self._out_of_grace)
            timer.daemon = True
            timer.start()

    def _out_of_grace(self) -> None:
        # The step in progress did not end in time (a long evaluation): exit now. The parent
        # rejects the message (task_reject_on_worker_lost) and another worker resumes from last.pt.
        _log(f"{self.job.job_id}: SIGTERM grace is nearly over; exiting without a new checkpoint")
        self.coord.attempts(self.job.job_id, -1)
        self.coord.release(self.job.job_id, self.owner)
        os._exit(143)

    def write(self, fields: dict, force: bool = True) -> None:
        with self._lock:
            now = time.time()
            if not force and now - self._last_write < self.settings.progress_interval:
                return
            self._last_write = now
            self.progress.update(fields, updated=now)
            self.store.put_text(self.job.keys.progress, json.dumps(self.progress))
        if self.reason is None and self.store.exists(layout.cancel_key(self.job.study_id)):
            self.reason = "cancel"

    def on_step(self, p: dict) -> str | None:
        self.write(p, force=False)
        if self.reason == "lost":
            return "abandon"
        return "checkpoint" if self.reason else None

    def on_epoch(self, record: dict) -> None:
        self.write({"step": 0, "last_epoch": record["epoch"], "val_auroc": record["val_avg_auroc"]})


@shared_task(name="cxrstudy.train", bind=True)
def train_task(self, study_id: str, job_id: str) -> None:
    settings, store, coord = _context()
    coord.extend_visibility(self.request.id)  # first thing: child start-up can take seconds
    doc = read_study(store, study_id)
    job = next((j for j in study_jobs(doc) if j.job_id == job_id), None)
    if job is None:
        raise CxrStudyError(f"study {study_id} has no job {job_id!r}")
    stale = settings.stale_after
    try:
        state = run_state(store, job, stale_after=0)
        if state.state in TERMINAL:
            _log(f"{job_id}: already {state.state}; nothing to do")
            return
        if store.exists(layout.cancel_key(study_id)):
            write_cancelled(store, job)
            _log(f"{job_id}: study cancelled; not started")
            return
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        holder = coord.acquire(job_id, owner, settings.lease_ttl)
        if holder is not None:
            _log(f"{job_id}: running on {holder} (lease held); this copy is dropped")
            return
        try:
            _train(self, settings, store, coord, job, owner)
        finally:
            coord.release(job_id, owner)
    finally:
        maybe_aggregate(self.app, store, coord, study_id, stale)


def _train(task, settings, store, coord, job, owner) -> None:
    attempt = coord.attempts(job.job_id, 1)
    if attempt > settings.max_attempts:
        last = read_json(store, job.keys.error) or {}
        write_error(
            store,
            job,
            last.get("error", "the worker died on every attempt (killed, out of memory?)"),
            final=True,
            attempts=attempt - 1,
            max_attempts=settings.max_attempts,
            traceback=last.get("traceback"),
            worker=last.get("worker"),
        )
        _log(f"{job.job_id}: failed after {attempt - 1} attempts; recorded as failed")
        return
    _log(f"{job.job_id}: attempt {attempt}/{settings.max_attempts} on {owner}")
    try:
        with Monitor(settings, store, coord, job, owner, task.request.id) as monitor:
            from jobs import train  # torch: only in the child process, under the heartbeat

            result = train.run(job, store, log=_log, on_step=monitor.on_step, on_epoch=monitor.on_epoch)
    except Exception as exc:
        final = attempt >= settings.max_attempts
        write_error(
            store,
            job,
            f"{type(exc).__name__}: {exc}",
            final=final,
            attempts=attempt,
            max_attempts=settings.max_attempts,
            traceback=traceback.format_exc(),
            worker=owner,
        )
        _log(f"{job.job_id}: attempt {attempt} failed: {type(exc).__name__}: {exc}")
        if not final:
            coord.release(job.job_id, owner)
            raise Reject(f"attempt {attempt} failed", requeue=True) from None
        return
    if result is not None:
        return
    if monitor.reason == "cancel":
        write_cancelled(store, job)
        _log(f"{job.job_id}: cancelled")
    elif monitor.reason == "sigterm":
        coord.attempts(job.job_id, -1)  # an eviction is not a failure
        coord.release(job.job_id, owner)
        raise Reject("SIGTERM: checkpointed; requeued", requeue=True)
    elif monitor.reason == "lost":
        _log(f"{job.job_id}: lost its lease to {coord.holder(job.job_id)}; stopped without writing")


@worker_shutting_down.connect
def _forward_sigterm(sig=None, how=None, exitcode=None, **_):
    """Kubernetes signals PID 1 only: pass SIGTERM on to the pool's children running jobs."""
    import billiard.process

    for child in billiard.process.active_children():
        try:
            os.kill(child.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
