"""`wait` and `status` over the local broker: a study whose runs all ended never waits forever."""

from __future__ import annotations

import json

import pytest

from jobs.errors import CxrStudyError
from jobs.spec.study import expand, parse_study
from jobs.store import LocalStore, layout
from jobs.store.records import write_json, write_result, write_study
from orchestrator import distributed
from worker.settings import Settings


@pytest.fixture
def ended(tmp_path):
    """A registered study whose two runs have results, with no worker and no report."""
    store = LocalStore(tmp_path / "store")
    spec = parse_study({"name": "st", "dataset": "/d", "runs": {"densenet121": [1, 2]}})
    jobs = expand(spec, "st-1", "datasets/d/h")
    write_study(store, spec.spec(), "st-1", "datasets/d/h", jobs)
    store.put_text(layout.manifest_key("datasets/d/h"), "{}")  # prepared
    for job in jobs:
        write_result(
            store, job, {"status": "succeeded", "epochs_run": 1, "val": {"avg_auroc": 0.5}, "test": {"avg_auroc": 0.6}}
        )
    settings = Settings(broker_url=f"local://{tmp_path / 'broker'}", store=str(tmp_path / "store"))
    return store, jobs, settings, tmp_path


def queued(tmp) -> list[str]:
    return [json.loads(m.read_text())["headers"]["task"] for m in (tmp / "broker" / "queue").glob("*.cpu.msg")]


def test_wait_enqueues_a_lost_aggregate_once_then_asks_whether_a_worker_serves_the_cpu_queue(ended):
    store, _, settings, tmp = ended
    lines = []
    with pytest.raises(CxrStudyError, match=r"study st-1: no report after 2s"):
        distributed.wait("st-1", settings, log=lines.append, poll=0.05, timeout=2, compact=True, aggregate_grace=0.3)
    assert lines.count("study st-1: every run has ended and no report followed; the aggregate job is enqueued") == 1
    assert queued(tmp) == ["cxrstudy.aggregate"]  # once: later tries find the claim it took
    warnings = [line for line in lines if "is a worker serving it?" in line]
    assert warnings == [
        "study st-1: every run has ended; the report waits on the cpu queue (1 jobs in it): is a worker serving it? "
        "(`cxrstudy worker --queues cpu`, or the chart's cpu workers)"
    ]


def test_wait_enqueues_nothing_while_a_workers_claim_on_the_ending_stands(ended):
    from worker.coord import open_coord
    from worker.tasks import aggregate_claim

    store, jobs, settings, tmp = ended
    coord = open_coord(settings.broker_url, store.uri)
    _, states = distributed.study_states(store, "st-1", 60)
    assert coord.claim(aggregate_claim("st-1", states), ttl=60)  # a worker enqueued it (its job is running)
    with pytest.raises(CxrStudyError, match="no report after"):
        distributed.wait("st-1", settings, log=lambda m: None, poll=0.05, timeout=1, aggregate_grace=0.2)
    assert queued(tmp) == []
    # resume drops the claim of the ending it runs again
    assert distributed.resume("st-1", settings) == "study st-1: every run has a result; the aggregate job is enqueued"
    assert coord.claim(aggregate_claim("st-1", states), ttl=60)


def test_wait_ends_with_the_aggregate_jobs_error_and_status_shows_it(ended):
    store, _, settings, _ = ended
    write_json(store, layout.aggregate_error_key("st-1"), {"error": "KeyError: 'test'", "at": "x"})
    with pytest.raises(CxrStudyError, match=r"the aggregate job failed \(KeyError: 'test'\); fix that, then"):
        distributed.wait("st-1", settings, log=lambda m: None, poll=0.05, aggregate_grace=10)
    first = distributed.status("st-1", settings).splitlines()[0]
    assert first == (
        "study st-1: 2 runs: 2 succeeded; queues: gpu 0, cpu 0, running 0; the aggregate job failed: KeyError: 'test' "
        "(`cxrstudy resume st-1` runs it again)"
    )
    assert distributed.resume("st-1", settings) == "study st-1: every run has a result; the aggregate job is enqueued"
    assert not store.exists(layout.aggregate_error_key("st-1"))


def test_status_calls_a_report_older_than_the_runs_states_out_of_date(ended):
    store, jobs, settings, _ = ended
    report = {"runs": [{"job_id": j.job_id, "status": "succeeded"} for j in jobs]}
    write_json(store, layout.report_json_key("st-1"), report)
    store.put_text(layout.report_markdown_key("st-1"), "# report")
    assert distributed.status("st-1", settings).splitlines()[0].endswith("; report ready")
    write_json(store, layout.report_json_key("st-1"), {"runs": [{**report["runs"][0], "status": "failed"}]})
    assert (
        distributed.status("st-1", settings)
        .splitlines()[0]
        .endswith("; the report is out of date (it predates the runs' current states)")
    )
    assert json.loads(distributed.status("st-1", settings, as_json=True))["report"] is False
    assert distributed.list_studies(settings).endswith("2 succeeded  report (out of date)")


def test_a_damaged_result_shows_as_failed_and_resume_removes_it_and_trains_the_run_again(ended):
    store, (a, b), settings, tmp = ended
    text = store.get_text(a.keys.result)
    store.put_text(a.keys.result, text[: len(text) // 2])
    lines = distributed.status("st-1", settings).splitlines()
    assert lines[0] == "study st-1: 2 runs: 1 failed, 1 succeeded; queues: gpu 0, cpu 0, running 0"
    assert lines[-1].startswith(f"  densenet121 seed 1: {store.url(a.keys.result)} is damaged: not valid JSON (")
    assert lines[-1].endswith("; `cxrstudy resume st-1` removes it and runs the run again")
    assert distributed.resume("st-1", settings) == "study st-1: 1 runs enqueued again"
    assert not store.exists(a.keys.result) and store.exists(b.keys.result)
    (queued,) = (tmp / "broker" / "queue").glob("*.gpu.msg")
    headers = json.loads(queued.read_text())["headers"]
    assert headers["task"] == "cxrstudy.train" and a.job_id in headers["kwargsrepr"]


def test_list_shows_every_study_and_marks_the_damaged_one(ended):
    store, _, settings, _ = ended
    spec = parse_study({"name": "other", "dataset": "/d", "runs": {"densenet121": [7]}})
    write_study(store, spec.spec(), "other-1", "datasets/d/h", expand(spec, "other-1", "datasets/d/h"))
    text = store.get_text(layout.study_key("other-1"))
    store.put_text(layout.study_key("other-1"), text[:40])
    lines = distributed.list_studies(settings).splitlines()
    assert lines[0].startswith(
        f"other-1  [damaged] {store.url(layout.study_key('other-1'))} is damaged: not valid JSON"
    )
    assert lines[0].endswith(
        "; submit the study file again (`cxrstudy submit STUDY.yaml` writes it anew; the runs' files are kept)"
    )
    assert lines[1].startswith("st-1  ") and lines[1].endswith("  2 succeeded")


def gpu_jobs(tmp) -> list[str]:
    from worker.coord import train_job_of

    return sorted(train_job_of(m.read_text()) for m in (tmp / "broker" / "queue").glob("*.gpu.msg"))


def test_wait_enqueues_again_a_run_whose_message_no_broker_queue_or_worker_holds(ended):
    """A run lost by the broker (no message queued or delivered, no lease) is enqueued again once its
    absence outlasts the grace; one whose message is queued, or whose job a worker holds, is not."""
    from worker.coord import open_coord
    from worker.tasks import enqueue_train

    store, (a, b), settings, tmp = ended
    spec = parse_study({"name": "st", "dataset": "/d", "runs": {"densenet121": [1, 2, 3]}})
    a, b, c = expand(spec, "st-2", "datasets/d/h")
    write_study(store, spec.spec(), "st-2", "datasets/d/h", [a, b, c])
    coord = open_coord(settings.broker_url, store.uri)
    enqueue_train(distributed.make_app(settings), "st-2", [b.job_id])  # b's message is queued
    assert coord.acquire(c.job_id, "worker-9", ttl=60)  # c is held by a worker
    assert coord.queued_jobs() == {b.job_id}
    lines = []
    with pytest.raises(CxrStudyError, match="no report after"):
        distributed.wait("st-2", settings, log=lines.append, poll=0.05, timeout=2, compact=True, lost_grace=0.5)
    assert gpu_jobs(tmp) == sorted([a.job_id, b.job_id])  # a, once; b kept its one message
    assert [line for line in lines if "enqueued again" in line] == [
        f"study st-2: 1 run(s) had no job message in the broker and no worker for 0 s (lost by the broker?); "
        f"enqueued again: {a.job_id}"
    ]


def test_wait_rides_out_a_store_that_is_away_for_a_while(ended, monkeypatch):
    from jobs.errors import StoreError
    from jobs.store.snapshot import Snapshot

    _, _, settings, _ = ended
    real, calls = Snapshot.refresh, []

    def flaky(self, prefetch=True):
        calls.append(1)
        if 2 <= len(calls) <= 4:
            raise StoreError("LIST studies/st-1/: cannot reach the S3 endpoint http://s3:9000")
        return real(self, prefetch)

    monkeypatch.setattr(Snapshot, "refresh", flaky)
    lines = []
    with pytest.raises(CxrStudyError, match="no report after"):
        distributed.wait("st-1", settings, log=lines.append, poll=0.05, timeout=0.6, compact=True)
    assert len(calls) > 5
    assert [line for line in lines if "still watching" in line or "answer again" in line] == [
        "study st-1: StoreError: LIST studies/st-1/: cannot reach the S3 endpoint http://s3:9000; still watching "
        "(every 0 s)",
        "study st-1: the store and the broker answer again",
    ]
