"""Coordination between workers: job leases, attempt counters, once-only claims, queue depths.

Two backends behind one interface: Redis (the production broker's own server) and a directory
(the ``local://`` broker of the embedded demo, where every worker runs on one machine).

The lease is what makes a redelivered job safe: a worker trains a job only while it holds
``lease:<job>`` (SET NX with a TTL, renewed by a heartbeat). A second copy of the message finds
the lease held and is dropped. Every acquire and release is appended to ``lease-log:<job>`` so
overlaps can be audited.

Every key is scoped to the store the workers write to (a digest of its URI): two deployments that
share one Redis, or a study re-run into a fresh prefix, share no lease, attempt count or claim,
though their job ids (content hashes) are the same.

Fencing. Each acquisition takes a token, one more than the job's counter ``fence:<job>``, and the
holder writes it to the store (``fence.json`` of the job) before anything else. A holder whose
lease is gone may take it back only when nobody acquired the job since: the counter still equals
its token, or the counter is gone too (Redis was flushed) and the store's ``fence.json`` still
names its token. A worker paused past its TTL (SIGSTOP, a partitioned node) therefore never takes
back a job that another worker acquired, finished or released; every store write of a running job
renews the lease first (:class:`jobs.store.fencing.FencedStore`), so its writes stop there.

Running jobs. Redis also keeps the list ``cxrstudy.running`` (:data:`RUNNING`) with one entry per
held lease, ``<lease key>|<owner>``: acquire and retake append it, release removes it, and a sweep
(every heartbeat and every :meth:`Coordinator.queue_depths`) drops the entries whose lease is gone
or held by someone else, as a worker killed without a release leaves them. It is not scoped: like
the Celery queue lists ``gpu`` and ``cpu`` it is one per Redis database, so KEDA, whose redis
scaler reads only list lengths, can scale the GPU workers on queued + running jobs and never remove
a worker with a job in hand because the queue is empty.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from jobs.errors import ConfigError

PREFIX = "cxrstudy:"
QUEUES = ("gpu", "cpu")
# The list of running jobs, one per Redis database like the queues: the chart's KEDA trigger names it.
RUNNING = "cxrstudy.running"


def scope_of(store_uri: str) -> str:
    """The coordination scope of a store: keys of two stores never meet."""
    return hashlib.sha256(store_uri.encode()).hexdigest()[:12] if store_uri else ""


HELD, LOST, VANISHED = "held", "lost", "vanished"


@dataclass(frozen=True)
class Lease:
    """One acquisition of a job: ``owner`` is unique per acquisition, ``token`` its fencing token."""

    job_id: str
    owner: str
    token: int


class Coordinator:
    def acquire(self, job_id: str, owner: str, ttl: float, floor: int = 0) -> Lease | None:
        """Take the lease with a token above both the job's counter and ``floor`` (the last token the
        store saw); None when another worker holds it."""
        raise NotImplementedError

    def renew(self, lease: Lease, ttl: float) -> str:
        """HELD (renewed), LOST (another worker acquired the job since), or VANISHED: the lease is
        gone and nobody acquired since (it expired, or Redis was flushed); :meth:`retake` may follow."""
        raise NotImplementedError

    def retake(self, lease: Lease, ttl: float) -> bool:
        """Take a VANISHED lease back with its own token; False when another worker got there first."""
        raise NotImplementedError

    def release(self, lease: Lease) -> None:
        raise NotImplementedError

    def holder(self, job_id: str) -> str | None:
        raise NotImplementedError

    def lease_log(self, job_id: str) -> list[dict]:
        raise NotImplementedError

    def attempts(self, job_id: str, delta: int) -> int:
        """Add ``delta`` to the job's attempt counter and return it."""
        raise NotImplementedError

    def claim(self, key: str, ttl: float) -> bool:
        """True for the first caller only, until ``ttl`` seconds have passed."""
        raise NotImplementedError

    def unclaim(self, key: str) -> None:
        """Drop a claim (``resume`` runs an ending again, which must be able to fan in again)."""
        raise NotImplementedError

    def queue_depths(self) -> dict[str, int]:
        """Jobs waiting in each queue and jobs running (held leases), across every store on the broker."""
        raise NotImplementedError

    def running_jobs(self) -> list[str]:
        """The ids of the jobs whose lease is held in this scope, sorted."""
        raise NotImplementedError

    def queued_jobs(self) -> set[str]:
        """The job ids of the train messages the broker holds: waiting in a queue, or delivered to a
        worker and not acknowledged yet (running, or waiting out a retry's countdown)."""
        raise NotImplementedError

    def extend_visibility(self, task_id: str) -> None:
        """Keep a running job's unacknowledged message from being redelivered (Redis only)."""


class RedisCoord(Coordinator):
    # kombu's Redis transport keeps unacknowledged messages in the hash ``unacked`` (delivery tag ->
    # [message, exchange, routing key]) and their delivery times in the sorted set ``unacked_index``;
    # a sweep redelivers those older than the visibility timeout. Bumping the score keeps a live
    # job's message where it is, so the timeout can be short enough to recover dead workers fast.
    UNACKED, UNACKED_INDEX = "unacked", "unacked_index"

    # Drops the entries of the running list (KEYS[1] of _SWEEP) whose lease (the key before the last
    # '|') is gone or has another owner (the text after it); returns the list's length. The lease keys
    # are read from the list, not passed as KEYS: fine on one Redis server, not on a Redis Cluster.
    _SWEEP_FN = """
    local function sweep(list)
      for _, e in ipairs(redis.call('LRANGE', list, 0, -1)) do
        local i = string.find(e, '|[^|]*$')
        if not i or redis.call('GET', string.sub(e, 1, i - 1)) ~= string.sub(e, i + 1) then
          redis.call('LREM', list, 0, e)
        end
      end
      return redis.call('LLEN', list)
    end
    """
    _SWEEP = _SWEEP_FN + "return sweep(KEYS[1])"
    # KEYS: lease, fence counter, running list. ARGV: owner, ttl ms, token or floor, running entry.
    # Sweeps too: a job redelivered after its worker died drops that worker's entry here.
    _ACQUIRE = (
        _SWEEP_FN
        + """
    sweep(KEYS[3])
    if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
    local f = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(ARGV[3])) + 1
    redis.call('SET', KEYS[2], f, 'EX', 1209600)
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    redis.call('LREM', KEYS[3], 0, ARGV[4])
    redis.call('RPUSH', KEYS[3], ARGV[4])
    return f
    """
    )
    # Sweeps first (this entry goes when the lease is lost or vanished; a retake puts it back), and a
    # held lease puts its entry back should the list have lost it.
    _RENEW = (
        _SWEEP_FN
        + """
    sweep(KEYS[3])
    local v = redis.call('GET', KEYS[1])
    if v == ARGV[1] then
      redis.call('PEXPIRE', KEYS[1], ARGV[2])
      redis.call('LREM', KEYS[3], 0, ARGV[4])
      redis.call('RPUSH', KEYS[3], ARGV[4])
      return 'held'
    end
    if v then return 'lost' end
    local f = redis.call('GET', KEYS[2])
    if f and tonumber(f) ~= tonumber(ARGV[3]) then return 'lost' end
    return 'vanished'
    """
    )
    _RETAKE = """
    if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
    local f = redis.call('GET', KEYS[2])
    if f and tonumber(f) ~= tonumber(ARGV[3]) then return 0 end
    redis.call('SET', KEYS[2], ARGV[3], 'EX', 1209600)
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    redis.call('LREM', KEYS[3], 0, ARGV[4])
    redis.call('RPUSH', KEYS[3], ARGV[4])
    return 1
    """
    # KEYS: lease, running list. ARGV: owner, running entry.
    _RELEASE = """
    redis.call('LREM', KEYS[2], 0, ARGV[2])
    if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
    return 0
    """

    def __init__(self, url: str, scope: str = ""):
        import redis

        self.url = url
        self.prefix = f"{PREFIX}{scope}:" if scope else PREFIX
        try:
            self.r = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30, decode_responses=True)
        except ValueError as exc:  # a port or database that is not a number, ...
            raise bad_url(url, _scrub(url, str(exc))) from None
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

    def _log(self, job_id: str, owner: str, event: str, token: int) -> None:
        key = f"{self.prefix}lease-log:{job_id}"
        self.r.rpush(key, json.dumps({"owner": owner, "event": event, "token": token, "t": time.time()}))
        self.r.expire(key, 14 * 86400)

    def _keys(self, job_id: str) -> list[str]:
        """The lease key, the fencing counter and the running list, the KEYS of the lease scripts."""
        return [f"{self.prefix}lease:{job_id}", f"{self.prefix}fence:{job_id}", RUNNING]

    def _entry(self, job_id: str, owner: str) -> str:
        """The running list's entry of one acquisition: the lease key and its owner."""
        return f"{self.prefix}lease:{job_id}|{owner}"

    def acquire(self, job_id, owner, ttl, floor=0):
        args = (owner, int(ttl * 1000), int(floor), self._entry(job_id, owner))
        token = int(self.r.eval(self._ACQUIRE, 3, *self._keys(job_id), *args))
        if not token:
            return None
        self._log(job_id, owner, "acquire", token)
        return Lease(job_id, owner, token)

    def _lease_args(self, lease: Lease, ttl: float) -> tuple:
        return (lease.owner, int(ttl * 1000), lease.token, self._entry(lease.job_id, lease.owner))

    def renew(self, lease, ttl):
        return self.r.eval(self._RENEW, 3, *self._keys(lease.job_id), *self._lease_args(lease, ttl))

    def retake(self, lease, ttl):
        got = self.r.eval(self._RETAKE, 3, *self._keys(lease.job_id), *self._lease_args(lease, ttl))
        if got:
            self._log(lease.job_id, lease.owner, "reacquire", lease.token)
        return bool(got)

    def release(self, lease):
        keys = (f"{self.prefix}lease:{lease.job_id}", RUNNING)
        if self.r.eval(self._RELEASE, 2, *keys, lease.owner, self._entry(lease.job_id, lease.owner)):
            self._log(lease.job_id, lease.owner, "release", lease.token)

    def holder(self, job_id):
        return self.r.get(f"{self.prefix}lease:{job_id}")

    def lease_log(self, job_id):
        return [json.loads(x) for x in self.r.lrange(f"{self.prefix}lease-log:{job_id}", 0, -1)]

    def attempts(self, job_id, delta):
        key = f"{self.prefix}attempts:{job_id}"
        n = self.r.incrby(key, delta)
        self.r.expire(key, 14 * 86400)
        return int(n)

    def claim(self, key, ttl):
        return bool(self.r.set(f"{self.prefix}claim:{key}", str(time.time()), nx=True, px=max(1, int(ttl * 1000))))

    def unclaim(self, key):
        self.r.delete(f"{self.prefix}claim:{key}")

    def queue_depths(self):
        return {**{q: int(self.r.llen(q)) for q in QUEUES}, "running": int(self.r.eval(self._SWEEP, 1, RUNNING))}

    def running_jobs(self):
        self.r.eval(self._SWEEP, 1, RUNNING)
        start = f"{self.prefix}lease:"
        entries = (e.rpartition("|")[0] for e in self.r.lrange(RUNNING, 0, -1))
        return sorted({e.removeprefix(start) for e in entries if e.startswith(start)})

    def queued_jobs(self):
        payloads = [m for q in QUEUES for m in self.r.lrange(q, 0, -1)]
        payloads += [json.loads(v)[0] for v in self.r.hvals(self.UNACKED)]  # [message, exchange, routing key]
        return {job for p in payloads if (job := train_job_of(p))}

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

    def __init__(self, root: str | Path, scope: str = ""):
        self.base = Path(root)  # <broker>/coord: the queue folder is its sibling
        self.root = self.base / scope if scope else self.base
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

    @staticmethod
    def _held(folder: Path) -> list[str]:
        """The jobs with an unexpired lease in ``folder`` (a scope's ``lease`` folder)."""
        held, now = [], time.time()
        for path in folder.glob("*") if folder.is_dir() else []:
            if path.name.endswith(".tmp"):
                continue
            try:
                lease = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(lease, dict) and isinstance(lease.get("expires"), int | float) and lease["expires"] > now:
                held.append(path.name)
        return sorted(held)

    def _log(self, job_id, owner, event, token):
        log = self._read(f"lease-log/{job_id}") or []
        entry = {"owner": owner, "event": event, "token": token, "t": time.time()}
        self._write(f"lease-log/{job_id}", [*log, entry])

    def acquire(self, job_id, owner, ttl, floor=0):
        with self._locked():
            if self._lease(job_id):
                return None
            token = max(self._read(f"fence/{job_id}") or 0, int(floor)) + 1
            self._write(f"fence/{job_id}", token)
            self._write(f"lease/{job_id}", {"owner": owner, "expires": time.time() + ttl})
            self._log(job_id, owner, "acquire", token)
            return Lease(job_id, owner, token)

    def _state(self, lease: Lease) -> str:
        current = self._lease(lease.job_id)
        if current:
            return HELD if current["owner"] == lease.owner else LOST
        fence = self._read(f"fence/{lease.job_id}")
        return LOST if fence is not None and fence != lease.token else VANISHED

    def renew(self, lease, ttl):
        with self._locked():
            state = self._state(lease)
            if state == HELD:
                self._write(f"lease/{lease.job_id}", {"owner": lease.owner, "expires": time.time() + ttl})
            return state

    def retake(self, lease, ttl):
        with self._locked():
            if self._state(lease) != VANISHED:
                return False
            self._write(f"fence/{lease.job_id}", lease.token)
            self._write(f"lease/{lease.job_id}", {"owner": lease.owner, "expires": time.time() + ttl})
            self._log(lease.job_id, lease.owner, "reacquire", lease.token)
            return True

    def release(self, lease):
        with self._locked():
            current = self._lease(lease.job_id)
            if current and current["owner"] == lease.owner:
                (self.root / "lease" / lease.job_id).unlink()
                self._log(lease.job_id, lease.owner, "release", lease.token)

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

    def claim(self, key, ttl):
        name = f"claim/{key.replace('/', '_')}"
        with self._locked():
            taken = self._read(name)
            if taken is not None and taken > time.time():
                return False
            self._write(name, time.time() + ttl)
            return True

    def unclaim(self, key):
        (self.root / f"claim/{key.replace('/', '_')}").unlink(missing_ok=True)

    def queued_jobs(self):
        queue = self.base.parent / "queue"
        found = set()
        for path in queue.glob("*.msg") if queue.is_dir() else []:
            try:
                found.add(train_job_of(path.read_text()))
            except OSError:  # taken by a worker meanwhile
                continue
        return found - {None}

    def queue_depths(self):
        queue = self.base.parent / "queue"
        files = [p.name for p in queue.glob("*.msg")] if queue.is_dir() else []
        depths = {q: sum(1 for f in files if f.endswith(f".{q}.msg")) for q in QUEUES}
        # Every scope's leases, as Redis's running list counts every store's: the unscoped folder's
        # and those of the scopes in it (<broker>/coord/<scope>/lease).
        scopes = [self.base, *(p for p in self.base.iterdir() if p.is_dir())] if self.base.is_dir() else []
        return {**depths, "running": sum(len(self._held(s / "lease")) for s in scopes)}

    def running_jobs(self):
        return self._held(self.root / "lease")


def train_job_of(message) -> str | None:
    """The job id of a ``cxrstudy.train`` message as kombu stores it (a JSON envelope whose body is
    the base64 of ``[args, kwargs, embed]``); None for any other message or one that cannot be read."""
    try:
        envelope = json.loads(message) if isinstance(message, (str, bytes)) else message
        if envelope["headers"].get("task") != "cxrstudy.train":
            return None
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return json.loads(body)[1].get("job_id")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    p = urlparse(url)
    if p.password:
        return url.replace(f":{p.password}@", ":***@")
    return url


def _scrub(url: str, text: str) -> str:
    password = urlparse(url).password
    return text.replace(password, "***") if password else text


def bad_url(
    url: str, problem: str = "", fix: str = "use redis://[:password@]host:port/db or local:///path"
) -> ConfigError:
    """The one-line error of a broker URL that cannot be used, naming the flag and the variable."""
    return ConfigError(
        f"broker URL {_safe(url)!r}: {problem + '; ' if problem else ''}{fix} (fix --broker / CXRSTUDY_BROKER_URL)"
    )


def local_folder(broker_url: str, *subs: str) -> Path:
    """The folder of a ``local:///path`` broker, with ``subs`` created in it: a ConfigError naming the
    URL when the path is not absolute or the folders cannot be created (a read-only file system, a
    file in the way)."""
    parsed = urlparse(broker_url)
    if parsed.netloc or not parsed.path.startswith("/"):
        raise bad_url(broker_url, "a local broker needs an absolute path, local:///path (three slashes)")
    root = Path(parsed.path)
    try:
        for sub in subs:
            (root / sub).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        problem = f"its folder {root} is not writable ({exc.strerror or exc})"
        raise bad_url(broker_url, problem, "use local:///path with a folder you can write to") from None
    return root


def open_coord(broker_url: str, store_uri: str = "") -> Coordinator:
    """The coordinator of ``broker_url``, scoped to the store at ``store_uri`` (its ``Store.uri``);
    without one, only the queue depths mean anything."""
    parsed = urlparse(broker_url)
    if parsed.scheme in ("redis", "rediss"):
        try:
            _ = parsed.port  # urlparse checks the port only when asked
        except ValueError:
            raise bad_url(broker_url, "the port is not a number from 0 to 65535") from None
        db = parsed.path.strip("/")
        if db and not db.isdigit():  # redis-py would quietly use database 0
            raise bad_url(broker_url, f"the database {db!r} is not a number")
        return RedisCoord(broker_url, scope_of(store_uri))
    if parsed.scheme == "local":
        scope = scope_of(store_uri)
        return FileCoord(local_folder(broker_url, f"coord/{scope}" if scope else "coord") / "coord", scope)
    raise bad_url(broker_url)
