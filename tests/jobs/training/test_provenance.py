"""provenance.json: one record per run, an entry per attempt, totals of wall and GPU seconds."""

import json

import torch

from jobs.spec.study import JobSpec, TrainConfig
from jobs.training import provenance


def _job(m) -> JobSpec:
    return JobSpec("prov", "test_resnet-s0", "test_resnet", 0, TrainConfig(), m["prefix"])


def test_each_attempt_is_an_entry_and_the_totals_count_gpu_seconds_apart(prepared):
    store, m = prepared
    job = _job(m)
    first = provenance.start(store, job, torch.device("cpu"), "w1", 1)
    provenance.lap(store, job, first, 12.34)
    second = provenance.start(store, job, torch.device("cpu"), "w2", 2)
    second["attempts"][-1]["device"] = "cuda:0"  # as a GPU attempt records it
    done = provenance.finish(store, job, second, 30.0)
    stored = json.loads(store.get_text(job.keys.provenance))
    assert stored == done
    assert [(a["attempt"], a["worker"], a["seconds"]) for a in stored["attempts"]] == [(1, "w1", 12.3), (2, "w2", 30.0)]
    assert stored["attempts"][0]["ended"] is None and stored["attempts"][1]["ended"] == stored["ended"]
    assert (stored["wall_seconds"], stored["gpu_seconds"], stored["status"]) == (42.3, 30.0, "succeeded")
    assert stored["started"] == stored["attempts"][0]["started"]


def test_a_damaged_record_is_started_again_not_a_failed_run(prepared):
    store, m = prepared
    job = _job(m)
    for damaged in ("{not json", "[1, 2]", '{"attempts": [{"seconds": "long"}]}', '{"attempts": 7}'):
        store.put_text(job.keys.provenance, damaged)
        record = provenance.start(store, job, torch.device("cpu"), "w1", 3)
        assert [a["attempt"] for a in record["attempts"]] == [3], damaged
        assert json.loads(store.get_text(job.keys.provenance))["status"] == "running"
