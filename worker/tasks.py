"""The Celery tasks: thin shells over ``jobs`` with small JSON arguments (ids, never pickles).

``cxrstudy.prepare(study_id, data_prefix)``  (cpu) plans one of the study's datasets (one per distinct
    preprocessing of its variants) and enqueues one task per shard
``cxrstudy.prepare_shard(study_id, shard, data_prefix)``  (cpu) one shard; the last writes the manifest
    and enqueues the train jobs of the runs on that dataset
``cxrstudy.train(study_id, job_id)``  (gpu) one run, under a lease; the last run to end fans in
``cxrstudy.aggregate(study_id)``  (cpu) the report; idempotent
``cxrstudy.ping(sent)``  (any) logs its delay from enqueue to start: a probe of the queue

A train job's life: skip if it already has a terminal file; take the lease and its fencing token
(a copy of a job that another worker holds is dropped) and record the token in the store; stop
at once if the study is cancelled; count the attempt (past ``max_attempts`` it is recorded as
failed); train with a heartbeat that renews the lease and keeps the message invisible, progress
written to the store, and a SIGTERM handler that checkpoints and requeues. Every write of the job
goes through the fenced store (``worker.running``): a worker that lost the job stops at its next
write. Torch is imported inside the task, in the pool's child process, so the parent never
initialises CUDA.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import traceback
import uuid

from celery import current_app, shared_task
from celery.exceptions import Reject, Retry
from celery.signals import worker_shutting_down
from celery.utils.log import get_task_logger

from jobs.errors import (
    BrokerUnreachable,
    ConfigError,
    CxrStudyError,
    DamagedArtifact,
    DatasetError,
    LeaseLost,
    PredictionsError,
    StudyFileError,
)
from jobs.store import layout, open_store
from jobs.store.records import (
    TERMINAL,
    clear_aggregate_error,
    may_have_ended,
    read_json,
    read_study,
    report_covers,
    run_state,
    study_datasets,
    study_jobs,
    study_snapshot,
    write_aggregate_error,
    write_cancelled,
    write_error,
)
from worker.coord import open_coord
from worker.running import JobLease, Monitor, children_allowed, take_lease

# The worker's parent process imports this module: it must not import torch, so ``jobs.train`` and
# ``jobs.aggregate`` are imported inside the tasks, in the pool's child.

log_ = get_task_logger("cxrstudy")

# Errors of the user's making: a bad setting or dataset, a damaged shard or checkpoint. Another
# attempt would fail the same way, so the first one is final and its error.json says what to fix.
FINAL_ERRORS = (ConfigError, DatasetError, StudyFileError, PredictionsError, DamagedArtifact)


def _log(message: str) -> None:
    log_.info(message)


def _context():
    settings = current_app.cxrstudy_settings.need("broker_url", "store")
    store = open_store(settings.store)
    return settings, store, open_coord(settings.broker_url, store.uri)


def enqueue_train(app, study_id: str, job_ids: list[str]) -> None:
    for job_id in job_ids:
        app.send_task("cxrstudy.train", kwargs={"study_id": study_id, "job_id": job_id}, queue="gpu")


AGGREGATE_CLAIM_TTL = 3600.0  # an aggregate job takes minutes; a claim whose job was lost lapses


def maybe_aggregate(app, store, coord, study_id: str, stale_after: float) -> bool:
    """Enqueue the aggregate job once, when every run has ended (succeeded, failed or cancelled)
    and the store holds no report of this ending yet.

    The store decides: a report that covers the runs' end states means there is nothing to do. The
    claim only keeps the workers that see the same ending at once from enqueueing it twice: it
    is scoped to this store, like every coordination key (two stores that share a broker each get
    their report), and to a digest of the end states (``resume`` re-ran failed runs: the new ending
    aggregates again). It lapses after an hour, should its job have been lost.
    """
    view = study_snapshot(store, study_id, prefetch=False)  # one listing ...
    jobs = study_jobs(read_study(view, study_id))
    if not all(may_have_ended(view, j) for j in jobs):  # ... rules out most calls: a run has no end file
        return False
    view.prefetch()
    states = [run_state(view, j, stale_after) for j in jobs]
    if not all(s.ended for s in states) or report_covers(view, study_id, states):
        return False
    if coord.claim(aggregate_claim(study_id, states), ttl=AGGREGATE_CLAIM_TTL):
        enqueue_aggregate(app, study_id)
        _log(f"{study_id}: every run has ended; aggregate enqueued")
        return True
    return False


def aggregate_claim(study_id: str, states) -> str:
    """The fan-in's claim key for one ending of a study: its runs' end states, digested."""
    ending = json.dumps(sorted((s.job.job_id, s.state) for s in states))
    return f"aggregate:{study_id}:{hashlib.sha256(ending.encode()).hexdigest()[:16]}"


def enqueue_aggregate(app, study_id: str) -> None:
    app.send_task("cxrstudy.aggregate", kwargs={"study_id": study_id}, queue="cpu")


def _run_prepare(spec: dict, preprocessing: dict, store_uri: str) -> str:
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
        json.dumps(preprocessing),
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
def prepare_task(self, study_id: str, data_prefix: str | None = None) -> None:
    """Plan one of the study's datasets (``data_prefix``; None: its first, as a message sent before
    variants existed means) and fan its shards out over the cpu queue (:mod:`jobs.data.fanout`); a
    dataset prepared before is checked against its manifest (damaged shards rebuilt) instead.
    Counted and retried like a train job: an error of the user's making fails the runs on that
    dataset at once, others are retried with backoff up to ``max_attempts``."""
    settings, store, coord = _context()
    doc = read_study(store, study_id)
    prefix = _dataset_of(doc, data_prefix)
    attempt = coord.attempts(prepare_attempts_key(study_id, prefix), 1)  # counted as it starts: a killed worker counts
    try:
        _attempts_left(settings, attempt, "prepare")
        _plan_and_fan_out(self.app, settings, store, coord, doc, prefix)
    except Exception as exc:
        _retry_or_fail(self, settings, store, coord, doc, prefix, exc, attempt, f"{study_id}: prepare of {prefix}")


def _dataset_of(doc: dict, data_prefix: str | None) -> str:
    """The dataset a prepare task names: one of the study's (a message naming another fails at once)."""
    prefix = data_prefix or doc["data_prefix"]
    if prefix not in study_datasets(doc):
        raise CxrStudyError(f"{doc['study_id']}: {prefix} is not one of the study's datasets; submit the study again")
    return prefix


def _plan_and_fan_out(app, settings, store, coord, doc: dict, prefix: str) -> None:
    from jobs.data import fanout
    from jobs.data.manifest import plan
    from jobs.spec.configs import PrepConfig
    from jobs.spec.schema import build

    study_id, spec, preprocessing = doc["study_id"], doc["spec"], study_datasets(doc)[prefix]
    if store.exists(layout.manifest_key(prefix)):
        _same_dataset(prefix, _run_prepare(spec, preprocessing, settings.store))
        _prepare_fan_in(app, store, coord, doc, prefix)
        return
    config = build(PrepConfig, preprocessing, "preprocessing")
    dataset, planned = plan(spec["dataset"]["location"], config, spec["dataset"]["id"], _log)
    _same_dataset(prefix, planned)
    names = fanout.write_plan(store, spec["dataset"]["location"], dataset, config, prefix)
    for name in names:  # a new plan: each shard's attempts start over
        key = shard_attempts_key(study_id, prefix, name)
        coord.attempts(key, -coord.attempts(key, 0))
    done = fanout.done_shards(store, prefix)
    pending = [name for name in names if name not in done]
    named = {} if prefix == doc["data_prefix"] else {"data_prefix": prefix}  # as send_prepare: the first unnamed
    for name in pending:
        app.send_task("cxrstudy.prepare_shard", kwargs={"study_id": study_id, "shard": name, **named}, queue="cpu")
    _log(f"{study_id}: prepare planned {len(names)} shards of {prefix}; {len(pending)} enqueued on the cpu queue")
    if not pending:
        _prepare_fan_in(app, store, coord, doc, prefix)


@shared_task(name="cxrstudy.prepare_shard", bind=True)
def prepare_shard_task(self, study_id: str, shard: str, data_prefix: str | None = None) -> None:
    """One shard of a fanned-out prepare; the task that writes the last one writes the manifest and
    enqueues the runs on that dataset. Idempotent: a shard already written with its digest is skipped."""
    from jobs.data import fanout

    settings, store, coord = _context()
    doc = read_study(store, study_id)
    prefix = _dataset_of(doc, data_prefix)
    attempt = coord.attempts(shard_attempts_key(study_id, prefix, shard), 1)
    started = time.monotonic()
    try:
        _attempts_left(settings, attempt, f"shard {shard}")
        fanout.build_planned_shard(store, prefix, shard, cpu_cores(), _log)
        index = fanout.read_plan(store, prefix)
        done = fanout.done_shards(store, prefix) & set(index["shards"])
        _log(
            f"{study_id}: shard {shard} of {prefix} ready in {time.monotonic() - started:.1f} s; "
            f"{len(done)}/{len(index['shards'])}"
        )
        if len(done) == len(index["shards"]):
            _prepare_fan_in(self.app, store, coord, doc, prefix, index)
    except Exception as exc:
        _retry_or_fail(self, settings, store, coord, doc, prefix, exc, attempt, f"{study_id}: shard {shard}")


def cpu_cores() -> int:
    """The cores this process may use (a pod's CPU set, not the node's)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def prepare_attempts_key(study_id: str, data_prefix: str) -> str:
    return f"prepare-attempts:{study_id}:{data_prefix}"


def shard_attempts_key(study_id: str, data_prefix: str, shard: str) -> str:
    return f"prepare-attempts:{study_id}:{data_prefix}:{shard}"


class AttemptsExhausted(CxrStudyError):
    """A task started more than ``max_attempts`` times (its worker died each time)."""


def _attempts_left(settings, attempt: int, what: str) -> None:
    if attempt > settings.max_attempts:
        raise AttemptsExhausted(f"{what} did not finish in {attempt - 1} attempts (its worker died each time?)")


def _retry_or_fail(
    task, settings, store, coord, doc: dict, prefix: str, exc: Exception, attempt: int, what: str
) -> None:
    """A failed prepare task: final (every run on the dataset fails, the report says why) for an error
    of the user's making or the last attempt; otherwise retried after the backoff."""
    delay = settings.retry_delay(attempt, random.random())
    if isinstance(exc, (*FINAL_ERRORS, AttemptsExhausted)) or attempt >= settings.max_attempts:
        try:
            _prepare_failed(task.app, settings, store, coord, doc, prefix, exc)
            return
        except Exception as unrecorded:  # the store is away too: try again later rather than lose it
            _log(f"{what}: the failure could not be recorded ({type(unrecorded).__name__}: {unrecorded})")
            _retry_later(task, delay, what)
    _log(f"{what}: attempt {attempt} failed ({type(exc).__name__}: {exc}); attempt {attempt + 1} in {delay:.1f} s")
    _retry_later(task, delay, what)


def _retry_later(task, delay: float, what: str) -> None:
    """Send the task again with a countdown (Celery's retry); when that message cannot be sent (the
    broker is away), leave this one unacknowledged for the broker to deliver again: never drop it."""
    try:
        task.retry(countdown=delay, max_retries=None)
    except Retry:
        raise
    except Exception as exc:
        _log(f"{what}: the retry could not be sent ({type(exc).__name__}: {exc}); the job goes back to the queue")
        raise Reject("the retry could not be sent; requeued", requeue=True) from None


PREPARE_CLAIM_TTL = 14 * 86400.0  # until resume drops it: a late copy of a shard task enqueues no run twice


def _prepare_fan_in(app, store, coord, doc: dict, prefix: str, index: dict | None = None) -> None:
    """Every shard of one dataset is written: the manifest (once), then the runs on it (once per study
    and dataset). A fan-in that fails gives its claim back, so the retry of its task can do it."""
    from jobs.data import fanout

    study_id = doc["study_id"]
    claim = prepare_claim(study_id, prefix)
    if not coord.claim(claim, ttl=PREPARE_CLAIM_TTL):
        return
    try:
        if not store.exists(layout.manifest_key(prefix)):
            fanout.finish(store, prefix, index or fanout.read_plan(store, prefix))
            _log(f"{study_id}: every shard is written; {store.url(layout.manifest_key(prefix))} written")
        _enqueue_runs(app, store, study_id, doc, prefix)
    except BaseException:
        coord.unclaim(claim)
        raise


def prepare_claim(study_id: str, prefix: str) -> str:
    """The claim of the task that writes a dataset's manifest and enqueues its runs (``resume`` drops it)."""
    return f"prepare:{study_id}:{prefix}"


def _same_dataset(expected: str, prefix: str) -> None:
    if prefix != expected:
        raise CxrStudyError(
            f"the dataset changed between submit and prepare ({expected} -> {prefix}); submit the study again"
        )


def _enqueue_runs(app, store, study_id: str, doc: dict, prefix: str) -> None:
    jobs = [j for j in study_jobs(doc) if j.data_prefix == prefix]
    pending = [j.job_id for j in jobs if run_state(store, j).state not in TERMINAL]
    enqueue_train(app, study_id, pending)
    _log(f"{study_id}: shards of {prefix} ready; {len(pending)} train jobs enqueued")


def _prepare_failed(app, settings, store, coord, doc: dict, prefix: str, exc: Exception) -> None:
    """A prepare that cannot finish fails every run on its dataset that has no result (the report says why)."""
    study_id = doc["study_id"]
    for job in study_jobs(doc):
        if job.data_prefix == prefix and not store.exists(job.keys.result):
            write_error(store, job, f"{type(exc).__name__}: {exc}", final=True, stage="prepare")
    _log(f"{study_id}: prepare failed: {exc}")
    maybe_aggregate(app, store, coord, study_id, settings.stale_after)


@shared_task(name="cxrstudy.ping")
def ping_task(sent: float) -> None:
    """A probe of the queue: logs how long after ``sent`` (the sender's ``time.time()``) it started.
    ``bench/cluster_bench.py`` measures the delay from enqueue to start with it."""
    _log(f"ping: started {(time.time() - sent) * 1000:.1f} ms after it was sent")


@shared_task(name="cxrstudy.aggregate", bind=True)
def aggregate_task(self, study_id: str) -> None:
    from jobs import aggregate

    _, store, _ = _context()
    clear_aggregate_error(store, study_id)
    try:
        aggregate.run(study_id, store, log=_log)
    except Exception as exc:  # `wait` and `status` show it; `resume` runs the aggregate again
        write_aggregate_error(store, study_id, f"{type(exc).__name__}: {exc}")
        raise


@shared_task(name="cxrstudy.train", bind=True)
def train_task(self, study_id: str, job_id: str) -> None:
    settings, store, coord = _context()
    coord.extend_visibility(self.request.id)  # first thing: child start-up can take seconds
    doc = read_study(store, study_id)
    job = next((j for j in study_jobs(doc) if j.job_id == job_id), None)
    if job is None:
        raise CxrStudyError(f"study {study_id} has no job {job_id!r}")
    try:
        state = run_state(store, job, stale_after=0)
        if state.state in TERMINAL:
            _log(f"{job_id}: already {state.state}; nothing to do")
            return
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        held = take_lease(coord, store, job, owner, settings.lease_ttl, _log)
        if held is None:
            _log(f"{job_id}: running on {coord.holder(job_id) or 'another worker'} (lease held); this copy is dropped")
            return
        try:
            _train(self, settings, held)
        except BrokerUnreachable as exc:
            _log(str(exc))
            raise Reject("the broker could not confirm the lease; requeued", requeue=True) from None
        except LeaseLost:
            _log(f"{job_id}: stopped: another worker holds the job; nothing was written after the loss")
        finally:
            _quietly(held.release, f"{job_id}: releasing the lease")
    finally:
        _quietly(lambda: maybe_aggregate(self.app, store, coord, study_id, settings.stale_after), "the fan-in")


def _quietly(fn, what: str) -> None:
    """Run ``fn``; log, do not raise, when it fails (the broker or the store is away): the task's
    own outcome, a requeue or a recorded error, must not be replaced by this one."""
    try:
        fn()
    except Exception as exc:
        _log(f"{what} failed ({type(exc).__name__}: {exc})")


def _train(task, settings, held: JobLease) -> None:
    """One attempt under a held lease. Every write goes through ``held.fenced``, so a worker that
    lost the lease raises :class:`LeaseLost` at its next write instead of writing. Whatever fails
    after the attempt is counted is recorded (final for errors of the user's making, or past
    ``max_attempts``) and otherwise retried after the backoff: a job is never dropped by an error."""
    coord, job, store = held.coord, held.job, held.fenced
    attempt = coord.attempts(job.job_id, 1)
    try:
        result, monitor = _attempt(task, settings, held, attempt)
    except LeaseLost:
        raise
    except Exception as exc:
        final = attempt >= settings.max_attempts or isinstance(exc, FINAL_ERRORS)
        delay = settings.retry_delay(attempt, random.random())
        _log(f"{job.job_id}: attempt {attempt} failed: {type(exc).__name__}: {exc}")
        try:
            write_error(
                store,
                job,
                f"{type(exc).__name__}: {exc}",
                final=final,
                attempts=attempt,
                max_attempts=settings.max_attempts,
                traceback=traceback.format_exc(),
                worker=held.lease.owner,
                retry_at=None if final else time.time() + delay,
            )
        except LeaseLost:
            raise
        except Exception as unrecorded:  # the store is away too: the next attempt records it
            _log(f"{job.job_id}: the failure could not be recorded ({type(unrecorded).__name__})")
            final = False
        if not final:
            held.release()
            _log(f"{job.job_id}: attempt {attempt + 1} in {delay:.1f} s (backoff)")
            _retry_later(task, delay, job.job_id)
        return
    if result is not None or monitor is None:
        return
    if held.lost:
        raise LeaseLost(job.job_id)
    if monitor.reason == "cancel":
        write_cancelled(store, job)
        _log(f"{job.job_id}: cancelled")
    elif monitor.reason == "sigterm":
        coord.attempts(job.job_id, -1)  # an eviction is not a failure
        held.release()
        raise Reject("SIGTERM: checkpointed; requeued", requeue=True)


def _attempt(task, settings, held: JobLease, attempt: int):
    """Record the token, look again, train. Returns (result or None, the monitor or None when no
    training started)."""
    job, store = held.job, held.fenced
    held.begin()
    if run_state(store, job, stale_after=0).ended:  # it ended between the first look and the lease
        _log(f"{job.job_id}: ended while this copy waited; nothing to do")
        return None, None
    if store.exists(layout.cancel_key(job.study_id)):
        write_cancelled(store, job)
        _log(f"{job.job_id}: study cancelled; not started")
        return None, None
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
        return None, None
    lease = held.lease
    _log(f"{job.job_id}: attempt {attempt}/{settings.max_attempts} on {lease.owner} (fencing token {lease.token})")
    with Monitor(settings, held.coord, held, task.request.id, _log) as monitor, children_allowed():
        from jobs import train  # torch: only in the child process, under the heartbeat

        hooks = {"on_step": monitor.on_step, "on_epoch": monitor.on_epoch}
        return train.run(job, store, log=_log, worker=lease.owner, attempt=attempt, **hooks), monitor


@worker_shutting_down.connect
def _forward_sigterm(sig=None, how=None, exitcode=None, **_):
    """Kubernetes signals PID 1 only: pass SIGTERM on to the pool's children running jobs."""
    import billiard.process

    for child in billiard.process.active_children():
        try:
            os.kill(child.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
