"""The report's "Compute and Provenance" section, from provenance records written in the test."""

import json

import pytest

from jobs.report.compute import compute_section, seconds_since_epoch
from jobs.report.tables import display_name
from jobs.spec.study import expand, parse_study
from jobs.store import LocalStore
from jobs.store.records import study_states, write_study


def record(seconds: list[float], gpu: str | None = "NVIDIA H100 80GB HBM3", torch="2.14.1+cu130", ended=None, det=True):
    attempts = [
        {"attempt": i + 1, "worker": f"w{i}", "host": "h", "device": "cuda:0" if gpu else "cpu", "seconds": s}
        for i, s in enumerate(seconds)
    ]
    return {
        "attempts": attempts,
        "wall_seconds": sum(seconds),
        "gpu_seconds": sum(seconds) if gpu else 0.0,
        "ended": ended,
        "status": "succeeded" if ended else "running",
        "determinism": {"deterministic": det, "cudnn_benchmark": not det, "amp": True, "channels_last": True},
        "environment": {
            "python": "3.11.2",
            "torch": torch,
            "timm": "1.0.31",
            "cuda": "13.0",
            "gpu": {"name": gpu, "memory_gib": 79.2, "driver": "580.1"} if gpu else None,
        },
    }


@pytest.fixture
def study(tmp_path):
    store = LocalStore(tmp_path)
    spec = parse_study({"name": "cmp", "dataset": "/d", "runs": {"densenet121": [1, 2], "efficientnet_b2": [1]}})
    jobs = expand(spec, "cmp-1", "datasets/d/x")
    write_study(store, spec.spec(), "cmp-1", "datasets/d/x", jobs)
    doc = json.loads(store.get_text("studies/cmp-1/study.json"))
    doc["submitted"] = "2026-11-20T10:00:00Z"
    store.put_text("studies/cmp-1/study.json", json.dumps(doc))
    for job in jobs:
        store.put_text(job.keys.result, json.dumps({"status": "succeeded", "seed": job.seed}))
    return store, jobs


def table(text: str) -> dict[str, list[str]]:
    """The markdown tables' rows by first cell, cells stripped."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
    return {r[0]: r[1:] for r in rows}


def section(store):
    doc, states = study_states(store, "cmp-1")
    return compute_section(store, doc["submitted"], states, lambda s: display_name(s.job.architecture))


def test_gpu_hours_per_architecture_and_the_study_wall_time_and_versions(study):
    store, (d1, d2, e1) = study
    store.put_text(d1.keys.provenance, json.dumps(record([3600.0], ended="2026-11-20T11:00:00Z")))
    store.put_text(d2.keys.provenance, json.dumps(record([1800.0, 5400.0], ended="2026-11-20T12:30:00Z")))
    store.put_text(e1.keys.provenance, json.dumps(record([1800.0], ended="2026-11-20T10:45:00Z")))
    text, rows, info = section(store)
    t = table(text)
    assert t["Group"] == ["Runs", "GPU-hours", "Compute hours", "Hours per run", "Extra attempts"]
    assert t["DenseNet-121"] == ["2", "3.00", "3.00", "1.50", "1"]
    assert t["EfficientNet-B2"] == ["1", "0.50", "0.50", "0.50", "0"]
    assert t["**Study**"] == ["3", "3.50", "3.50", "1.17", "1"]
    assert "- Wall time from submission (2026-11-20T10:00:00Z) to the last run's end: **2 h 30 min**" in text
    assert "(3.50 compute hours in it: 1.4 runs in parallel on average)" in text
    assert t["torch"] == ["`2.14.1+cu130`"] and t["GPU"] == ["`NVIDIA H100 80GB HBM3`"] and t["driver"] == ["`580.1`"]
    assert "Warning" not in text
    assert info["gpu_hours"] == 3.5 and info["groups"]["DenseNet-121"]["gpu_hours"] == 3.0
    assert info["submit_to_last_result_seconds"] == 9000 and info["differ_in"] == []
    assert rows[0][:6] == ["job_id", "group", "seed", "attempts", "wall_seconds", "gpu_seconds"]
    assert [r[:6] for r in rows[1:]] == [
        [d1.job_id, "DenseNet-121", 1, 1, 3600.0, 3600.0],
        [d2.job_id, "DenseNet-121", 2, 2, 7200.0, 7200.0],
        [e1.job_id, "EfficientNet-B2", 1, 1, 1800.0, 1800.0],
    ]


def test_runs_on_other_versions_gpus_or_settings_get_one_warning_line(study):
    store, (d1, d2, e1) = study
    store.put_text(d1.keys.provenance, json.dumps(record([60.0], ended="2026-11-20T10:01:00Z")))
    store.put_text(
        d2.keys.provenance, json.dumps(record([60.0], gpu="NVIDIA A100-SXM4-40GB", ended="2026-11-20T10:01:00Z"))
    )
    store.put_text(
        e1.keys.provenance, json.dumps(record([60.0], torch="2.13.0+cu126", ended="2026-11-20T10:02:00Z", det=False))
    )
    text, _, info = section(store)
    warnings = [line for line in text.splitlines() if "Warning" in line]
    assert warnings == [
        "**Warning:** the runs differ in torch, GPU, deterministic, cudnn_benchmark; differences between them may "
        "come from that as well as from the seed."
    ]
    assert "`2.14.1+cu130` (2 runs), `2.13.0+cu126` (1 run)" in text
    assert info["differ_in"] == ["torch", "GPU", "deterministic", "cudnn_benchmark"]


def test_missing_and_damaged_records_are_counted_never_fatal(study):
    store, (d1, d2, e1) = study
    store.put_text(d1.keys.provenance, json.dumps(record([7200.0], gpu=None, ended="2026-11-20T12:00:00Z")))
    store.put_text(d2.keys.provenance, "{not json")
    text, _, info = section(store)
    assert "- 2 of 3 runs have no readable provenance.json" in text
    t = table(text)
    assert t["**Study**"][:3] == ["1", "0.00", "2.00"]  # a CPU run: compute hours, no GPU-hours
    assert t["GPU"] == ["`none (CPU)`"]
    assert (info["runs"], info["runs_with_record"]) == (3, 1)
    store.delete(d1.keys.provenance)
    text, rows, info = section(store)
    assert "None of the 3 runs has a readable provenance.json" in text and info["runs_with_record"] == 0


def test_store_timestamps_parse_and_anything_else_is_none():
    assert seconds_since_epoch("1970-01-01T01:00:00Z") == 3600.0
    assert seconds_since_epoch("yesterday") is None and seconds_since_epoch(None) is None
