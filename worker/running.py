"""What runs beside one training job in the pool's child: its fenced lease and its monitor.

:class:`JobLease` is the lease of the job, checked before every write the job makes to the store
(:class:`jobs.store.fencing.FencedStore`) and renewed by the heartbeat. :class:`Monitor` is the
heartbeat thread, the progress file, the cancel check and the SIGTERM handler.
:func:`children_allowed` lets the job start its loader's worker processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from jobs.errors import BrokerUnreachable, DamagedArtifact, LeaseLost
from jobs.spec.runs import JobSpec
from jobs.store import Store, layout
from jobs.store.fencing import FencedStore
from jobs.store.records import read_json, utc_timestamp
from worker.coord import HELD, LOST, VANISHED, Coordinator, Lease


@contextmanager
def children_allowed() -> Iterator[None]:
    """Let this process start processes while the block runs, though it is a pool child.

    Celery's pool children are daemonic, and Python refuses a daemonic process children
    (``AssertionError: daemonic processes are not allowed to have children``); and their authkey
    is billiard's, which Python's spawn cannot pickle. So a run with ``training.num_workers`` > 0
    failed on a worker. Here the flag is lifted and the key given Python's type for the block, then
    both are put back (billiard makes its process object Python's current one, so the two share
    this config). The loader's workers are daemonic processes of their own, stopped when the run
    ends (and when this process dies: they watch their parent), so nothing is left behind.
    """
    config = multiprocessing.current_process()._config
    saved = dict(config)
    config["daemon"] = False
    if isinstance(config.get("authkey"), bytes):
        config["authkey"] = multiprocessing.process.AuthenticationString(bytes(config["authkey"]))
    try:
        yield
    finally:
        config.clear()
        config.update(saved)


def fence_token(store: Store, job: JobSpec) -> int | None:
    """The last fencing token recorded for the job in the store; None when there is none, and -1
    when ``fence.json`` cannot be read (never equal to a holder's token)."""
    try:
        record = read_json(store, job.keys.fence)
    except DamagedArtifact:
        return -1
    return None if record is None else int(record.get("token", -1))


def take_lease(
    coord: Coordinator, store: Store, job: JobSpec, owner: str, ttl: float, log: Callable
) -> JobLease | None:
    """Acquire the job with a token above every token the store has seen; None when another holds it."""
    lease = coord.acquire(job.job_id, owner, ttl, floor=fence_token(store, job) or 0)
    return None if lease is None else JobLease(coord, store, job, lease, ttl, log)


class JobLease:
    """A held lease and its fencing token: :meth:`check` before each write, :meth:`renew` on a heartbeat.

    Once lost, always lost: the job stops at its next write or step, and writes nothing more.
    A lease that vanished with nobody acquiring the job since (Redis flushed, or this worker's
    heartbeat was late) is taken back, unless the store says otherwise: the run has ended, or
    ``fence.json`` names a later token (Redis was flushed after another worker acquired the job).
    """

    def __init__(self, coord: Coordinator, store: Store, job: JobSpec, lease: Lease, ttl: float, log: Callable):
        self.coord, self.store, self.job, self.lease, self.ttl, self.log = coord, store, job, lease, ttl, log
        self.lost = False
        self.unconfirmed = False  # the broker was away too long: stop, requeue
        self.patience = 5 * ttl
        self._renewed = time.monotonic()
        self._lock = threading.Lock()
        self.fenced = FencedStore(store, self.check)

    def begin(self) -> None:
        """Record this acquisition's token in the store: the first write of every attempt."""
        record = {"token": self.lease.token, "owner": self.lease.owner, "acquired": utc_timestamp()}
        self.fenced.put_text(self.job.keys.fence, json.dumps(record))

    def renew(self) -> bool:
        """Renew the lease; False (and lost for good) when another worker acquired the job."""
        with self._lock:
            if self.lost:
                return False
            state = self.coord.renew(self.lease, self.ttl)
            if state == VANISHED:
                state = self._retake()
            if state != HELD:
                self.lost = True
                holder = self.coord.holder(self.job.job_id) or "a worker that has since released it"
                token = self.lease.token
                self.log(f"{self.job.job_id}: lost its lease (token {token}) to {holder}; writing nothing more")
                return False
            self._renewed = time.monotonic()
            return True

    def _retake(self) -> str:
        keys = self.job.keys
        if any(self.store.exists(k) for k in (keys.result, keys.cancelled)):
            return LOST
        if fence_token(self.store, self.job) not in (None, self.lease.token):
            return LOST
        return HELD if self.coord.retake(self.lease, self.ttl) else LOST

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless the lease is held now (renewing it).

        When the broker cannot be asked, a write still goes ahead while the last renewal is less
        than half a TTL old (no other worker can have acquired the job before it expires); after
        that the write waits for the broker, up to ``patience`` seconds, then raises
        :class:`BrokerUnreachable`: the job stops without writing and is requeued.
        """
        if self.unconfirmed:
            raise BrokerUnreachable(f"{self.job.job_id}: the broker could not confirm the lease")
        deadline = time.monotonic() + self.patience
        while True:
            try:
                held = self.renew()
                break
            except Exception as exc:
                if time.monotonic() - self._renewed < self.ttl / 2:
                    return
                if time.monotonic() > deadline:
                    self.unconfirmed = True
                    raise BrokerUnreachable(
                        f"{self.job.job_id}: the lease could not be renewed for {self.patience:.0f}s "
                        f"({type(exc).__name__}: {exc}); stopping without writing, to be requeued"
                    ) from None
                time.sleep(min(2.0, self.ttl / 6))
        if not held:
            raise LeaseLost(f"{self.job.job_id}: this worker lost the job's lease to another worker")

    def release(self) -> None:
        self.coord.release(self.lease)


class Monitor:
    """Heartbeat, progress, cancel checks and SIGTERM for one running job."""

    def __init__(self, settings, coord: Coordinator, lease: JobLease, task_id: str, log: Callable[[str], None]):
        self.settings, self.coord, self.lease, self.task_id, self.log = settings, coord, lease, task_id, log
        self.job, self.store = lease.job, lease.fenced
        self.reason: str | None = None  # sigterm | cancel
        self.progress = {"state": "running", "worker": lease.lease.owner, "started": time.time()}
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
        try:
            if not (self.lease.lost or self.lease.unconfirmed):
                self.write({"state": "ended"})
        except LeaseLost:
            pass
        except Exception as failed:  # the store is away: the progress file goes stale, which says the same
            self.log(f"{self.job.job_id}: the last progress write failed ({type(failed).__name__})")
        finally:  # the job's SIGTERM handler never outlives it, whatever happened
            signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)
            self._thread.join(timeout=5)

    def _beat(self) -> None:
        interval = self.settings.lease_ttl / 3
        self.coord.extend_visibility(self.task_id)
        while not self._stop.wait(interval):
            try:
                if not self.lease.renew():
                    return
                self.coord.extend_visibility(self.task_id)
                self.write({}, force=False)  # fresh while evaluating too: stale means the process died
            except LeaseLost:
                return
            except Exception as exc:  # the broker is briefly away: the TTL covers a few misses
                self.log(f"{self.job.job_id}: heartbeat failed ({type(exc).__name__}: {exc})")

    def _on_sigterm(self, signum, frame) -> None:
        if self.reason is None:
            self.reason = "sigterm"
            self.log(f"{self.job.job_id}: SIGTERM: checkpointing and requeueing")
            grace = self.settings.sigterm_grace
            timer = threading.Timer(max(grace - 5, grace * 0.8), self._out_of_grace)
            timer.daemon = True
            timer.start()

    def _out_of_grace(self) -> None:
        # The step in progress did not end in time (a long evaluation): exit now. The parent
        # rejects the message (task_reject_on_worker_lost) and another worker resumes from last.pt.
        self.log(f"{self.job.job_id}: SIGTERM grace is nearly over; exiting without a new checkpoint")
        self.coord.attempts(self.job.job_id, -1)
        self.lease.release()
        os._exit(143)

    def write(self, fields: dict, force: bool = True) -> None:
        """Update ``progress.json`` (at most every progress interval unless ``force``); check for cancel."""
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
        if self.lease.lost:
            return "abandon"
        self.write(p, force=False)
        return "checkpoint" if self.reason else None

    def on_epoch(self, record: dict) -> None:
        self.write({"step": 0, "last_epoch": record["epoch"], "val_auroc": record["val_avg_auroc"]})
