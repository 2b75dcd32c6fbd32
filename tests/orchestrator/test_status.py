"""The status table reads what the store has and copes with what it lacks: one run's damaged record
never crashes the table of the others."""

import json
import time

import pytest

from jobs.spec.study import expand, parse_study
from jobs.store import LocalStore, layout
from jobs.store.records import study_states, write_error, write_json, write_study
from orchestrator.status import format_status, report_state, rows_of

RESULT = {"status": "succeeded", "epochs_run": 4, "val": {"avg_auroc": 0.71}, "test": {"avg_auroc": 0.7}}


@pytest.fixture
def study(tmp_path):
    store = LocalStore(tmp_path)
    spec = parse_study({"name": "st", "dataset": "/d", "training": {"epochs": 5}, "runs": {"densenet121": [1, 2]}})
    jobs = expand(spec, "st-1", "datasets/d/h")
    write_study(store, spec.spec(), "st-1", "datasets/d/h", jobs)
    return store, jobs


def table(store) -> list[str]:
    _, states = study_states(store, "st-1")
    return format_status("st-1", rows_of(states), None, "").splitlines()


@pytest.mark.parametrize(
    "result, epoch, auroc, missing",
    [
        ({"status": "succeeded"}, "?/5", "", "'epochs_run', 'val.avg_auroc', 'test.avg_auroc'"),
        ({**RESULT, "val": {}}, "4/5", "", "'val.avg_auroc'"),
        ({**RESULT, "val": "high"}, "4/5", "", "'val.avg_auroc'"),
        ({**RESULT, "val": {"avg_auroc": "high"}}, "4/5", "", None),
        ({**RESULT, "val": {"avg_auroc": None}}, "4/5", "", None),
    ],
)
def test_a_result_missing_fields_still_has_its_row_and_a_note_naming_the_file(study, result, epoch, auroc, missing):
    store, (a, b) = study
    write_json(store, a.keys.result, result)
    write_json(store, b.keys.result, RESULT)
    lines = table(store)
    assert lines[0] == "study st-1: 2 runs: 2 succeeded"
    assert lines[2].split() == ["densenet121", "1", "succeeded", epoch, *([auroc] if auroc else [])]
    assert lines[3].split() == ["densenet121", "2", "succeeded", "4/5", "0.7100"]
    notes = lines[4:]
    if missing is None:
        assert notes == []
    else:
        assert notes == [
            f"  densenet121 seed 1: {a.keys.result} is damaged: it has no {missing}; delete it and "
            "`cxrstudy resume st-1` runs the run again"
        ]


def test_a_damaged_progress_file_is_shown_on_a_queued_run(study):
    store, (a, _) = study
    write_json(store, a.keys.progress, {"state": "running", "updated": time.time(), "started": "noon", "epoch": 1})
    _, states = study_states(store, "st-1")
    assert rows_of(states)[0]["elapsed"] == ""  # a progress record with a bad start time: no elapsed, no crash
    store.put_text(a.keys.progress, '{"state": "runn')
    lines = table(store)
    assert lines[0] == "study st-1: 2 runs: 2 queued"
    assert lines[-1].startswith(f"  densenet121 seed 1: {store.url(a.keys.progress)} is damaged: not valid JSON (")
    assert lines[-1].endswith("; the run's next heartbeat writes it again")


def test_a_damaged_aggregate_error_is_the_reason_shown(study):
    store, _ = study
    _, states = study_states(store, "st-1")
    store.put_text(layout.aggregate_error_key("st-1"), json.dumps({"error": "x"})[:5])
    state, phrase = report_state(store, "st-1", states)
    assert state == "failed"
    assert phrase.startswith(
        f"the aggregate job failed: {store.url(layout.aggregate_error_key('st-1'))} is damaged: not valid JSON ("
    )
    assert phrase.endswith("; it is removed when the aggregate job runs again (`cxrstudy resume st-1` runs it again)")


def test_a_retrying_run_says_when_its_next_attempt_is_due(study):
    store, (a, b) = study
    write_error(store, a, "StoreError: PUT ...: S3 error 503", final=False, attempts=1, retry_at=time.time() + 41.6)
    write_error(store, b, "StoreError: S3 error 503", final=False, attempts=2, retry_at=time.time() - 5)
    lines = table(store)
    assert lines[0] == "study st-1: 2 runs: 2 retrying"
    assert lines[2].split()[:6] == ["densenet121", "1", "retrying", "(1", "attempt,", "next"]
    assert lines[2].split()[6:9] in (["in", "42", "s)"], ["in", "41", "s)"])
    assert lines[3].split()[:5] == ["densenet121", "2", "retrying", "(2", "attempts)"]  # due: no countdown


def test_the_status_line_shows_the_queues_and_the_running_jobs_when_the_broker_counts_them(study):
    store, _ = study
    _, states = study_states(store, "st-1")
    rows = rows_of(states)
    running = {"gpu": 3, "cpu": 1, "running": 2}
    assert format_status("st-1", rows, running, "").splitlines()[0] == (
        "study st-1: 2 runs: 2 queued; queues: gpu 3, cpu 1, running 2"
    )
    assert format_status("st-1", rows, {"gpu": 3, "cpu": 1}, "report ready").splitlines()[0] == (
        "study st-1: 2 runs: 2 queued; queues: gpu 3, cpu 1; report ready"
    )
    assert format_status("st-1", rows, {**running, "running": 0}, "").splitlines()[0] == (
        "study st-1: 2 runs: 2 queued; queues: gpu 3, cpu 1, running 0"
    )


def test_a_study_with_variants_shows_each_runs_variant_and_a_line_per_arm(tmp_path):
    store = LocalStore(tmp_path)
    spec = parse_study(
        {
            "name": "arms",
            "dataset": "/d",
            "training": {"epochs": 5},
            "runs": {"densenet121": [1, 2]},
            "variants": {"focal": {}, "bce": {"training": {"loss": "bce"}}},
        }
    )
    jobs = expand(spec, "arms-1", "datasets/d/h")
    write_study(store, spec.spec(), "arms-1", "datasets/d/h", jobs)
    write_json(store, jobs[0].keys.result, RESULT)
    write_json(store, jobs[1].keys.result, {**RESULT, "test": {"avg_auroc": 0.8}})
    write_error(store, jobs[3], "boom", final=True)
    _, states = study_states(store, "arms-1")
    lines = format_status("arms-1", rows_of(states), None, "").splitlines()
    assert lines[:4] == [
        "study arms-1: 4 runs: 2 succeeded, 1 queued, 1 failed",
        "  arm densenet121@focal: 2 succeeded; test Avg AUROC 0.7500 (mean of 2)",
        "  arm densenet121@bce: 1 queued, 1 failed",
        "Architecture  Variant  Seed  State      Epoch  Val AUROC  Worker  Elapsed",
    ]
    assert lines[4].split()[:3] == ["densenet121", "focal", "1"] and lines[7].split()[:4] == [
        "densenet121",
        "bce",
        "2",
        "failed",
    ]
    assert lines[-1] == "  densenet121@bce seed 2: boom"
    assert [r["variant"] for r in rows_of(states)] == ["focal", "focal", "bce", "bce"]
    _, plain = study_states(*_plain_study(tmp_path / "plain"))
    assert "variant" not in rows_of(plain)[0] and "Variant" not in format_status("st-1", rows_of(plain), None, "")


def _plain_study(root):
    store = LocalStore(root)
    spec = parse_study({"name": "st", "dataset": "/d", "runs": {"densenet121": [1]}})
    write_study(store, spec.spec(), "st-1", "datasets/d/h", expand(spec, "st-1", "datasets/d/h"))
    return store, "st-1"
