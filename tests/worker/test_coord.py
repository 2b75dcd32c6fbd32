"""Leases, attempts and claims, on both backends; settings from the environment."""

from __future__ import annotations

import time

import pytest

from jobs.errors import ConfigError
from worker.coord import FileCoord, RedisCoord, open_coord
from worker.settings import Settings


@pytest.fixture(params=["redis", "file"])
def coord(request, tmp_path):
    if request.param == "file":
        return FileCoord(tmp_path / "coord")
    c = RedisCoord(request.getfixturevalue("redis_url"))
    c.r.flushall()
    return c


def test_a_lease_has_one_holder_until_released_or_expired(coord):
    assert coord.acquire("job", "a", ttl=0.6) is None
    assert coord.acquire("job", "b", ttl=0.6) == "a"
    assert coord.heartbeat("job", "a", ttl=0.6) and not coord.heartbeat("job", "b", ttl=0.6)
    coord.release("job", "b")  # not the holder: nothing happens
    assert coord.holder("job") == "a"
    time.sleep(0.8)  # expired without a heartbeat
    assert coord.acquire("job", "b", ttl=5) is None
    assert not coord.heartbeat("job", "a", ttl=5)  # a lost it: it must stop
    coord.release("job", "b")
    assert coord.holder("job") is None
    assert [(e["owner"], e["event"]) for e in coord.lease_log("job")] == [
        ("a", "acquire"),
        ("b", "acquire"),
        ("b", "release"),
    ]


def test_a_heartbeat_retakes_a_vanished_lease(coord, tmp_path):
    coord.acquire("job", "a", ttl=5)
    if isinstance(coord, RedisCoord):
        coord.r.flushall()  # Redis wiped under a running job
    else:
        (tmp_path / "coord" / "lease" / "job").unlink()
    assert coord.heartbeat("job", "a", ttl=5) and coord.holder("job") == "a"
    assert coord.lease_log("job")[-1]["event"] == "reacquire"


def test_attempts_and_claims(coord):
    assert [coord.attempts("j", 1), coord.attempts("j", 1), coord.attempts("j", -1)] == [1, 2, 1]
    assert coord.claim("aggregate:s:1") and not coord.claim("aggregate:s:1") and coord.claim("aggregate:s:2")


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
