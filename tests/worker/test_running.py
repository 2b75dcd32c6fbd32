"""A running job's fenced lease: a worker that lost the job writes nothing, whatever woke it."""

from __future__ import annotations

import json
import time

import pytest

from jobs.errors import BrokerUnreachable, LeaseLost
from jobs.spec.study import expand, parse_study
from jobs.store import LocalStore
from jobs.store.records import write_result
from worker.coord import HELD, FileCoord
from worker.running import JobLease, children_allowed, take_lease


@pytest.fixture
def world(tmp_path):
    store = LocalStore(tmp_path / "store")
    spec = parse_study({"name": "st", "dataset": "/d", "runs": {"densenet121": [1]}})
    (job,) = expand(spec, "st-1", "datasets/d/h")
    return store, FileCoord(tmp_path / "coord"), job


def take(store, coord, job, owner, ttl=5.0, log=None) -> JobLease:
    """What train_task does: acquire above the store's floor, then record the token first."""
    held = take_lease(coord, store, job, owner, ttl, log or (lambda m: None))
    assert held is not None
    held.begin()
    return held


def test_a_worker_paused_past_its_lease_writes_nothing_after_another_took_the_job(world):
    store, coord, job = world
    lines = []
    a = take(store, coord, job, "a", ttl=0.3, log=lines.append)
    a.fenced.put_text(job.keys.checkpoint("last.pt"), "a epoch 1")
    time.sleep(0.5)  # a is paused (SIGSTOP) past its TTL; b receives the redelivered job
    b = take(store, coord, job, "b")
    b.fenced.put_text(job.keys.checkpoint("last.pt"), "b epoch 2")
    with pytest.raises(LeaseLost, match="lost the job's lease"):
        a.fenced.put_text(job.keys.checkpoint("last.pt"), "a epoch 2")  # a wakes and tries to write
    assert a.lost and not a.renew()
    with pytest.raises(LeaseLost):
        write_result(a.fenced, job, {"by": "a"})
    assert store.get_text(job.keys.checkpoint("last.pt")) == "b epoch 2"
    assert not store.exists(job.keys.result)
    assert json.loads(store.get_text(job.keys.fence))["token"] == 2
    assert lines == [f"{job.job_id}: lost its lease (token 1) to b; writing nothing more"]
    b.fenced.put_text(job.keys.result, "{}")  # the holder writes on


def test_after_the_new_holder_finished_and_released_the_stale_one_still_writes_nothing(world):
    store, coord, job = world
    a = take(store, coord, job, "a", ttl=0.3)
    time.sleep(0.5)
    b = take(store, coord, job, "b")
    write_result(b.fenced, job, {"by": "b"})
    b.release()
    with pytest.raises(LeaseLost):  # the old heartbeat script re-took a vanished lease here
        a.fenced.put_text(job.keys.progress, "{}")
    assert json.loads(store.get_text(job.keys.result)) == {"by": "b"}
    assert coord.holder(job.job_id) is None


@pytest.mark.parametrize("finished", [True, False])
def test_a_wiped_broker_after_another_acquired_cannot_hand_the_job_back(world, finished):
    """The double fault: b took the job over (and maybe finished it), then the broker lost its keys.
    The counter is gone, so only the store can tell a that it is stale."""
    store, coord, job = world
    a = take(store, coord, job, "a", ttl=0.3)
    time.sleep(0.5)
    b = take(store, coord, job, "b", ttl=0.3)
    if finished:
        write_result(b.fenced, job, {"by": "b"})
        b.release()
    else:
        time.sleep(0.5)  # b died; its lease expired too
    for sub in ("lease", "fence"):
        for path in (coord.root / sub).glob("*"):
            path.unlink()
    with pytest.raises(LeaseLost):
        a.check()
    assert coord.holder(job.job_id) is None


def test_a_wiped_broker_under_a_running_job_is_taken_back_and_the_job_writes_on(world):
    store, coord, job = world
    a = take(store, coord, job, "a")
    for sub in ("lease", "fence"):
        for path in (coord.root / sub).glob("*"):
            path.unlink()
    a.fenced.put_text(job.keys.metrics, "epoch 1\n")
    assert store.get_text(job.keys.metrics) == "epoch 1\n"
    assert coord.holder(job.job_id) == "a" and coord.renew(a.lease, 5) == HELD
    assert [e["event"] for e in coord.lease_log(job.job_id)] == ["acquire", "reacquire"]


class Unreachable(FileCoord):
    def renew(self, lease, ttl):
        raise ConnectionError("the broker is away")


def test_while_the_broker_is_away_writes_go_on_within_half_a_ttl_then_wait_then_stop_for_a_requeue(world, tmp_path):
    store, _, job = world
    coord = Unreachable(tmp_path / "coord2")
    held = take_lease(coord, store, job, "a", 0.4, lambda m: None)
    held.fenced.put_text(job.keys.progress, "1")  # renewed (at acquisition) moments ago
    time.sleep(0.3)
    started = time.monotonic()
    with pytest.raises(BrokerUnreachable, match=r"could not be renewed for 2s \(ConnectionError: the broker is away\)"):
        held.fenced.put_text(job.keys.progress, "2")
    assert time.monotonic() - started >= 1.9  # it waited for the broker (5 TTLs) before giving up
    assert store.get_text(job.keys.progress) == "1"
    with pytest.raises(BrokerUnreachable):  # and stays stopped, without waiting again
        held.check()


def test_a_damaged_fence_record_never_matches_a_holder(world):
    store, coord, job = world
    a = take(store, coord, job, "a", ttl=0.3)
    store.put_text(job.keys.fence, "{not json")
    for sub in ("lease", "fence"):
        for path in (coord.root / sub).glob("*"):
            path.unlink()
    with pytest.raises(LeaseLost):
        a.check()  # the store cannot vouch for a: it does not take the job back
    b = take(store, coord, job, "b")
    assert b.lease.token == 1 and coord.holder(job.job_id) == "b"


def _start_a_spawned_child() -> int:
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,), daemon=True)
    child.start()
    child.join(60)
    return child.exitcode


def test_a_daemonic_pool_child_may_start_the_loader_workers_inside_children_allowed(monkeypatch):
    import multiprocessing

    import billiard.process

    config = multiprocessing.current_process()._config
    # What a Celery (billiard) pool child looks like to Python's multiprocessing.
    monkeypatch.setitem(config, "daemon", True)
    monkeypatch.setitem(config, "authkey", billiard.process.AuthenticationString(b"k" * 32))
    with pytest.raises(AssertionError, match="daemonic processes are not allowed to have children"):
        _start_a_spawned_child()
    before = dict(config)
    with children_allowed():
        assert _start_a_spawned_child() == 0
    assert config == before and type(config["authkey"]) is billiard.process.AuthenticationString
