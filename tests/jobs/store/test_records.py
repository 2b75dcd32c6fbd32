"""What the store records about a study: run state decided in one place, one shape per terminal file."""

import json
import time

import pytest

from jobs import aggregate
from jobs.errors import DamagedArtifact
from jobs.spec.study import expand, parse_study
from jobs.store import LocalStore, layout
from jobs.store.records import (
    CANCELLED,
    FAILED,
    QUEUED,
    RETRYING,
    RUNNING,
    SUCCEEDED,
    clear_ending,
    read_json,
    read_study,
    report_covers,
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


# --- damaged records ----------------------------------------------------------------------------------
RESULT = {"status": "succeeded", "seed": 1, "epochs_run": 3, "val": {"avg_auroc": 0.61}, "test": {"avg_auroc": 0.6}}


def truncate(store, key: str) -> None:
    """Cut a stored record in half, as a full disk or an interrupted copy leaves it."""
    text = store.get_text(key)
    store.put_text(key, text[: len(text) // 2])


@pytest.mark.parametrize(
    "name, write",
    [
        ("result.json", lambda store, job: write_json(store, job.keys.result, RESULT)),
        ("cancelled.json", write_cancelled),
        ("error.json", lambda store, job: write_error(store, job, "OSError: x", final=False, attempts=1)),
    ],
)
def test_a_damaged_terminal_record_makes_the_run_failed_naming_the_file_and_what_to_do(study, name, write):
    store, (job, other, _) = study
    write(store, job)
    write_json(store, other.keys.result, RESULT)
    truncate(store, f"{job.keys.prefix}/{name}")
    state = run_state(store, job)
    assert (state.state, state.ended, state.detail["final"]) == (FAILED, True, True)
    assert state.detail["error"].startswith(f"{store.url(job.keys.prefix)}/{name} is damaged: not valid JSON (")
    assert state.detail["error"].endswith("; `cxrstudy resume st-1` removes it and runs the run again")
    assert run_state(store, other).state == SUCCEEDED  # the other runs are read as before
    _, states = study_states(store, "st-1")
    assert [s.state for s in states] == [FAILED, SUCCEEDED, QUEUED]


def test_a_damaged_progress_file_is_no_heartbeat_and_the_run_is_not_ended(study):
    store, (job, *_) = study
    write_json(store, job.keys.progress, {"state": "running", "updated": time.time(), "epoch": 2})
    truncate(store, job.keys.progress)
    state = run_state(store, job)
    assert (state.state, state.ended) == (QUEUED, False)  # the worker trains it; its heartbeat rewrites the file
    assert state.detail["warning"].startswith(f"{store.url(job.keys.progress)} is damaged: not valid JSON (")
    assert state.detail["warning"].endswith("; the run's next heartbeat writes it again")
    write_error(store, job, "OSError: S3 timed out", final=False, attempts=1)
    state = run_state(store, job)
    assert state.state == RETRYING and state.detail["error"] == "OSError: S3 timed out"
    assert "progress.json is damaged" in state.detail["warning"]


@pytest.mark.parametrize(
    "text, what",
    [
        ('{"status": "succ', "not valid JSON (Unterminated string starting at: line 1 column 12 (char 11))"),
        ("", "not valid JSON (Expecting value: line 1 column 1 (char 0))"),
        ("[1, 2]", "a JSON list, not an object"),
        ("\udcff", None),
    ],
)
def test_read_json_names_the_key_and_what_is_wrong(tmp_path, text, what):
    store = LocalStore(tmp_path)
    if what is None:
        store.put_bytes("a/b.json", b'{"x": "\xff"}')
        what = "not UTF-8 text (bad byte at offset 7)"
    else:
        store.put_text("a/b.json", text)
    with pytest.raises(DamagedArtifact) as err:
        read_json(store, "a/b.json", "do this")
    assert str(err.value) == f"{tmp_path}/a/b.json is damaged: {what}; do this"
    assert read_json(store, "a/none.json") is None


@pytest.mark.parametrize(
    "damage, what",
    [
        (lambda doc: json.dumps(doc)[:60], "not valid JSON ("),
        (lambda doc: json.dumps({k: v for k, v in doc.items() if k != "jobs"}), "it has no 'jobs'"),
        (lambda doc: json.dumps({**doc, "spec": {}}), "it has no 'spec.name'"),
        (lambda doc: json.dumps({**doc, "jobs": [{**doc["jobs"][0], "seed": None}]}), "jobs[0]: "),
        (lambda doc: json.dumps({**doc, "jobs": ["densenet121"]}), "jobs[0]: string indices must be integers"),
    ],
)
def test_a_damaged_study_json_is_one_error_naming_it_and_submit_writes_it_again(study, damage, what):
    store, jobs = study
    key = layout.study_key("st-1")
    good = json.loads(store.get_text(key))
    store.put_text(key, damage(good))
    with pytest.raises(DamagedArtifact) as err:
        read_study(store, "st-1")
    message = str(err.value)
    assert message.startswith(f"{store.url(key)} is damaged: {what}")
    assert message.endswith(
        "; submit the study file again (`cxrstudy submit STUDY.yaml` writes it anew; the runs' files are kept)"
    )
    assert "\n" not in message
    spec = parse_study({"name": "st", "dataset": "/d", "runs": {"densenet121": [1, 2, 3]}})
    write_study(store, spec.spec(), "st-1", "datasets/d/h", jobs)  # what submit does
    assert read_study(store, "st-1")["jobs"] == good["jobs"]


def test_resume_clears_a_damaged_result_and_progress_but_never_a_readable_result(study):
    store, (a, b, c) = study
    write_json(store, a.keys.result, RESULT)
    truncate(store, a.keys.result)
    write_json(store, a.keys.progress, {"state": "running"})
    truncate(store, a.keys.progress)
    write_json(store, b.keys.result, RESULT)
    write_json(store, c.keys.progress, {"state": "running", "updated": 0})
    for job in (a, b, c):
        clear_ending(store, job)
    assert not store.exists(a.keys.result) and not store.exists(a.keys.progress)
    assert run_state(store, a).state == QUEUED
    assert json.loads(store.get_text(b.keys.result)) == RESULT and store.exists(c.keys.progress)


def test_a_damaged_report_json_covers_nothing(study):
    store, jobs = study
    for job in jobs:
        write_json(store, job.keys.result, RESULT)
    _, states = study_states(store, "st-1")
    store.put_text(layout.report_markdown_key("st-1"), "# report")
    write_json(
        store, layout.report_json_key("st-1"), {"runs": [{"job_id": j.job_id, "status": SUCCEEDED} for j in jobs]}
    )
    assert report_covers(store, "st-1", states)
    truncate(store, layout.report_json_key("st-1"))
    assert not report_covers(store, "st-1", states)
    write_json(store, layout.report_json_key("st-1"), {"runs": [["not", "a", "record"]]})
    assert not report_covers(store, "st-1", states)
