"""Faults change no number: a study under a seeded schedule of faults ends as a fault-free run does.

Real Redis with an append-only file, a SeaweedFS S3 server of its own and three Celery workers run a
study of 2 architectures x 3 seeds while a schedule, drawn from a seed, at four moments of the
study's progress (epochs finished over all runs):

- SIGKILLs a worker that holds a job, and starts a new one;
- SIGSTOPs a worker that holds a job for twice the lease TTL (another takes the job), then SIGCONTs it;
- kills Redis with -9 and starts it again from its append-only file;
- kills the S3 server with -9 (uploads are in flight: progress every 0.5 s) and starts it again.

Then every run has its result, each epoch is in its metrics once, the lease log shows one holder at a
time, the paused worker wrote nothing after it woke, and every run's metrics and test scores equal,
bit for bit, those of the same study run without faults by ``cxrstudy run`` on this CPU.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.client_bench import _ports, weed_command
from jobs.spec.study import JobSpec
from tests.conftest import S3_KEY, S3_SECRET, _bucket_ready
from tests.worker.conftest import ROOT, Cluster

pytestmark = pytest.mark.slow

TTL = 3.0
EPOCHS = 3
RUNS = "test_resnet: [1, 2, 3]\ntest_efficientnet: [1, 2, 3]\n"


class Server:
    """A server process that can be killed with -9 and started again on the same ports and data."""

    def __init__(self, cmd: list[str], log: Path, env: dict | None = None):
        self.cmd, self.log, self.env, self.proc = cmd, log, env, None

    def start(self, ready) -> None:
        self.proc = subprocess.Popen(
            self.cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        deadline = time.monotonic() + 90
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.cmd[0]} did not start; see {self.log}")
            time.sleep(0.2)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def servers(tmp_path, monkeypatch):
    """Redis (AOF, fsync always) and SeaweedFS on ports of their own: (redis url, S3 env, redis, weed)."""
    import redis

    (rport,) = _ports(1)
    (tmp_path / "redis").mkdir()
    (tmp_path / "weed").mkdir()
    rcmd = [shutil.which("redis-server"), "--port", str(rport), "--bind", "127.0.0.1", "--save", ""]
    rcmd += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path / "redis")]
    redis_server = Server(rcmd, tmp_path / "redis.log")

    def redis_ready() -> bool:
        try:
            return redis.Redis(port=rport, socket_connect_timeout=0.5).ping()
        except redis.RedisError:
            return False

    wcmd, s3_port = weed_command(tmp_path / "weed", "cxrstudy-test")
    s3 = {
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{s3_port}",
        "AWS_REGION": "us-east-1",
    }
    weed_server = Server(wcmd, tmp_path / "weed.log", {**os.environ, **s3})
    redis_server.start(redis_ready)
    weed_server.start(lambda: _bucket_ready(s3))
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    yield f"redis://127.0.0.1:{rport}/0", s3, (redis_server, redis_ready), (weed_server, lambda: _bucket_ready(s3))
    for server in (redis_server, weed_server):
        if server.proc.poll() is None:
            server.kill()


@pytest.fixture(scope="module")
def reference(synthetic, tmp_path_factory):
    """The study run without faults (``cxrstudy run``, one process, this CPU): metrics per job id."""
    tmp = tmp_path_factory.mktemp("reference")
    study = _study_file(tmp, synthetic)
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run", str(study), "--store", str(tmp / "store")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from jobs.store import LocalStore

    store = LocalStore(tmp / "store")
    (sid,) = [p.name for p in (tmp / "store" / "studies").iterdir()]
    return sid, {job.job_id: _numbers(store, job) for job in _jobs(store, sid)}


def _study_file(folder: Path, dataset: Path) -> Path:
    path = folder / "chaos.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: chaos
        dataset: {dataset}
        preprocessing: {{image_size: 32, shard_size: 100}}
        training: {{epochs: {EPOCHS}, batch_size: 16, lr: 3.0e-3, warmup_epochs: 0.2, patience: 0}}
        runs:
        """)
        + textwrap.indent(RUNS, "  ")
    )
    return path


def _jobs(store, sid) -> list[JobSpec]:
    return [JobSpec.from_json(j) for j in json.loads(store.get_text(f"studies/{sid}/study.json"))["jobs"]]


def _numbers(store, job) -> dict:
    """What faults must not change: each epoch's metrics (but its wall time), the val and test scores."""
    epochs = [json.loads(line) for line in store.get_text(job.keys.metrics).splitlines()]
    for e in epochs:
        e.pop("seconds")
    result = json.loads(store.get_text(job.keys.result))
    return {"epochs": epochs, "best_epoch": result["best_epoch"], "val": result["val"], "test": result["test"]}


def _epochs_done(store, jobs) -> int:
    try:
        return sum(len(store.get_text(j.keys.metrics).splitlines()) for j in jobs if store.exists(j.keys.metrics))
    except Exception:  # the S3 server is down
        return 0


@pytest.mark.parametrize("schedule_seed", [1, 2, 3])
def test_a_study_under_a_seeded_schedule_of_faults_ends_bit_identical_to_a_fault_free_run(
    servers, reference, synthetic, tmp_path, schedule_seed
):
    redis_url, s3, (redis_server, redis_ready), (weed_server, weed_ready) = servers
    ref_sid, expected = reference
    cluster = Cluster(redis_url, s3, tmp_path)
    cluster.env.update(CXRSTUDY_MAX_ATTEMPTS="12", CXRSTUDY_LEASE_TTL=str(TTL), CXRSTUDY_RETRY_BACKOFF="0.5")
    rng, watcher = random.Random(schedule_seed), None
    faults = ["sigkill", "sigstop", "redis", "s3"]
    rng.shuffle(faults)
    moments = sorted(rng.sample(range(1, 2 * EPOCHS * 3 - 4), len(faults)))
    try:
        for name in ("w1", "w2", "w3"):
            cluster.start_worker(name)
        # the user's watcher: `submit --wait` rides out the faults and enqueues a run the broker lost
        watcher = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "submit", str(_study_file(tmp_path, synthetic)), "--wait"],
            env=cluster.env,
            stdout=subprocess.PIPE,
            stderr=open(tmp_path / "watcher.log", "wb"),
            text=True,
            cwd=ROOT,
        )
        printed = []  # submit's log lines, then the study id alone on its line
        while not printed or printed[-1] != ref_sid:
            line = watcher.stdout.readline()
            assert line, f"submit printed {printed}; {(tmp_path / 'watcher.log').read_text()[-2000:]}"
            printed.append(line.strip())
        sid = ref_sid
        store = cluster.store()
        jobs = _jobs(store, sid)
        stopped, paused, applied = None, None, []
        for fault, moment in zip(faults, moments):
            cluster.wait_for(lambda m=moment: _epochs_done(store, jobs) >= m, timeout=400, what=f"{moment} epochs")
            if fault in ("sigkill", "sigstop"):
                victim = cluster.wait_for(lambda: _holder(cluster, jobs), timeout=120, what="a worker with a job")
                if fault == "sigkill":
                    cluster.kill(victim)
                    cluster.workers[victim].wait()
                    cluster.start_worker(f"{victim}r")
                else:
                    paused = _held_by(cluster, jobs, victim)  # (job id, owner) of the job it holds
                    cluster.workers[victim].expected_exit = True  # stopped: it may look dead to wait_for
                    os.killpg(cluster.workers[victim].pid, signal.SIGSTOP)
                    time.sleep(2 * TTL + 1)
                    os.killpg(cluster.workers[victim].pid, signal.SIGCONT)
                    cluster.workers[victim].expected_exit = False
                    stopped = victim
            elif fault == "redis":
                redis_server.kill()
                time.sleep(1)
                redis_server.start(redis_ready)
            else:
                weed_server.kill()
                time.sleep(1)
                weed_server.start(weed_ready)
            applied.append(f"{fault} at {moment} epochs")
        try:
            cluster.wait_for(lambda: _reported(cluster, sid), timeout=300, what=f"the report after {applied}")
            out, _ = watcher.communicate(timeout=120)
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            watcher.kill()
            watched = (tmp_path / "watcher.log").read_text()[-3000:]
            raise AssertionError(f"{exc}\n--- watcher\n{watched}\n--- broker\n{_broker_state(cluster)}") from None
        (tmp_path / "watcher.out").write_text("\n".join(printed) + "\n" + out)
        assert watcher.returncode == 0, (tmp_path / "watcher.log").read_text()[-3000:]
        assert "# Cross-Architecture Comparison" in out

        for job in jobs:
            assert store.exists(job.keys.result), job.job_id
            assert _numbers(store, job) == expected[job.job_id], f"{job.job_id} changed under {applied}"
            # the lease audit: each acquisition took the next token, in time order (one holder at a
            # time: the lease is taken only when nobody holds it), a re-take only its own token, and
            # the store's fence names the last acquisition
            events = cluster.coord().lease_log(job.job_id)
            acquired = [e for e in events if e["event"] == "acquire"]
            assert [e["token"] for e in acquired] == list(range(1, len(acquired) + 1)), events
            assert [e["t"] for e in acquired] == sorted(e["t"] for e in acquired)
            for e in events:
                if e["event"] == "reacquire":
                    assert any(a["owner"] == e["owner"] and a["token"] == e["token"] for a in acquired), events
            assert json.loads(store.get_text(job.keys.fence))["token"] == len(acquired)
        if stopped is not None and paused is not None:
            # paused past its TTL, the worker took its lease back (nobody acquired the job meanwhile),
            # or found it lost and wrote nothing more, or its attempt failed on another fault first
            # (a store or broker away) and was retried: never a write under another's lease
            job_id, owner = paused
            events = cluster.coord().lease_log(job_id)
            log = cluster.log(stopped)
            retook = any(e["event"] == "reacquire" and e["owner"] == owner for e in events)
            lost = f"{job_id}: stopped: another worker holds the job; nothing was written after the loss" in log
            failed = f"{job_id}: attempt 1 failed" in log or f"{job_id}: attempt 2 failed" in log
            assert retook or lost or failed, (events, log[-3000:])
    finally:
        cluster.close()
        if watcher is not None and watcher.poll() is None:
            watcher.kill()


def _children(pid: int) -> set[str]:
    """The pids (as text) of the processes whose parent is ``pid``, from /proc (no procps needed)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if fields[1] == str(pid):  # after "pid (comm)": state, ppid, ...
            found.add(stat.parent.name)
    return found


def _held_by(cluster: Cluster, jobs, name: str) -> tuple[str, str] | None:
    """(job id, lease owner) of the job that worker ``name`` holds, if any."""
    children = _children(cluster.workers[name].pid)
    for job in jobs:
        owner = cluster.coord().holder(job.job_id)
        if owner and owner.split(":")[1] in children:
            return job.job_id, owner
    return None


def _holder(cluster: Cluster, jobs) -> str | None:
    """The name of a live worker that holds a job now."""
    try:
        holders = [cluster.coord().holder(j.job_id) for j in jobs]
    except Exception:
        return None
    pids = {h.split(":")[1] for h in holders if h}
    for name, proc in cluster.workers.items():
        if proc.poll() is None and not getattr(proc, "expected_exit", False):
            if pids & _children(proc.pid):
                return name
    return None


def _broker_state(cluster: Cluster) -> str:
    """What Redis holds of the jobs: each queue's messages and the unacknowledged ones, by task id."""
    r = cluster.redis

    def task(payload: str) -> str:
        body = json.loads(payload)
        body = body[0] if isinstance(body, list) else body
        return f"{body['headers']['id']} {body['headers'].get('retries')} {body['headers'].get('eta')}"

    lines = [f"{q}: {[task(m) for m in r.lrange(q, 0, -1)]}" for q in ("gpu", "cpu")]
    scores = dict(r.zrange("unacked_index", 0, -1, withscores=True))
    for tag, payload in r.hgetall("unacked").items():
        lines.append(f"unacked {tag} {task(payload)} since {time.time() - scores.get(tag, 0):.0f} s")
    lines.append(f"running: {r.lrange('cxrstudy.running', 0, -1)}")
    return "\n".join(lines)


def _reported(cluster: Cluster, sid: str) -> bool:
    try:
        return cluster.report_done(sid)
    except Exception:
        return False
