"""Submit, watch, cancel and resume studies that run on Celery workers.

The store is the source of truth (``study.json``, each run's result / error / progress files); the
queue only carries work. Every command here reads state from the store, so a wiped Redis loses no
finished run, and ``resume`` rebuilds the queue from what the store says is missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from jobs.errors import CxrStudyError, DamagedArtifact, StoreError
from jobs.spec.study import Study
from jobs.store import Store, layout, open_store
from jobs.store.records import (
    SUCCEEDED,
    RunState,
    clear_aggregate_error,
    clear_ending,
    read_aggregate_error,
    read_study,
    report_covers,
    run_state,
    study_datasets,
    study_ids,
    study_jobs,
    study_snapshot,
    study_states,
    utc_timestamp,
)
from jobs.store.snapshot import Snapshot
from orchestrator.status import cache_file, render_status, report_state, rows_of, run_label, state_counts
from orchestrator.submission import register
from worker.coord import open_coord
from worker.settings import Settings


def make_app(settings: Settings):
    """The Celery app, to send tasks: imported here, as ``status`` and ``wait`` never send one."""
    from worker.app import make_app as app_of

    return app_of(settings)


def manifest_exists(store: Store, data_prefix: str) -> bool:
    from jobs.data.manifest import manifest_exists as exists  # numpy: only for submit and resume

    return exists(store, data_prefix)


def send_prepare(app, sid: str, data_prefix: str, first: str) -> None:
    """Enqueue the prepare of one of the study's datasets (its runs follow once its shards are written).
    The study's first dataset (``first``, study.json's ``data_prefix``) is not named: the message of a study
    without variants stays what workers from before variants take."""
    kwargs = {"study_id": sid} if data_prefix == first else {"study_id": sid, "data_prefix": data_prefix}
    app.send_task("cxrstudy.prepare", kwargs=kwargs, queue="cpu")


def connect(settings: Settings) -> tuple[Store, object]:
    """The store and the coordinator, both checked, with one-line errors naming the setting to fix."""
    settings.need("broker_url", "store")
    store = open_store(settings.store)
    coord = open_coord(settings.broker_url, store.uri)  # scoped to the store, as the workers' is
    coord.ping()
    try:
        store.exists(layout.study_key(".probe"))
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"cannot reach the store {settings.store} ({type(exc).__name__}: {exc})") from None
    return store, coord


def submit(study: Study, settings: Settings, log: Callable[[str], None] = print) -> str:
    """Validate, expand, write study.json, enqueue. Returns the study id."""
    store, _ = connect(settings)
    registered = register(study, store, log)
    sid, jobs = registered.study_id, registered.jobs
    if store.exists(layout.cancel_key(sid)):
        store.delete(layout.cancel_key(sid))
    app = make_app(settings)
    for data_prefix in registered.datasets:  # each prepared dataset: its runs now, or its prepare first
        jobs = registered.jobs_on(data_prefix)
        where = f" on {data_prefix}" if len(registered.datasets) > 1 else ""
        if manifest_exists(store, data_prefix):
            from worker.tasks import enqueue_train

            pending = [j.job_id for j in jobs if not run_state(store, j).ended]
            enqueue_train(app, sid, pending)
            log(f"study {sid}: shards exist{where}; {len(pending)} of {len(jobs)} runs enqueued on the gpu queue")
        else:
            send_prepare(app, sid, data_prefix, registered.jobs[0].data_prefix)
            log(f"study {sid}: prepare{where} enqueued on the cpu queue; its {len(jobs)} runs follow")
    return sid


def status(sid: str, settings: Settings, as_json: bool = False) -> str:
    """The study's status: one listing of its folder, reads only of records that changed since the
    last ``status`` on this machine (:func:`orchestrator.status.cache_file`)."""
    store, coord = connect(settings)
    view = study_snapshot(store, sid, cache_file(store, sid))
    doc, states = study_states(view, sid, settings.stale_after)
    return render_status(view, sid, doc, states, coord.queue_depths(), as_json)


def report_ready(store: Store, sid: str, stale_after: float) -> bool:
    """The report exists and was written after every run ended."""
    view = study_snapshot(store, sid)
    _, states = study_states(view, sid, stale_after)
    return report_covers(view, sid, states)


class FanInWatch:
    """What ``wait`` does when every run has ended and no report follows, so it never waits forever.

    The workers enqueue the aggregate job when the last run ends. Should that message be lost (a
    flushed broker, a worker killed between the claim and the send), ``wait`` runs the same fan-in
    itself every ``grace`` seconds: it enqueues the job once the workers' claim is gone or has
    lapsed. It says so when the job sits in the cpu queue, and a failed aggregate job ends the wait
    with its error and what to do.
    """

    def __init__(self, settings: Settings, store: Store, coord, sid: str, grace: float, log: Callable[[str], None]):
        self.settings, self.store, self.coord, self.sid, self.grace, self.log = settings, store, coord, sid, grace, log
        self.ended_at: float | None = None
        self.tried_at: float | None = None
        self.warned = False

    def check(self, states: list[RunState], view: Store) -> None:
        """``states`` and ``view``: this poll's look at the study (:func:`study_snapshot`)."""
        sid = self.sid
        if not all(s.ended for s in states):
            self.ended_at = self.tried_at = None
            return
        error = read_aggregate_error(view, sid)
        if error is not None:
            raise CxrStudyError(
                f"study {sid}: every run has ended but the aggregate job failed ({error}); "
                f"fix that, then `cxrstudy resume {sid}` writes the report"
            )
        now = time.monotonic()
        self.ended_at = self.ended_at or now
        if now - self.ended_at < self.grace or (self.tried_at and now - self.tried_at < self.grace):
            return
        from worker.tasks import maybe_aggregate

        if maybe_aggregate(make_app(self.settings), self.store, self.coord, sid, self.settings.stale_after):
            self.log(f"study {sid}: every run has ended and no report followed; the aggregate job is enqueued")
        elif self.tried_at and not self.warned and (depth := self.coord.queue_depths()["cpu"]):
            self.log(
                f"study {sid}: every run has ended; the report waits on the cpu queue ({depth} jobs in it): "
                "is a worker serving it? (`cxrstudy worker --queues cpu`, or the chart's cpu workers)"
            )
            self.warned = True
        self.tried_at = now


class LostRunWatch:
    """What ``wait`` does for a run whose job message is gone, so it never waits forever on one.

    A run that has not ended and is not running, whose job no worker holds and whose train message
    the broker does not hold either (in a queue, or delivered and not acknowledged: running, or
    waiting out a retry's countdown; ``retry_at`` in its ``error.json`` not yet ``grace`` seconds
    past), for ``grace`` seconds in a row while its dataset is prepared, has lost its message: Redis
    killed while it held the message (seen in the chaos test; the cause in kombu's Redis transport is
    not pinned down), or a prepare whose last task died before it enqueued the runs. ``wait``
    enqueues it again (a copy that finds the job held or ended does nothing) and says so.
    """

    def __init__(self, settings: Settings, coord, sid: str, grace: float, log: Callable[[str], None]):
        self.settings, self.coord, self.sid, self.grace, self.log = settings, coord, sid, grace, log
        self.missing_since: dict[str, float] = {}
        self.checked_at = 0.0

    def check(self, doc: dict, states: list[RunState], view: Store) -> None:
        now = time.monotonic()
        if now - self.checked_at < min(self.grace / 4, 30.0):
            return
        self.checked_at = now
        pending = [s for s in states if not s.ended and s.state != "running"]
        ids = {s.job.job_id for s in pending}
        self.missing_since = {k: t for k, t in self.missing_since.items() if k in ids}  # pending without a break
        prepared = {p for p in {s.job.data_prefix for s in pending} if view.exists(layout.manifest_key(p))}
        pending = [s for s in pending if s.job.data_prefix in prepared]  # the others wait on their prepare
        if not pending:
            self.missing_since.clear()
            return
        present = self.coord.queued_jobs()
        lost = []
        for s in pending:
            job_id, due = s.job.job_id, s.detail.get("retry_at") if s.state == "retrying" else None
            waiting = isinstance(due, (int, float)) and due + self.grace > time.time()  # a retry's countdown
            if job_id in present or waiting or self.coord.holder(job_id):
                self.missing_since.pop(job_id, None)
            elif now - self.missing_since.setdefault(job_id, now) >= self.grace:
                lost.append(job_id)
                del self.missing_since[job_id]
        if lost:
            from worker.tasks import enqueue_train

            enqueue_train(make_app(self.settings), self.sid, lost)
            self.log(
                f"study {self.sid}: {len(lost)} run(s) had no job message in the broker and no worker for "
                f"{self.grace:.0f} s (lost by the broker?); enqueued again: {', '.join(lost)}"
            )


def _transient_errors() -> tuple[type[BaseException], ...]:
    """What a poll of ``wait`` survives: the store or the broker away for a while."""
    import redis
    from kombu.exceptions import OperationalError

    return (StoreError, redis.RedisError, OperationalError, ConnectionError, TimeoutError)


def wait(
    sid: str,
    settings: Settings,
    log: Callable[[str], None] = print,
    poll: float = 2.0,
    timeout: float | None = None,
    compact: bool = False,
    aggregate_grace: float = 60.0,
    lost_grace: float | None = None,
) -> None:
    """Show progress until the study's report covers every run's end state.

    ``compact`` prints one line per change of a run (state, epoch) instead of the whole table. The
    store or the broker being away for a while (a restart) is said once and waited out.
    """
    store, coord = connect(settings)
    watch = _Watch(settings, store, coord, sid, compact, log)
    watch.fan_in = FanInWatch(settings, store, coord, sid, aggregate_grace, log)
    watch.lost = LostRunWatch(settings, coord, sid, lost_grace or settings.visibility_timeout + 30, log)
    started, away, transient = time.monotonic(), False, _transient_errors()
    while True:
        try:
            if watch.poll():
                return
            if away:
                log(f"study {sid}: the store and the broker answer again")
                away = False
        except transient as exc:
            if not away:
                log(f"study {sid}: {type(exc).__name__}: {exc}; still watching (every {poll:.0f} s)")
                away = True
        if timeout and time.monotonic() - started > timeout:
            raise CxrStudyError(f"study {sid}: no report after {timeout:.0f}s; `cxrstudy status {sid}` shows why")
        time.sleep(poll)


class _Watch:
    """One study watched by ``wait``: each poll is one listing of its folder and reads only of the
    records that changed (:class:`Snapshot`)."""

    fan_in: FanInWatch
    lost: LostRunWatch

    def __init__(self, settings: Settings, store: Store, coord, sid: str, compact: bool, log):
        self.settings, self.coord, self.sid, self.compact, self.log = settings, coord, sid, compact, log
        self.view = Snapshot(store, layout.study_folder(sid), cache_file(store, sid))
        self.last_text: str | None = None
        self.last_rows: dict[str, tuple] = {}

    def poll(self) -> bool:
        """Show what changed; True when the report covers every run's end state."""
        sid, view = self.sid, self.view
        view.refresh()
        doc, states = study_states(view, sid, self.settings.stale_after)
        if self.compact:
            for r in rows_of(states):
                key = (r["state"], r["epoch"])
                if self.last_rows.get(r["job_id"]) != key:
                    self.last_rows[r["job_id"]] = key
                    auroc = "" if r["val_auroc"] is None else f" val AUROC {r['val_auroc']:.4f}"
                    epoch = f" epoch {r['epoch']}" if r["epoch"] else ""
                    self.log(f"{sid}: {run_label(r)} seed {r['seed']}: {r['state']}{epoch}{auroc}")
        else:
            text = render_status(view, sid, doc, states, self.coord.queue_depths(), False)
            if text != self.last_text:
                self.log(text)
                self.last_text = text
        if report_covers(view, sid, states):
            return True
        self.fan_in.check(states, view)
        self.lost.check(doc, states, view)
        return False


def results(sid: str, settings: Settings, out: str | None) -> str:
    store = open_store(settings.need("store").store)
    read_study(store, sid)
    key = layout.report_markdown_key(sid)
    if not store.exists(key):
        raise CxrStudyError(f"study {sid} has no report yet; `cxrstudy status {sid}` shows its runs")
    if out:
        dest = Path(out)
        dest.mkdir(parents=True, exist_ok=True)
        prefix = layout.report_prefix(sid)
        for obj in store.list(prefix):
            rel = obj.key[len(prefix) :]
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(store.get_bytes(obj.key))
    return store.get_text(key)


def cancel(sid: str, settings: Settings) -> str:
    store, _ = connect(settings)
    read_study(store, sid)
    store.put_text(layout.cancel_key(sid), json.dumps({"cancelled": utc_timestamp()}))
    return f"study {sid}: cancel requested; running runs stop within one epoch, queued runs will not start"


def resume(sid: str, settings: Settings) -> str:
    """Enqueue again every run without a readable result.json (failed and cancelled ones too; a
    damaged result.json is removed)."""
    store, coord = connect(settings)
    doc = read_study(store, sid)
    if store.exists(layout.cancel_key(sid)):
        store.delete(layout.cancel_key(sid))
    clear_aggregate_error(store, sid)
    app = make_app(settings)
    from worker.tasks import (
        aggregate_claim,
        enqueue_aggregate,
        enqueue_train,
        prepare_attempts_key,
        prepare_claim,
    )

    states = [run_state(store, job, settings.stale_after) for job in study_jobs(doc)]
    if all(s.ended for s in states):  # the runs re-run may end as before: that ending may fan in again
        coord.unclaim(aggregate_claim(sid, states))
    pending = []
    for state in states:  # every run without a result starts over: its ending removed, its attempts zero
        job = state.job
        if state.state == SUCCEEDED:
            continue
        clear_ending(store, job)
        coord.attempts(job.job_id, -coord.attempts(job.job_id, 0))
        pending.append(job.job_id)
    unprepared = [p for p in study_datasets(doc) if not manifest_exists(store, p)]
    for data_prefix in unprepared:  # a failed or lost prepare: it runs again, then its runs
        key = prepare_attempts_key(sid, data_prefix)
        coord.attempts(key, -coord.attempts(key, 0))
        coord.unclaim(prepare_claim(sid, data_prefix))  # a fan-in whose worker died before the manifest
        send_prepare(app, sid, data_prefix, doc["data_prefix"])
    if unprepared:
        held = {j.job_id for j in study_jobs(doc) if j.data_prefix in unprepared}
        ready = [j for j in pending if j not in held]
        enqueue_train(app, sid, ready)
        if len(unprepared) == len(study_datasets(doc)):
            return f"study {sid}: no shards yet; prepare enqueued again (then its {len(pending)} runs)"
        return (
            f"study {sid}: {len(unprepared)} of its {len(study_datasets(doc))} datasets have no shards yet; their "
            f"prepare enqueued again (then their {len(pending) - len(ready)} runs); {len(ready)} runs enqueued again"
        )
    enqueue_train(app, sid, pending)
    if not pending:
        if not report_ready(store, sid, settings.stale_after):
            enqueue_aggregate(app, sid)
            return f"study {sid}: every run has a result; the aggregate job is enqueued"
        return f"study {sid}: every run has a result and the report covers them; nothing to resume"
    return f"study {sid}: {len(pending)} runs enqueued again"


def list_studies(settings: Settings) -> str:
    store = open_store(settings.need("store").store)
    ids = study_ids(store)
    if not ids:
        return f"no studies in {store.url(layout.STUDIES)}"
    lines = []
    for sid in ids:
        try:
            view = study_snapshot(store, sid, cache_file(store, sid))
            doc, states = study_states(view, sid, settings.stale_after)
        except DamagedArtifact as exc:  # one damaged study.json hides no other study
            lines.append(f"{sid}  [damaged] {exc}")
            continue
        report = {"ready": "report", "stale": "report (out of date)", "failed": "report failed"}.get(
            report_state(view, sid, states)[0], ""
        )
        lines.append(f"{sid}  {doc['submitted']}  {state_counts(s.state for s in states)}  {report}".rstrip())
    return "\n".join(lines)


CPU_TASKS_PER_CHILD = 50


def worker_command(queues: str, name: str | None = None, loglevel: str = "INFO") -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.app:app",
        "worker",
        "-Q",
        queues,
        "--concurrency",
        "1",
        "--prefetch-multiplier",
        "1",
        # A GPU job gets a fresh child (CUDA initialised there, its memory returned at exit); CPU tasks
        # (a prepare's shards, aggregates) reuse theirs: a new child costs seconds per task.
        "--max-tasks-per-child",
        "1" if "gpu" in queues.split(",") else str(CPU_TASKS_PER_CHILD),
        "-O",
        "fair",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        loglevel,
    ]
    if name:
        cmd += ["-n", name]
    return cmd


def start_workers(settings: Settings, count: int, queues: str, log_dir: Path) -> list[subprocess.Popen]:
    env = {**os.environ, **settings.env()}
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(count):
        with open(log_dir / f"worker-{i}.log", "ab") as fh:
            procs.append(
                subprocess.Popen(
                    worker_command(queues, f"w{i}-{os.getpid()}@%h"),
                    env=env,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    return procs


def stop_workers(procs: list[subprocess.Popen], timeout: float = 30) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
