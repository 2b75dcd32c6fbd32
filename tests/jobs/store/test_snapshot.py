"""A study's state from one listing per look: a poll reads only the records that changed, and a
snapshot decides every run's state exactly as the store itself does."""

import json
import os
import time

import pytest

from jobs.spec.study import expand, parse_study
from jobs.store import LocalStore, layout
from jobs.store.records import (
    report_covers,
    run_state,
    study_snapshot,
    study_states,
    write_cancelled,
    write_error,
    write_json,
    write_result,
    write_study,
)
from jobs.store.snapshot import Snapshot


class Counting(LocalStore):
    """A local store that counts the requests an S3 store would make, and trusts its versions as
    an S3 store trusts its ETags (the test bumps a rewritten file's mtime past the clock's tick)."""

    versions_reliable = True

    def __init__(self, root):
        super().__init__(root)
        self.calls = {"list": 0, "get": 0, "exists": 0}

    def list(self, prefix=""):
        self.calls["list"] += 1
        return super().list(prefix)

    def open(self, key):
        self.calls["get"] += 1
        return super().open(key)

    def exists(self, key):
        self.calls["exists"] += 1
        return super().exists(key)

    def reset(self):
        self.calls = dict.fromkeys(self.calls, 0)


RUNS = 40


@pytest.fixture
def study(tmp_path):
    store = Counting(tmp_path)
    spec = parse_study({"name": "st", "dataset": "/d", "runs": {"densenet121": list(range(RUNS))}})
    jobs = expand(spec, "st-1", "datasets/d/h")
    write_study(store, spec.spec(), "st-1", "datasets/d/h", jobs)
    for i, job in enumerate(jobs):
        store.put_bytes(job.keys.checkpoint("last.pt"), b"x" * 100)  # listed, never read
        store.put_text(job.keys.metrics, "{}\n")
        if i % 4 == 0:
            write_result(store, job, {"status": "succeeded", "epochs_run": 1, "test": {"avg_auroc": 0.7}})
        elif i % 4 == 1:
            write_json(store, job.keys.progress, {"state": "running", "updated": time.time(), "epoch": 1})
        elif i % 4 == 2:
            write_error(store, job, "boom", final=False, attempts=1)
    store.reset()
    return store, jobs


def _bump(store, key, record):
    write_json(store, key, record)
    st = os.stat(store.path(key))  # a new version even within the file system's clock tick
    os.utime(store.path(key), ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_a_snapshot_decides_every_state_as_the_store_does(study):
    store, jobs = study
    direct = [run_state(store, j).state for j in jobs]
    view = study_snapshot(store, "st-1")
    assert [run_state(view, j).state for j in jobs] == direct
    assert direct.count("succeeded") == 10 and direct.count("running") == 10 and direct.count("retrying") == 10


def test_a_poll_of_an_unchanged_study_is_one_listing_and_no_read(study):
    store, jobs = study
    view = Snapshot(store, layout.study_folder("st-1"))
    view.refresh()
    study_states(view, "st-1")
    # the first look reads each record once: study.json, 10 results, 10 progress, 10 errors (never a checkpoint)
    assert store.calls == {"list": 1, "get": 31, "exists": 0}
    store.reset()
    view.refresh()
    _, states = study_states(view, "st-1")
    report_covers(view, "st-1", states)
    assert store.calls == {"list": 1, "get": 0, "exists": 0}


def test_a_poll_reads_only_the_record_that_changed(study):
    store, jobs = study
    view = study_snapshot(store, "st-1")
    study_states(view, "st-1")
    _bump(store, jobs[1].keys.progress, {"state": "running", "updated": time.time(), "epoch": 2})
    write_cancelled(store, jobs[3])
    store.reset()
    view.refresh()
    _, states = study_states(view, "st-1")
    assert store.calls == {"list": 1, "get": 2, "exists": 0}
    assert states[1].detail["epoch"] == 2 and states[3].state == "cancelled"


def test_a_record_removed_since_the_listing_reads_as_absent(study):
    store, jobs = study
    view = study_snapshot(store, "st-1", prefetch=False)
    store.delete(jobs[0].keys.result)
    assert run_state(view, jobs[0]).state == "queued"


def test_copies_kept_on_disk_spare_the_next_process_its_reads(study, tmp_path):
    store, jobs = study
    cache = tmp_path / "cache" / "st-1.json"
    study_states(study_snapshot(store, "st-1", cache), "st-1")
    assert store.calls["get"] == 31
    store.reset()
    _, states = study_states(study_snapshot(store, "st-1", cache), "st-1")  # a new process: a new snapshot
    assert store.calls == {"list": 1, "get": 0, "exists": 0}
    assert [s.state for s in states] == [run_state(store, j).state for j in jobs]
    cache.write_text("{not json")  # a damaged cache costs reads, nothing else
    store.reset()
    study_states(study_snapshot(store, "st-1", cache), "st-1")
    assert store.calls["get"] == 31
    assert json.loads(cache.read_text())["prefix"] == "studies/st-1/"


def test_keys_outside_the_prefix_go_to_the_store(study):
    store, _ = study
    store.put_text("datasets/d/h/manifest.json", "{}")
    view = study_snapshot(store, "st-1")
    store.reset()
    assert view.exists("datasets/d/h/manifest.json") and view.get_bytes("datasets/d/h/manifest.json") == b"{}"
    assert store.calls == {"list": 0, "get": 1, "exists": 1}


def test_over_a_local_store_every_look_reads_the_records_again(study, tmp_path):
    """A local file rewritten within one tick of the file system's clock can keep its mtime, size
    and inode: its listed version repeats, so a local snapshot never serves a copy from an earlier look."""
    store, jobs = study
    local = Counting(store.root)
    local.versions_reliable = False
    view = Snapshot(local, layout.study_folder("st-1"))
    view.refresh()
    study_states(view, "st-1")
    local.reset()
    view.refresh()
    study_states(view, "st-1")
    assert local.calls == {"list": 1, "get": 31, "exists": 0}  # each record once per look, never twice
