"""How a failed task goes on: retried later with backoff, never dropped, or final for the user's errors."""

from __future__ import annotations

import json

import pytest
from celery.exceptions import Reject, Retry

from jobs.errors import CxrStudyError, DatasetError, StoreError
from jobs.spec.study import expand, parse_study
from jobs.store import LocalStore
from jobs.store.records import run_state, write_study
from worker import tasks
from worker.app import make_app
from worker.coord import open_coord
from worker.settings import Settings


class FakeTask:
    """What the helpers use of a bound Celery task: its app and ``retry``."""

    def __init__(self, app, fails_with: Exception | None = None):
        self.app, self.fails_with, self.countdowns = app, fails_with, []

    def retry(self, countdown=None, max_retries=None):
        self.countdowns.append(countdown)
        raise self.fails_with or Retry("retry", when=countdown)


@pytest.fixture
def world(tmp_path):
    store = LocalStore(tmp_path / "store")
    spec = parse_study({"name": "st", "dataset": "/d", "runs": {"densenet121": [1, 2]}})
    jobs = expand(spec, "st-1", "datasets/d/h")
    write_study(store, spec.spec(), "st-1", "datasets/d/h", jobs)
    settings = Settings(
        broker_url=f"local://{tmp_path / 'broker'}", store=str(store.root), retry_backoff=10, max_attempts=3
    )
    doc = json.loads(store.get_text("studies/st-1/study.json"))
    return store, jobs, settings, open_coord(settings.broker_url, store.uri), doc


def test_a_retry_that_cannot_be_sent_leaves_the_message_for_redelivery():
    with pytest.raises(Retry):
        tasks._retry_later(FakeTask(None), 5.0, "job")
    with pytest.raises(Reject) as caught:  # the broker is away: reject with requeue, never ack
        tasks._retry_later(FakeTask(None, ConnectionError("broker away")), 5.0, "job")
    assert caught.value.requeue is True


def test_a_passing_prepare_error_is_retried_after_the_backoff_and_fails_no_run(world):
    store, jobs, settings, coord, doc = world
    task = FakeTask(make_app(settings))
    with pytest.raises(Retry):
        tasks._retry_or_fail(
            task, settings, store, coord, doc, doc["data_prefix"], StoreError("GET: S3 error 503"), 2, "prepare"
        )
    assert len(task.countdowns) == 1 and 10 <= task.countdowns[0] <= 20  # attempt 2: between 10 and 20 s
    assert [run_state(store, j).state for j in jobs] == ["queued", "queued"]


@pytest.mark.parametrize("exc, attempt", [(DatasetError("images_001/x.png is not a PNG"), 1), (StoreError("503"), 3)])
def test_a_users_error_or_the_last_attempt_fails_every_run_with_the_reason(world, exc, attempt):
    store, jobs, settings, coord, doc = world
    task = FakeTask(make_app(settings))
    tasks._retry_or_fail(task, settings, store, coord, doc, doc["data_prefix"], exc, attempt, "prepare")
    assert task.countdowns == []
    for job in jobs:
        state = run_state(store, job)
        assert state.state == "failed" and state.detail["stage"] == "prepare"
        assert state.detail["error"] == f"{type(exc).__name__}: {exc}"


def test_a_task_started_past_its_attempts_is_final():
    with pytest.raises(tasks.AttemptsExhausted, match="shard train-000001.tar did not finish in 3 attempts"):
        tasks._attempts_left(Settings(max_attempts=3), 4, "shard train-000001.tar")
    tasks._attempts_left(Settings(max_attempts=3), 3, "shard train-000001.tar")  # the third may run


class RecordingApp:
    """An app that records the tasks it is asked to send."""

    def __init__(self):
        self.sent = []

    def send_task(self, name, kwargs=None, queue=None):
        self.sent.append((name, kwargs, queue))


@pytest.fixture
def two_datasets(tmp_path):
    """A study whose two variants differ in CLAHE: each has its own prepared dataset."""
    store = LocalStore(tmp_path / "store")
    spec = parse_study(
        {
            "name": "arms",
            "dataset": "/d",
            "runs": {"densenet121": [1, 2]},
            "variants": {"clahe": {}, "plain": {"preprocessing": {"clahe": False}}},
        }
    )
    clahe, plain = spec.preprocessings()
    prefixes = {clahe: "datasets/d/aaa", plain: "datasets/d/bbb"}
    jobs = expand(spec, "arms-1", prefixes)
    write_study(store, spec.spec(), "arms-1", jobs[0].data_prefix, jobs, datasets={v: k for k, v in prefixes.items()})
    settings = Settings(broker_url=f"local://{tmp_path / 'broker'}", store=str(store.root), max_attempts=3)
    doc = json.loads(store.get_text("studies/arms-1/study.json"))
    return store, jobs, settings, open_coord(settings.broker_url, store.uri), doc


def test_each_dataset_of_a_study_with_variants_enqueues_only_its_own_runs(two_datasets):
    store, jobs, _, _, doc = two_datasets
    assert tasks.study_datasets(doc) == {
        "datasets/d/aaa": doc["spec"]["preprocessing"],
        "datasets/d/bbb": {**doc["spec"]["preprocessing"], "clahe": False},
    }
    app = RecordingApp()
    tasks._enqueue_runs(app, store, "arms-1", doc, "datasets/d/bbb")
    plain = [j.job_id for j in jobs if j.variant == "plain"]
    assert [kwargs["job_id"] for _, kwargs, _ in app.sent] == plain and len(plain) == 2
    assert tasks._dataset_of(doc, None) == "datasets/d/aaa"  # a message from before variants: the first
    with pytest.raises(CxrStudyError, match=r"arms-1: datasets/d/ccc is not one of the study's datasets"):
        tasks._dataset_of(doc, "datasets/d/ccc")


def test_a_failed_prepare_fails_only_the_runs_on_its_dataset(two_datasets):
    store, jobs, settings, coord, doc = two_datasets
    task = FakeTask(RecordingApp())
    tasks._retry_or_fail(
        task, settings, store, coord, doc, "datasets/d/bbb", DatasetError("no images"), 1, "prepare of bbb"
    )
    assert [(j.variant, run_state(store, j).state) for j in jobs] == [
        ("clahe", "queued"),
        ("clahe", "queued"),
        ("plain", "failed"),
        ("plain", "failed"),
    ]
    assert task.app.sent == []  # the other dataset's runs have not ended: no aggregate yet


def test_a_prepare_message_names_a_dataset_only_when_it_is_not_the_studys_first():
    from orchestrator.distributed import send_prepare

    app = RecordingApp()
    send_prepare(app, "arms-1", "datasets/d/aaa", "datasets/d/aaa")  # what workers from before variants take
    send_prepare(app, "arms-1", "datasets/d/bbb", "datasets/d/aaa")
    assert app.sent == [
        ("cxrstudy.prepare", {"study_id": "arms-1"}, "cpu"),
        ("cxrstudy.prepare", {"study_id": "arms-1", "data_prefix": "datasets/d/bbb"}, "cpu"),
    ]
