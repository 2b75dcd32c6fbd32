"""The client install (`pip install .`, no extras) drives a real cluster without the training stack.

A fresh virtualenv gets a non-editable install of the repository root, without the `train` extra and
without the system's site-packages; it must hold no torch, torchvision, timm or OpenCV. Its
``cxrstudy`` then submits a tiny study to a real Redis and a real S3 server (SeaweedFS), a worker
from the full install trains it, and the client's status, list and results read the outcome.

The client venv is kept at ``.venv-client`` and rebuilt when pyproject.toml changes; when only the
package's sources change, the package alone is installed again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.worker.conftest import Cluster, redis_url  # noqa: F401  (the fixture, used by name)

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / ".venv-client"
STAMP = CLIENT / "cxrstudy-client.stamp"
TRAINING_STACK = ("torch", "torchvision", "timm", "cv2")
SOURCES = ("jobs", "worker", "orchestrator")


def _hashes() -> dict[str, str]:
    """sha256 of pyproject.toml (the dependencies) and of the package's sources."""
    deps = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    src = hashlib.sha256()
    files = sorted(p for d in SOURCES for ext in ("*.py", "*.txt", "*.yaml") for p in (ROOT / d).rglob(ext))
    for path in files:
        src.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return {"pyproject": deps, "sources": src.hexdigest()}


def _run(*cmd, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _pip_env() -> dict:
    """The environment minus the main venv's markers, so pip and python see only the client venv."""
    return {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}


def _pip_install(python: Path, *options: str) -> None:
    """``pip install [options] ROOT``; setuptools's in-tree build/ goes again when it was not there before
    (a later install would copy a deleted module from a stale build/lib)."""
    had_build = (ROOT / "build").exists()
    try:
        _run(python, "-m", "pip", "install", *options, ROOT, env=_pip_env(), cwd=CLIENT)
    finally:
        if not had_build:
            shutil.rmtree(ROOT / "build", ignore_errors=True)


def client_venv() -> Path:
    """``.venv-client`` with the client install of this tree, built or refreshed as the stamp says."""
    want = _hashes()
    have = json.loads(STAMP.read_text()) if STAMP.exists() else {}
    python = CLIENT / "bin" / "python"
    if have.get("pyproject") != want["pyproject"] or not python.exists():
        shutil.rmtree(CLIENT, ignore_errors=True)
        base = getattr(sys, "_base_executable", None) or sys.executable
        _run(base, "-m", "venv", CLIENT, env=_pip_env())
        _pip_install(python)
    elif have.get("sources") != want["sources"]:
        STAMP.unlink()  # a failed install leaves no stamp that would vouch for it
        _pip_install(python, "--force-reinstall", "--no-deps")
    else:
        return CLIENT
    STAMP.write_text(json.dumps(want))
    return CLIENT


def _du_mib(path: Path) -> float:
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                total += os.lstat(p).st_blocks * 512
    return total / 2**20


def _site_packages(venv: Path) -> Path:
    (sp,) = (venv / "lib").glob("python3*/site-packages")
    return sp


def test_the_client_install_submits_and_reads_a_study_without_the_training_stack(
    redis_url,  # noqa: F811
    s3_env,
    synthetic,
    tmp_path,
):
    venv = client_venv()
    cli = venv / "bin" / "cxrstudy"
    env = _pip_env()

    # No training stack in the client, and its cxrstudy is the installed copy, not this tree.
    probe = f"import importlib.util,sys; sys.exit(any(importlib.util.find_spec(m) for m in {TRAINING_STACK!r}))"
    found = subprocess.run([venv / "bin" / "python", "-c", probe], env=env, cwd=tmp_path)
    assert found.returncode == 0, f"the client venv has one of {TRAINING_STACK}"
    where = _run(
        venv / "bin" / "python",
        "-c",
        "import orchestrator; print(orchestrator.__file__)",
        env=env,
        cwd=tmp_path,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout

    client_mib, full_mib = _du_mib(_site_packages(venv)), _du_mib(_site_packages(ROOT / ".venv"))
    print(f"\nsite-packages: client venv {client_mib:,.0f} MiB, full venv {full_mib:,.0f} MiB")

    cluster = Cluster(redis_url, s3_env, tmp_path)
    # The client's environment: the S3 variables and the test timeouts, but broker and store as flags.
    dropped = ("PYTHONPATH", "VIRTUAL_ENV", "CXRSTUDY_BROKER_URL", "CXRSTUDY_STORE")
    client_env = {k: v for k, v in cluster.env.items() if k not in dropped}
    broker, store = ("--broker", cluster.env["CXRSTUDY_BROKER_URL"]), ("--store", cluster.store_uri)

    def client(*args, timeout: float = 120) -> subprocess.CompletedProcess:
        return _run(cli, *args, env=client_env, cwd=tmp_path, timeout=timeout)

    def status_json(sid: str) -> dict:
        return json.loads(client("status", sid, "--json", *broker, *store).stdout)

    study = tmp_path / "study.yaml"
    study.write_text(
        textwrap.dedent("""\
        name: client
        dataset: ./replaced-by-the-flag
        preprocessing: {image_size: 32, shard_size: 100}
        training: {epochs: 1, batch_size: 16, lr: 3.0e-3, warmup_epochs: 0.2, patience: 0, augment: none}
        runs:
          test_resnet: [1, 2]
        """)
    )
    try:
        cluster.start_worker("full")  # the full install's cxrstudy worker (.venv's python)
        sid = client("submit", study, *broker, *store, "--dataset", synthetic).stdout.strip().splitlines()[-1]
        assert sid.startswith("client-")

        def finished():
            doc = status_json(sid)
            ended = all(r["state"] in ("succeeded", "failed", "cancelled") for r in doc["runs"])
            return doc if doc["report"] and ended else None

        doc = cluster.wait_for(finished, timeout=300, what="the report (polled with the client's status --json)")
        assert doc["study_id"] == sid and doc["name"] == "client"
        assert [(r["architecture"], r["seed"], r["state"]) for r in doc["runs"]] == [
            ("test_resnet", 1, "succeeded"),
            ("test_resnet", 2, "succeeded"),
        ]
        assert all(r["epoch"] == "1/1" and 0 <= r["test_auroc"] <= 1 for r in doc["runs"])

        text = client("status", sid, *broker, *store).stdout
        assert f"study {sid}: 2 runs: 2 succeeded" in text and "report ready" in text
        listing = client("list", *store).stdout
        assert f"{sid}  " in listing and "2 succeeded  report" in listing

        out = tmp_path / "report"
        results = client("results", sid, *store, "--out", out)
        assert "Random Seed Impact" in results.stdout and "Runs Without a Result" not in results.stdout
        assert {"report.md", "report.json", "runs.csv"} <= {p.name for p in out.iterdir()}
        assert (out / "report.md").read_text() in results.stdout
        with open(out / "runs.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert sorted((r["architecture"], int(r["seed"]), r["status"]) for r in rows) == [
            ("test_resnet", 1, "succeeded"),
            ("test_resnet", 2, "succeeded"),
        ]
        assert {r["job_id"] for r in rows} == {r["job_id"] for r in doc["runs"]}
        report = json.loads((out / "report.json").read_text())
        assert sorted(r["seed"] for r in report["runs"]) == [1, 2]
    except BaseException:
        print(f"--- worker log\n{cluster.log('full')[-5000:]}")
        raise
    finally:
        cluster.close()
