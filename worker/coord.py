"""Coordination between workers: job leases, attempt counters, once-only claims, queue depths.

Two backends behind one interface: Redis (the production broker's own server) and a directory
(the ``local://`` broker of the embedded demo, where every worker runs on one machine).

The lease is what makes a redelivered job safe: a worker trains a job only while it holds
``lease:<job>`` (SET NX with a TTL, renewed by a heartbeat). A second copy of the message finds
the lease held and is dropped; a worker that loses its lease (expired, taken) stops without
writing. Every acquire and release is appended to ``lease-log:<job>`` so overlaps can be audited.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from jobs.errors import ConfigError

PREFIX = "cxrstudy:"
QUEUES = ("gpu", "cpu")


class Coordinator:
    def acquire(self, job_id: str, owner: str, ttl: float) -> str | None:
        """Take the lease; None on success, else the current holder."""
        raise NotImplementedError

    def heartbeat(self, job_id: str, owner: str, ttl: float) -> bool:
        """Renew the lease (re-taking it if it vanished, e.g. Redis was flushed); False if another holds it."""
        raise NotImplementedError

    def release(self, job_id: str, owner: str) -> None:
        raise NotImplementedError

    def holder(self, job_id: str) -> str | None:
        raise NotImplementedError

    def lease_log(self, job_id: str) -> list[dict]:
        raise NotImplementedError

    def attempts(self, job_id: str, delta: int) -> int:
        """Add ``delta`` to the job's attempt counter and return it."""
        raise NotImplementedError

    def claim(self, key: str) -> bool:
        """True for the first caller only."""
        raise NotImplementedError

    def queue_depths(self) -> dict[str, int]:
        raise NotImplementedError

    def extend_visibility(self, task_id: str) -> None:
        """Keep a running job's unacknowledged message from being redelivered (Redis only)."""


class RedisCoord(Coordinator):
    # kombu's Redis transport keeps unacknowledged messages in the hash ``unacked`` (delivery tag ->
    # [message, exchange, routing key]) and their delivery times in the sorted set ``unacked_index``;
    # a sweep redelivers those older than the visibility timeout. Bumping the score keeps a live
    # job's message where it is, so the timeout can be short enough to recover dead workers fast.
    UNACKED, UNACKED_INDEX = "unacked", "unacked_index"

    _RENEW = """
    local v = redis.call('GET', KEYS[1])
    if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
    if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
    return 0
    """
    _RELEASE = """
    if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
    return 0
    """

    def __init__(self, url: str):
        import redis

        self.url = url
        self.r = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30, decode_responses=True)
        self._tags: dict[str, str] = {}

    def ping(self) -> None:
        import redis

        try:
            self.r.ping()
        except redis.AuthenticationError:
            raise ConfigError(
                f"the broker at {_safe(self.url)} refused the password: fix CXRSTUDY_BROKER_URL"
            ) from None
        except redis.RedisError as exc:
            raise ConfigError(
                f"cannot reach the broker at {_safe(self.url)} ({type(exc).__name__}: {exc}); "
                "check --broker / CXRSTUDY_BROKER_URL"
            ) from None

    def _log(self, job_id: str, owner: str, event: str) -> None:
        key = f"{PREFIX}lease-log:{job_id}"
        self.r.rpush(key, json.dumps({"owner": owner, "event": event, "t": time.time()}))
        self.r.expire(key, 14 * 86400)

    def acquire(self, job_id, owner, ttl):
        if self.r.set(f"{PREFIX}lease:{job_id}", owner, nx=True, px=int(ttl * 1000)):
            self._log(job_id, owner, "acquire")
            return None
        return self.r.get(f"{PREFIX}lease:{job_id}") or "(expired)"

    def heartbeat(self, job_id, owner, ttl):
        got = self.r.eval(self._RENEW, 1, f"{PREFIX}lease:{job_id}", owner, int(ttl * 1000))
        if got == 2:
            self._log(job_id, owner, "reacquire")
        return got != 0

    def release(self, job_id, owner):
        if self.r.eval(self._RELEASE, 1, f"{PREFIX}lease:{job_id}", owner):
            self._log(job_id, owner, "release")

    def holder(self, job_id):
        return self.r.get(f"{PREFIX}lease:{job_id}")

    def lease_log(self, job_id):
        return [json.loads(x) for x in self.r.lrange(f"{PREFIX}lease-log:{job_id}", 0, -1)]

    def attempts(self, job_id, delta):
        key = f"{PREFIX}attempts:{job_id}"
        n = self.r.incrby(key, delta)
        self.r.expire(key, 14 * 86400)
        return int(n)

    def claim(self, key):
        return bool(self.r.set(f"{PREFIX}claim:{key}", str(time.time()), nx=True, ex=30 * 86400))

    def queue_depths(self):
        return {q: int(self.r.llen(q)) for q in QUEUES}

    def extend_visibility(self, task_id):
        tag = self._tags.get(task_id)
        if tag is None:
            for t, payload in self.r.hscan_iter(self.UNACKED):
                if f'"id": "{task_id}"' in payload or f'"id":"{task_id}"' in payload:
                    tag = self._tags[task_id] = t
                    break
            else:
                return
        self.r.zadd(self.UNACKED_INDEX, {tag: time.time()}, xx=True)


class FileCoord(Coordinator):
    """The same operations on a directory, serialised by one ``flock``: workers on one machine."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def ping(self) -> None:
        pass

    @contextmanager
    def _locked(self):
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read(self, name: str):
        try:
            return json.loads((self.root / name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _write(self, name: str, value) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)

    def _lease(self, job_id):
        lease = self._read(f"lease/{job_id}")
        return lease if lease and lease["expires"] > time.time() else None

    def _log(self, job_id, owner, event):
        log = self._read(f"lease-log/{job_id}") or []
        self._write(f"lease-log/{job_id}", [*log, {"owner": owner, "event": event, "t": time.time()}])

    def acquire(self, job_id, owner, ttl):
        with self._locked():
            lease = self._lease(job_id)
            if lease:
                return lease["owner"]
            self._write(f"lease/{job_id}", {"owner": owner, "expires": time.time() + ttl})
            self._log(job_id, owner, "acquire")
            return None

    def heartbeat(self, job_id, owner, ttl):
        with self._locked():
            lease = self._lease(job_id)
            if lease and lease["owner"] != owner:
                return False
            self._write(f"lease/{job_id}", {"owner": owner, "expires": time.time() + ttl})
            if not lease:
                self._log(job_id, owner, "reacquire")
            return True

    def release(self, job_id, owner):
        with self._locked():
            lease = self._lease(job_id)
            if lease and lease["owner"] == owner:
                (self.root / "lease" / job_id).unlink()
                self._log(job_id, owner, "release")

    def holder(self, job_id):
        lease = self._lease(job_id)
        return lease["owner"] if lease else None

    def lease_log(self, job_id):
        return self._read(f"lease-log/{job_id}") or []

    def attempts(self, job_id, delta):
        with self._locked():
            n = (self._read(f"attempts/{job_id}") or 0) + delta
            self._write(f"attempts/{job_id}", n)
            return n

    def claim(self, key):
        path = self.root / "claim" / key.replace("/", "_")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False

    def queue_depths(self):
        queue = self.root.parent / "queue"
        files = [p.name for p in queue.glob("*.msg")] if queue.is_dir() else []
        return {q: sum(1 for f in files if f.endswith(f".{q}.msg")) for q in QUEUES}


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    p = urlparse(url)
    if p.password:
        return url.replace(f":{p.password}@", ":***@")
    return url


def open_coord(broker_url: str) -> Coordinator:
    scheme = urlparse(broker_url).scheme
    if scheme in ("redis", "rediss"):
        return RedisCoord(broker_url)
    if scheme == "local":
        return FileCoord(Path(urlparse(broker_url).path) / "coord")
    raise ConfigError(
        f"broker URL {_safe(broker_url)!r}: use redis://[:password@]host:port/db or local:///path "
        "(fix --broker / CXRSTUDY_BROKER_URL)"
    )
