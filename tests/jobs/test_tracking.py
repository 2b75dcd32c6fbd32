"""MLflow tracking: a real `mlflow server` (sqlite backend, loopback port) receives a small study's
runs, read back through MLflow's own client; with the server stopped the study still finishes."""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jobs import tracking
from jobs.spec.configs import TrainConfig
from jobs.spec.runs import JobSpec
from jobs.store import LocalStore
from jobs.store.records import write_json
from tests.orchestrator.test_cli import cxrstudy

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / ".venv-mlflow" / "bin" / "mlflow"  # scripts/bootstrap.sh --test installs the server there


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    if not SERVER.exists():
        pytest.fail(f"no MLflow server at {SERVER}: run `bash scripts/bootstrap.sh --test`, which installs it")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [
        str(SERVER), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    with open(root / "server.log", "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


def study_file(tmp_path: Path, synthetic: Path, name: str, uri: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: {name}
        dataset: {synthetic}
        preprocessing: {{image_size: 48, shard_size: 100}}
        training: {{epochs: 2, batch_size: 16, lr: 3.0e-3, warmup_epochs: 0.2, patience: 0}}
        runs:
          test_resnet: [1, 2]
        tracking: {{mlflow: "{uri}", experiment: tracked-test}}
        """)
    )
    return path


def test_a_study_is_a_parent_run_with_one_child_per_job_and_a_point_per_epoch(mlflow_server, synthetic, tmp_path):
    from mlflow import MlflowClient

    store = tmp_path / "store"
    proc = cxrstudy("run", study_file(tmp_path, synthetic, "tracked", mlflow_server), "--store", store)
    assert proc.returncode == 0, proc.stderr
    assert "warning: MLflow" not in proc.stdout + proc.stderr
    (study_dir,) = (store / "studies").iterdir()
    sid = study_dir.name

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("tracked-test")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`cxrstudy.study_id` = '{sid}'")
    parents = [r for r in runs if r.data.tags.get("cxrstudy.role") == "study"]
    children = [r for r in runs if r.data.tags.get("cxrstudy.role") == "run"]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.params["study.name"] == "tracked"
    assert parent.data.tags["cxrstudy.report"].endswith(f"studies/{sid}/report/report.md")
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "report")] == ["report/report.md"]

    for child in children:
        tags, params = child.data.tags, child.data.params
        job_id = tags["cxrstudy.job_id"]
        result = json.loads((study_dir / "jobs" / job_id / "result.json").read_text())
        assert tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
        assert tags["cxrstudy.arm"] == "test_resnet" and tags["cxrstudy.seed"] == str(result["seed"])
        assert params["training.lr"] == "0.003" and params["training.loss.name"] == "focal"
        assert params["preprocessing.image_size"] == "48" and params["seed"] == str(result["seed"])
        history = client.get_metric_history(child.info.run_id, "val_avg_auroc")
        lines = (study_dir / "jobs" / job_id / "metrics.jsonl").read_text().splitlines()
        metrics = [json.loads(line) for line in lines]
        assert [(m.step, round(m.value, 6)) for m in history] == [(m["epoch"], m["val_avg_auroc"]) for m in metrics]
        assert child.data.metrics["test_avg_auroc"] == pytest.approx(result["test"]["avg_auroc"])
        assert child.data.metrics["test_avg_ece"] == pytest.approx(result["test"]["avg_ece"])
        assert sorted(a.path for a in client.list_artifacts(child.info.run_id)) == ["provenance.json", "result.json"]
        assert tags["cxrstudy.result"].endswith(f"jobs/{job_id}/result.json")


def test_with_the_server_stopped_the_study_finishes_with_one_warning_per_run(synthetic, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = tmp_path / "store"
    started = time.monotonic()
    proc = cxrstudy("run", study_file(tmp_path, synthetic, "untracked", uri), "--store", store)
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    warnings = [line for line in output.splitlines() if "warning: MLflow tracking" in line]
    runs = sorted(re.findall(r"warning: MLflow tracking of run (\S+) stopped at start", output))
    assert len(runs) == 2 and len(set(runs)) == 2, output
    assert len(warnings) == 3 and "warning: MLflow tracking of study " in "\n".join(warnings)  # 2 runs + the report
    assert all(uri in w and "the run goes on, its results are in the store" in w for w in warnings)
    (study_dir,) = (store / "studies").iterdir()
    assert (study_dir / "report" / "report.md").exists()
    assert len(list(study_dir.glob("jobs/*/result.json"))) == 2
    assert time.monotonic() - started < 600


# ---------------------------------------------------------------- without a server


def test_tracking_is_off_without_a_uri_and_never_imports_mlflow(tmp_path, monkeypatch):
    monkeypatch.delenv(tracking.ENV_URI, raising=False)
    store = LocalStore(tmp_path)
    assert tracking.target(store, "s-1") is None
    monkeypatch.setattr(tracking, "_client", lambda uri: pytest.fail("a client was made with tracking off"))
    job = JobSpec("s-1", "j-1", "densenet121", 1, TrainConfig(), "datasets/d/x")
    t = tracking.RunTracker(store, job, log=lambda m: pytest.fail(m))
    t.start({"image_size": 256})
    t.epoch({"epoch": 1, "val_avg_auroc": 0.5})
    t.finish({"test": {}}, None)
    t.fail("x")
    probe = "import sys, jobs.tracking, jobs.aggregate; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env={**os.environ})
    assert out.stdout.strip() == "False", out.stderr


def test_the_study_files_uri_wins_over_the_environment(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    monkeypatch.setenv(tracking.ENV_URI, "http://env:5000")
    monkeypatch.delenv(tracking.ENV_EXPERIMENT, raising=False)
    assert tracking.target(store, "s-1") == tracking.Target("http://env:5000", "cxrstudy")
    write_json(store, "studies/s-1/tracking.json", {"mlflow": "http://file:5000", "experiment": "cxr"})
    assert tracking.target(store, "s-1") == tracking.Target("http://file:5000", "cxr")
    write_json(store, "studies/s-1/tracking.json", {"mlflow": None, "experiment": "cxr"})
    assert tracking.target(store, "s-1") == tracking.Target("http://env:5000", "cxr")


def test_a_config_becomes_flat_params():
    params = tracking.flat_params("training", TrainConfig())
    assert params["training.loss.name"] == "focal" and params["training.loss.args.gamma"] == "2.0"
    assert params["training.lr"] == str(TrainConfig().lr) and all("." in k for k in params)
