"""How a failed task goes on: retried later with backoff, never dropped, or final for the user's errors."""

from __future__ import annotations

import json

import pytest
from celery.exceptions import Reject, Retry

from jobs.errors import DatasetError, StoreError
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
