"""Real components on loopback: Debian's redis-server, SeaweedFS for S3, Celery worker processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    if not binary:
        pytest.fail("the integration tests need Debian's redis-server: run `bash scripts/bootstrap.sh --test`")
    port, data = free_port(), tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(data)],
        stdout=open(data / "redis.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start on port {port}; see {data / 'redis.log'}")
            time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


class Cluster:
    """A broker, a store in S3, worker processes and the CLI, all with short test timeouts."""

    def __init__(self, redis_url: str, s3_env: dict, tmp: Path):
        self.tmp = tmp
        self.store_uri = f"s3://cxrstudy-test/{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            **s3_env,
            "CXRSTUDY_BROKER_URL": redis_url,
            "CXRSTUDY_STORE": self.store_uri,
            "CXRSTUDY_VISIBILITY_TIMEOUT": "8",
            "CXRSTUDY_RESTORE_INTERVAL": "1",
            "CXRSTUDY_LEASE_TTL": "3",
            "CXRSTUDY_MAX_ATTEMPTS": "2",
            "CXRSTUDY_RETRY_BACKOFF": "1",
            "CXRSTUDY_SIGTERM_GRACE": "20",
            "CXRSTUDY_PROGRESS_INTERVAL": "0.5",
            "PYTHONPATH": str(ROOT),
        }
        self.workers: dict[str, subprocess.Popen] = {}
        import redis

        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self.redis.flushall()

    def store(self):
        from jobs.store import open_store

        return open_store(self.store_uri)

    def coord(self):
        """The coordinator as the workers of this store see it (its keys are scoped to the store)."""
        from worker.coord import open_coord

        return open_coord(self.env["CXRSTUDY_BROKER_URL"], self.store().uri)

    def start_worker(self, name: str, queues: str = "gpu,cpu") -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "worker", "--queues", queues, "--name", f"{name}@test"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill it with its pool children
            cwd=ROOT,
        )
        self.workers[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def cli(self, *args, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", *map(str, args)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )

    def study(
        self,
        dataset: Path,
        runs: str,
        epochs: int = 2,
        name: str = "it",
        extra: str = "",
        preprocessing: str = "{image_size: 32, shard_size: 100}",
    ) -> Path:
        path = self.tmp / f"{name}.yaml"
        path.write_text(
            textwrap.dedent(f"""\
            name: {name}
            dataset: {dataset}
            preprocessing: {preprocessing}
            training: {{epochs: {epochs}, batch_size: 16, lr: 3.0e-3, warmup_epochs: 0.2, patience: 0{extra}}}
            runs:
            """)
            + textwrap.indent(textwrap.dedent(runs), "  ")
        )
        return path

    def submit(self, study: Path) -> str:
        proc = self.cli("submit", study)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().splitlines()[-1]

    def status(self, sid: str) -> dict:
        proc = self.cli("status", sid, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def wait_for(self, predicate, timeout: float = 300, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            for name, proc in self.workers.items():
                if proc.poll() is not None and not getattr(proc, "expected_exit", False):
                    raise AssertionError(f"worker {name} exited ({proc.returncode}):\n{self.log(name)[-3000:]}")
            time.sleep(0.3)
        logs = "\n".join(f"--- {n}\n{self.log(n)[-2500:]}" for n in self.workers)
        raise AssertionError(f"timed out waiting for {what}\n{logs}")

    def report_done(self, sid: str) -> bool:
        from orchestrator.distributed import report_ready

        return report_ready(self.store(), sid, stale_after=30)

    def kill(self, name: str, sig=signal.SIGKILL) -> None:
        proc = self.workers[name]
        proc.expected_exit = True
        os.killpg(proc.pid, sig)

    def close(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.expected_exit = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def cluster(redis_url, s3_env, tmp_path):
    c = Cluster(redis_url, s3_env, tmp_path)
    yield c
    c.close()
