"""What the store records about a study: run state decided in one place, one shape per terminal file."""

import json
import time

import pytest

from jobs import aggregate
from jobs.spec.study import expand, parse_study
from jobs.store import LocalStore, layout
from jobs.store.records import (
    CANCELLED,
    FAILED,
    QUEUED,
    RETRYING,
    RUNNING,
    SUCCEEDED,
    read_study,
    run_state,
    study_ids,
    study_states,
    write_cancelled,
    write_error,
    write_json,
    write_study,
)
from orchestrator.distributed import report_ready


@pytest.fixture
def study(tmp_path):
    store = LocalStore(tmp_path)
    spec = parse_study({"name": "st", "dataset": "/d", "runs": {"densenet121": [1, 2, 3]}})
    jobs = expand(spec, "st-1", "datasets/d/h")
    write_study(store, spec.spec(), "st-1", "datasets/d/h", jobs)
    return store, jobs


def test_keys_of_a_study_and_a_run():
    keys = layout.job_keys("s-1", "densenet121-s1-ab")
    assert keys.result == "studies/s-1/jobs/densenet121-s1-ab/result.json"
    assert keys.checkpoint("last.pt") == "studies/s-1/jobs/densenet121-s1-ab/checkpoints/last.pt"
    assert keys.predictions("test") == "studies/s-1/jobs/densenet121-s1-ab/predictions_test.csv"
    assert layout.report_key("s-1", "figures/roc_curves.png") == "studies/s-1/report/figures/roc_curves.png"
    assert layout.shard_key(layout.dataset_prefix("nih", "abc"), layout.shard_name("val", 3)) == (
        "datasets/nih/abc/shards/val-000003.tar"
    )
    assert [layout.study_id_of(k) for k in ("studies/a/study.json", "studies/a/jobs/x/study.json", "x")] == [
        "a",
        None,
        None,
    ]


def test_state_precedence_result_cancelled_final_error_fresh_progress_retrying_queued(study):
    store, (job, *_) = study
    assert run_state(store, job).state == QUEUED
    write_error(store, job, "OSError: S3 timed out", final=False, attempts=1, max_attempts=3)
    assert run_state(store, job).state == RETRYING
    write_json(store, job.keys.progress, {"state": "running", "updated": time.time()})
    assert run_state(store, job).state == RUNNING
    assert run_state(store, job, stale_after=0).state == RETRYING  # a stale heartbeat: the worker is gone
    write_cancelled(store, job)
    assert run_state(store, job).state == CANCELLED  # a cancel after a failed attempt is a cancel
    write_error(store, job, "ValueError: bad", final=True)
    assert run_state(store, job).state == CANCELLED
    write_json(store, job.keys.result, {"status": "succeeded"})
    assert run_state(store, job).state == SUCCEEDED


def test_error_json_has_one_shape(study):
    store, (job, *_) = study
    write_error(store, job, "ValueError: x", final=True, stage="prepare")
    record = json.loads(store.get_text(job.keys.error))
    assert set(record) == {"status", "final", "stage", "error", "attempts", "max_attempts", "worker", "at", "traceback"}
    assert (record["status"], record["final"], record["stage"]) == ("failed", True, "prepare")
    assert run_state(store, job).state == FAILED


def test_a_cancelled_run_with_a_failed_attempt_is_reported_cancelled_so_wait_ends(study):
    """The defect: the report said 'failed' where status said 'cancelled', and `wait` never ended."""
    store, (a, b, c) = study
    write_error(store, a, "OSError: first attempt", final=False, attempts=1, max_attempts=3)
    write_cancelled(store, a)
    write_cancelled(store, b)
    write_error(store, c, "ValueError: loss is NaN at step 3 (NaN in the logits)", final=True)
    aggregate.run("st-1", store, log=lambda m: None)
    report = json.loads(store.get_text(layout.report_key("st-1", "report.json")))
    assert [r["status"] for r in report["runs"]] == [CANCELLED, CANCELLED, FAILED]
    assert report_ready(store, "st-1", stale_after=60)
    # report.json keeps text with "NaN" in it as written; only numbers that are NaN become null
    assert report["runs"][2]["result"]["error"] == "ValueError: loss is NaN at step 3 (NaN in the logits)"


def test_study_listing_and_a_missing_study(study, tmp_path):
    store, jobs = study
    assert study_ids(store) == ["st-1"]
    doc, states = study_states(store, "st-1")
    assert doc["study_id"] == "st-1" and [s.job for s in states] == jobs
    with pytest.raises(Exception, match=r"no study 'nope' in .*studies \(see `cxrstudy list`\)"):
        read_study(store, "nope")
