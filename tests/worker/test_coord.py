"""Leases, attempts and claims, on both backends; settings from the environment."""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

import pytest

from jobs.errors import ConfigError
from worker.coord import HELD, LOST, RUNNING, VANISHED, FileCoord, Lease, RedisCoord, open_coord
from worker.settings import Settings


@pytest.fixture(params=["redis", "file"])
def coord(request, tmp_path):
    if request.param == "file":
        return FileCoord(tmp_path / "coord")
    c = RedisCoord(request.getfixturevalue("redis_url"))
    c.r.flushall()
    return c


def wipe(coord) -> None:
    """Lose every lease and fencing counter, as a FLUSHALL (or a Redis restarted without its data) does."""
    if isinstance(coord, RedisCoord):
        coord.r.flushall()
    else:
        for sub in ("lease", "fence"):
            shutil.rmtree(coord.root / sub, ignore_errors=True)


def events(coord, job="job"):
    return [(e["owner"], e["event"], e["token"]) for e in coord.lease_log(job)]


def test_a_lease_has_one_holder_until_released_or_expired_and_each_acquisition_a_new_token(coord):
    a = coord.acquire("job", "a", ttl=0.6)
    assert a == Lease("job", "a", 1)
    assert coord.acquire("job", "b", ttl=0.6) is None and coord.holder("job") == "a"
    assert coord.renew(a, ttl=0.6) == HELD
    coord.release(Lease("job", "b", 1))  # not the holder: nothing happens
    assert coord.holder("job") == "a"
    time.sleep(0.8)  # expired without a heartbeat
    b = coord.acquire("job", "b", ttl=5)
    assert b == Lease("job", "b", 2)
    assert coord.renew(a, ttl=5) == LOST and not coord.retake(a, ttl=5)  # a lost it: it must stop
    coord.release(b)
    assert coord.holder("job") is None
    # b finished and released: a stale holder that wakes now still never takes the job back
    assert coord.renew(a, ttl=5) == LOST and not coord.retake(a, ttl=5)
    assert coord.holder("job") is None
    assert events(coord) == [("a", "acquire", 1), ("b", "acquire", 2), ("b", "release", 2)]


def test_a_vanished_lease_is_taken_back_only_when_nobody_acquired_the_job_since(coord):
    a = coord.acquire("job", "a", ttl=5)
    wipe(coord)  # the broker lost its keys under a running job
    assert coord.renew(a, ttl=5) == VANISHED
    assert coord.retake(a, ttl=5) and coord.holder("job") == "a" and coord.renew(a, ttl=5) == HELD
    assert events(coord)[-1] == ("a", "reacquire", 1)
    assert coord.acquire("job", "b", ttl=5) is None  # retaken: a copy of the job is dropped
    short = coord.acquire("other", "a", ttl=0.3)
    time.sleep(0.5)  # its heartbeat came late, and nobody took the job meanwhile
    assert coord.renew(short, ttl=5) == VANISHED and coord.retake(short, ttl=5)


def test_after_a_wipe_an_acquisition_takes_a_token_above_the_stores_floor(coord):
    a = coord.acquire("job", "a", ttl=5)
    wipe(coord)
    b = coord.acquire("job", "b", ttl=5, floor=a.token)  # the worker read a's token from fence.json
    assert b.token == 2
    assert coord.renew(a, ttl=5) == LOST and not coord.retake(a, ttl=5)


def test_attempts_and_claims(coord):
    assert [coord.attempts("j", 1), coord.attempts("j", 1), coord.attempts("j", -1)] == [1, 2, 1]
    assert coord.claim("aggregate:s:1", ttl=0.5) and not coord.claim("aggregate:s:1", ttl=0.5)
    assert coord.claim("aggregate:s:2", ttl=0.5)
    time.sleep(0.7)
    assert coord.claim("aggregate:s:1", ttl=5)  # a claim lapses: its job may have been lost
    coord.unclaim("aggregate:s:1")  # resume runs that ending again
    assert coord.claim("aggregate:s:1", ttl=5) and not coord.claim("aggregate:s:1", ttl=5)


def raw_running(coord) -> list[str] | None:
    """The running list as KEDA reads it (Redis), or None (a local broker has none)."""
    return coord.r.lrange("cxrstudy.running", 0, -1) if isinstance(coord, RedisCoord) else None


def test_held_leases_count_as_running_until_released_or_expired(coord):
    assert RUNNING == "cxrstudy.running"  # the name the chart's KEDA trigger reads
    assert coord.queue_depths() == {"gpu": 0, "cpu": 0, "running": 0} and coord.running_jobs() == []
    a, b = coord.acquire("a", "w1", ttl=5), coord.acquire("b", "w2", ttl=5)
    assert coord.queue_depths() == {"gpu": 0, "cpu": 0, "running": 2}
    assert coord.running_jobs() == ["a", "b"]
    assert coord.acquire("a", "w3", ttl=5) is None and coord.queue_depths()["running"] == 2  # a copy adds none
    coord.release(Lease("b", "w3", 1))  # not the holder: its entry stays
    assert coord.queue_depths()["running"] == 2 and coord.running_jobs() == ["a", "b"]
    coord.release(a)
    assert coord.queue_depths() == {"gpu": 0, "cpu": 0, "running": 1} and coord.running_jobs() == ["b"]
    if isinstance(coord, RedisCoord):
        assert raw_running(coord) == ["cxrstudy:lease:b|w2"]
    coord.release(b)
    assert coord.queue_depths()["running"] == 0 and coord.running_jobs() == []
    coord.acquire("dead", "w4", ttl=0.2)  # its worker is killed: no heartbeat, no release
    assert coord.queue_depths()["running"] == 1 and coord.running_jobs() == ["dead"]
    time.sleep(0.4)
    if isinstance(coord, RedisCoord):
        assert raw_running(coord) == ["cxrstudy:lease:dead|w4"]  # until a sweep
    assert coord.queue_depths()["running"] == 0 and coord.running_jobs() == []
    if isinstance(coord, RedisCoord):
        assert raw_running(coord) == []


def test_a_heartbeat_sweeps_the_entries_of_dead_workers_and_still_says_held_lost_or_vanished(redis_url):
    coord = RedisCoord(redis_url)
    coord.r.flushall()
    live, dead = coord.acquire("live", "w1", ttl=5), coord.acquire("dead", "w2", ttl=0.2)
    time.sleep(0.4)
    assert raw_running(coord) == ["cxrstudy:lease:live|w1", "cxrstudy:lease:dead|w2"]
    assert coord.renew(live, ttl=5) == HELD
    assert raw_running(coord) == ["cxrstudy:lease:live|w1"]
    coord.r.delete(RUNNING)  # the list lost (deleted by hand): the next heartbeat of a held lease puts it back
    assert coord.renew(live, ttl=5) == HELD and raw_running(coord) == ["cxrstudy:lease:live|w1"]
    assert coord.acquire("dead", "w3", ttl=5).token == 2
    assert coord.renew(dead, ttl=5) == LOST
    assert raw_running(coord) == ["cxrstudy:lease:live|w1", "cxrstudy:lease:dead|w3"]


def test_a_retake_adds_exactly_one_entry(coord):
    a = coord.acquire("job", "a", ttl=0.2)
    time.sleep(0.4)  # the heartbeat came late
    assert coord.retake(a, ttl=5)  # no sweep ran since: the old entry is still in the list
    assert coord.queue_depths()["running"] == 1 and coord.running_jobs() == ["job"]
    if isinstance(coord, RedisCoord):
        assert raw_running(coord) == ["cxrstudy:lease:job|a"]
    wipe(coord)  # the broker lost every key, the running list too
    assert coord.queue_depths()["running"] == 0
    assert coord.renew(a, ttl=5) == VANISHED and coord.retake(a, ttl=5)
    assert coord.queue_depths()["running"] == 1 and coord.running_jobs() == ["job"]
    if isinstance(coord, RedisCoord):
        assert raw_running(coord) == ["cxrstudy:lease:job|a"]
    coord.release(a)
    assert coord.queue_depths()["running"] == 0 and coord.running_jobs() == []


@pytest.mark.parametrize("broker", ["redis", "local"])
def test_the_running_count_covers_every_store_on_the_broker_and_running_jobs_only_its_own(broker, request, tmp_path):
    """KEDA scales one Deployment on one Redis database: the jobs of every store sharing it count."""
    url = request.getfixturevalue("redis_url") if broker == "redis" else f"local://{tmp_path / 'broker'}"
    one, two, cluster = open_coord(url, "s3://bucket/one"), open_coord(url, "s3://bucket/two"), open_coord(url)
    if broker == "redis":
        one.r.flushall()
    assert one.acquire("job", "a", ttl=5) and one.acquire("other", "a2", ttl=5)
    assert two.acquire("job", "b", ttl=5)
    for coord in (one, two, cluster):  # `cxrstudy cluster status` opens it without a store
        assert coord.queue_depths() == {"gpu": 0, "cpu": 0, "running": 3}
    assert (one.running_jobs(), two.running_jobs(), cluster.running_jobs()) == (["job", "other"], ["job"], [])
    if broker == "redis":
        assert one.r.llen("cxrstudy.running") == 3
    one.release(Lease("job", "a", 1))
    assert two.queue_depths()["running"] == 2 and two.running_jobs() == ["job"]
    assert one.running_jobs() == ["other"]


def test_broker_urls():
    assert isinstance(open_coord("local:///tmp/x"), FileCoord)
    with pytest.raises(ConfigError, match=r"'amqp://u:\*\*\*@h//': use redis://"):
        open_coord("amqp://u:secret@h//")
    with pytest.raises(ConfigError, match="cannot reach the broker at redis://:\\*\\*\\*@127.0.0.1:1/0"):
        RedisCoord("redis://:pw@127.0.0.1:1/0").ping()


def test_the_local_broker_keeps_all_its_folders_under_its_path(tmp_path):
    from worker.app import broker_config

    url, options = broker_config(Settings(broker_url=f"local://{tmp_path / 'broker'}"))
    assert url == "filesystem://"
    folders = {k: v for k, v in options.items() if k.endswith(("_in", "_out", "_folder"))}
    assert folders == {
        "data_folder_in": str(tmp_path / "broker" / "queue"),
        "data_folder_out": str(tmp_path / "broker" / "queue"),
        "processed_folder": str(tmp_path / "broker" / "processed"),
        "control_folder": str(tmp_path / "broker" / "control"),  # not ./control in whatever folder the CLI ran
    }


def test_settings_from_the_environment_and_flags(monkeypatch):
    monkeypatch.setenv("CXRSTUDY_BROKER_URL", "redis://env/0")
    monkeypatch.setenv("CXRSTUDY_LEASE_TTL", "9")
    s = Settings.from_env(broker_url="redis://flag/0", store=None)
    assert (s.broker_url, s.lease_ttl, s.max_attempts) == ("redis://flag/0", 9.0, 3)
    assert Settings.from_env(broker_url="x").env()["CXRSTUDY_LEASE_TTL"] == "9.0"
    with pytest.raises(ConfigError, match="no store: pass --store or set CXRSTUDY_STORE"):
        s.need("broker_url", "store")
    monkeypatch.setenv("CXRSTUDY_MAX_ATTEMPTS", "many")
    with pytest.raises(ConfigError, match="CXRSTUDY_MAX_ATTEMPTS='many': not a number"):
        Settings.from_env()
    monkeypatch.setenv("CXRSTUDY_MAX_ATTEMPTS", "0")
    with pytest.raises(ConfigError, match="CXRSTUDY_MAX_ATTEMPTS: must be at least 1"):
        Settings.from_env()


@pytest.mark.parametrize("broker", ["redis", "local"])
def test_two_stores_on_one_broker_share_no_lease_attempt_or_claim(broker, request, tmp_path):
    """The same study in two stores has the same job ids: before the keys were scoped to the store,
    the second store's runs counted the first's attempts and found its aggregate claim taken."""
    url = request.getfixturevalue("redis_url") if broker == "redis" else f"local://{tmp_path / 'broker'}"
    clean, rerun = open_coord(url, "s3://bucket/clean"), open_coord(url, "s3://bucket/rerun")
    assert clean.acquire("job", "a", ttl=5).token == 1 and clean.attempts("job", 1) == 1
    assert clean.claim("aggregate:s:d", ttl=60)
    assert rerun.acquire("job", "b", ttl=5).token == 1 and rerun.attempts("job", 1) == 1
    assert rerun.claim("aggregate:s:d", ttl=60)
    assert (clean.holder("job"), rerun.holder("job")) == ("a", "b")


@pytest.mark.parametrize(
    "url, problem",
    [
        ("redis://host:abc/0", "the port is not a number from 0 to 65535; use redis://"),
        ("redis://host:99999/0", "the port is not a number from 0 to 65535; use redis://"),
        ("redis://:s3cret@host:6379/zero", "the database 'zero' is not a number; use redis://"),
        ("local://broker", "a local broker needs an absolute path, local:///path (three slashes)"),
        ("local:///proc/self/broker", "its folder /proc/self/broker is not writable (No such file or directory)"),
    ],
)
def test_a_broker_url_that_cannot_be_used_is_one_line_naming_the_flag_and_the_variable(url, problem):
    with pytest.raises(ConfigError) as caught:
        open_coord(url, "s3://bucket/x")
    message = str(caught.value)
    assert message.startswith(f"broker URL '{url.replace('s3cret', '***')}': {problem}")
    assert message.endswith("(fix --broker / CXRSTUDY_BROKER_URL)") and "s3cret" not in message


def test_a_local_broker_on_a_read_only_file_system_or_under_a_file_is_one_line(tmp_path, monkeypatch):
    from worker.app import broker_config

    (tmp_path / "file.txt").write_text("")
    url = f"local://{tmp_path / 'file.txt' / 'broker'}"
    for make in (lambda: open_coord(url, "s3://bucket/x"), lambda: broker_config(Settings(broker_url=url))):
        with pytest.raises(ConfigError, match=rf"its folder {tmp_path}/file.txt/broker is not writable \(Not a dir"):
            make()

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)  # a read-only mount: root cannot write there either
    url = f"local://{tmp_path / 'broker'}"
    with pytest.raises(ConfigError) as caught:
        broker_config(Settings(broker_url=url))
    assert str(caught.value) == (
        f"broker URL '{url}': its folder {tmp_path / 'broker'} is not writable (Read-only file system); "
        "use local:///path with a folder you can write to (fix --broker / CXRSTUDY_BROKER_URL)"
    )


def test_retries_back_off_exponentially_with_jitter_under_the_visibility_timeout():
    s = Settings(broker_url="redis://h/0", retry_backoff=10, retry_backoff_max=600, visibility_timeout=300)
    assert [s.retry_delay(n, 0.0) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]  # the least: half of each step
    assert [s.retry_delay(n, 0.999) for n in (1, 2, 3)] == pytest.approx([9.995, 19.99, 39.98])
    # every wait is at least the longest one before it: waits grow whatever the jitter
    assert s.retry_delay(2, 0.0) >= s.retry_delay(1, 0.999) and s.retry_delay(3, 0.0) >= s.retry_delay(2, 0.999)
    # past the cap: 0.9 x the visibility timeout on Redis (a retry waits unacknowledged in its worker)
    assert s.retry_delay(9, 1.0) == 270 and s.retry_delay(9, 0.0) == 135
    assert Settings(broker_url="local:///q", retry_backoff=10, retry_backoff_max=600).retry_delay(9, 1.0) == 600


def test_backoff_settings_come_from_the_environment_and_must_be_positive(monkeypatch):
    monkeypatch.setenv("CXRSTUDY_RETRY_BACKOFF", "2.5")
    assert Settings.from_env().retry_backoff == 2.5
    monkeypatch.setenv("CXRSTUDY_RETRY_BACKOFF_MAX", "0")
    with pytest.raises(ConfigError, match="CXRSTUDY_RETRY_BACKOFF_MAX: must be positive"):
        Settings.from_env()


def test_a_channel_of_a_lost_broker_connection_raises_a_connection_error_the_worker_survives():
    """kombu 5.7 raised AttributeError here, which Celery takes for an unrecoverable error (the
    worker exited on a Redis restart); a connection error is logged and the worker reconnects."""
    import redis
    from kombu.transport import redis as kombu_redis

    from worker.app import survive_broker_restart

    survive_broker_restart()
    survive_broker_restart()  # once only: not wrapped twice
    channel = object.__new__(kombu_redis.Channel)
    channel.connection = None
    with pytest.raises(redis.exceptions.ConnectionError, match="the broker connection was closed"):
        channel._connparams()


def test_the_broker_says_which_train_jobs_it_holds(redis_url):
    from worker.app import make_app
    from worker.tasks import enqueue_aggregate, enqueue_train

    coord = open_coord(redis_url, "s3://bucket/held")
    coord.r.delete("gpu", "cpu")
    app = make_app(Settings(broker_url=redis_url, store="s3://bucket/held"))
    enqueue_train(app, "st-1", ["job-a", "job-b"])
    enqueue_aggregate(app, "st-1")  # not a train job
    assert coord.queued_jobs() == {"job-a", "job-b"}
    coord.r.delete("gpu", "cpu")
    assert coord.queued_jobs() == set()


def test_a_restore_lock_left_by_a_dead_worker_holds_redelivery_back_seconds_not_minutes(redis_url):
    """A worker SIGKILLed inside kombu's restore sweep (or Redis restarted during it) leaves the sweep's
    lock behind; with kombu's default of 300 s no unacked message came back for five minutes."""
    from kombu import Connection

    from worker.app import broker_config

    url, options = broker_config(Settings(broker_url=redis_url, visibility_timeout=1, restore_interval=1))
    queue = f"mutex-{time.time_ns()}"
    with Connection(url, transport_options=options) as dead, Connection(url, transport_options=options) as live:
        dead.SimpleQueue(queue).put({"job": 1})
        taken = dead.SimpleQueue(queue).get(timeout=5)  # delivered, never acknowledged: its worker dies
        channel = dead.default_channel
        lock = channel.client.lock(channel.unacked_mutex_key, timeout=channel.unacked_mutex_expire)  # as kombu does
        assert lock.acquire(blocking=False)  # ... inside the restore sweep, holding its lock
        assert taken.payload == {"job": 1}
        sweeper = live.default_channel
        started = time.monotonic()
        while sweeper.client.llen(queue) == 0:
            assert time.monotonic() - started < 20, "the message was not redelivered"
            sweeper.qos.restore_visible(num=10, interval=1)
            time.sleep(0.5)
        assert time.monotonic() - started >= 1  # held back while the lock lived, then given back
        again = live.SimpleQueue(queue).get(timeout=5)
        assert again.payload == {"job": 1}
        again.ack()
