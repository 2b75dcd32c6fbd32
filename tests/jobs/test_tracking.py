"""MLflow tracking: a real `mlflow server` (sqlite backend, loopback port) receives a small study's
runs, read back through MLflow's own client; with the server stopped the study still finishes."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from jobs import tracking
from jobs.spec.configs import TrainConfig
from jobs.spec.runs import JobSpec
from jobs.store import LocalStore
from jobs.store.records import write_json, write_study
from tests.conftest import free_port
from tests.orchestrator.test_cli import cxrstudy

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / ".venv-mlflow" / "bin" / "mlflow"  # scripts/bootstrap.sh --test installs the server there


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
    # No job runner: MLflow 3 would start six huey consumers beside the server, which the tests need none of.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(root / "server.log", "wb") as out:  # its own process group: every process it starts ends with it
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True
        )
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
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


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


@contextlib.contextmanager
def silent_server():
    """A loopback port that accepts connections and never answers: a server hung, or a proxy blackholing."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held, stop = [], threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


@pytest.mark.parametrize("server", ["stopped", "silent"])
def test_with_the_server_down_the_study_finishes_with_one_warning_per_run(synthetic, tmp_path, server):
    with contextlib.ExitStack() as stack:
        # Nothing listens (a refused connection), or a listener never answers (each call waits for its timeout).
        uri = f"http://127.0.0.1:{free_port()}" if server == "stopped" else stack.enter_context(silent_server())
        store = tmp_path / "store"
        proc = cxrstudy("run", study_file(tmp_path, synthetic, f"untracked-{server}", uri), "--store", store)
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


# ---------------------------------------------------------------- races, resumes, ends (real server)


def tracked_store(tmp_path, uri: str, experiment: str, jobs: int = 1):
    store = LocalStore(tmp_path / "store")
    write_json(store, "studies/s-1/tracking.json", {"mlflow": uri, "experiment": experiment})
    specs = [JobSpec("s-1", f"j-{i}", "densenet121", i, TrainConfig(), "datasets/d/x") for i in range(jobs)]
    return store, specs


def test_workers_that_start_together_share_the_experiment_and_end_under_one_parent(mlflow_server, tmp_path):
    import threading

    from mlflow import MlflowClient

    store, jobs = tracked_store(tmp_path, mlflow_server, "race", jobs=8)
    warnings: list[str] = []
    trackers = [tracking.RunTracker(store, job, warnings.append) for job in jobs]
    threads = [threading.Thread(target=t.start, args=({"image_size": 64},)) for t in trackers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert warnings == [] and all(t.run_id for t in trackers)  # nobody lost tracking to the experiment's creation
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("race").experiment_id
    # Whatever parents the race made, the study ends with one, every child under it.
    extra = client.create_run(experiment, tags={tracking.STUDY_TAG: "s-1", tracking.ROLE_TAG: "study"})
    moved = client.create_run(experiment, tags={tracking.PARENT_TAG: extra.info.run_id, tracking.ROLE_TAG: "run"})
    for job, t in zip(jobs, trackers):
        store.put_text(job.keys.result, '{"status": "succeeded"}')
        t.finish({"test": {"avg_auroc": 0.5}, "best_epoch": 1}, None)
    write_study(store, {"name": "s"}, "s-1", "datasets/d/x", jobs)
    store.put_text("studies/s-1/report/report.md", "# report\n")
    kept = json.loads(store.get_text("studies/s-1/mlflow.json"))
    write_json(store, "studies/s-1/mlflow.json", {**kept, "parent_run_id": extra.info.run_id})  # a loser's choice
    tracking.StudyTracker(store, "s-1", warnings.append).report("file:///report.md")
    assert warnings == []
    parents = client.search_runs([experiment], filter_string="tags.`cxrstudy.role` = 'study'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    keep = parents[0].info.run_id
    children = client.search_runs([experiment], filter_string="tags.`cxrstudy.role` = 'run'")
    assert len(children) == 9 and {c.data.tags[tracking.PARENT_TAG] for c in children} == {keep}
    assert moved.info.run_id in {c.info.run_id for c in children}
    assert json.loads(store.get_text("studies/s-1/mlflow.json"))["parent_run_id"] == keep
    # The report went to the parent that was kept, not to the one the settling deleted.
    assert [a.path for a in client.list_artifacts(keep, "report")] == ["report/report.md"]
    assert parents[0].data.tags["cxrstudy.report"] == "file:///report.md"


def test_a_resumed_run_logs_to_the_same_child_and_its_ends_are_recorded(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    store, (job,) = tracked_store(tmp_path, mlflow_server, "ends")
    first = tracking.RunTracker(store, job, pytest.fail)
    first.start()
    first.epoch({"epoch": 1, "val_avg_auroc": 0.6, "val_auroc": {"Mass": 0.7}})
    first.stopped()  # SIGTERM: checkpointed, requeued
    assert client.get_run(first.run_id).info.status == "KILLED"
    again = tracking.RunTracker(store, job, pytest.fail)
    again.start()  # the resume
    assert again.run_id == first.run_id and client.get_run(again.run_id).info.status == "RUNNING"
    again.epoch({"epoch": 2, "val_avg_auroc": 0.65})
    again.fail("TrainingDiverged: NaN")
    run = client.get_run(first.run_id)
    assert run.info.status == "FAILED" and run.data.tags["cxrstudy.error"] == "TrainingDiverged: NaN"
    assert [m.step for m in client.get_metric_history(first.run_id, "val_avg_auroc")] == [1, 2]
    assert run.data.metrics["val_auroc.Mass"] == 0.7
    # A worker that died after result.json but before tracking ended: the next look settles it.
    result = {"test": {"avg_auroc": 0.71, "loss": 0.2}, "best_epoch": 2}
    client.update_run(first.run_id, status="RUNNING")
    tracking.RunTracker(store, job, pytest.fail).settle(result)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["test_avg_auroc"] == 0.71


def test_a_study_with_two_prepared_datasets_names_both_on_its_parent(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    store, (job,) = tracked_store(tmp_path, mlflow_server, "datasets")
    datasets = {"datasets/nih-aaa": {"clahe": True}, "datasets/nih-bbb": {"clahe": False}}
    study = {"spec": {"name": "ablation"}, "data_prefix": "datasets/nih-aaa", "datasets": datasets}
    write_json(store, "studies/s-1/study.json", study)
    tracker = tracking.RunTracker(store, job, pytest.fail)
    tracker.start()
    client = MlflowClient(tracking_uri=mlflow_server)
    params = client.get_run(client.get_run(tracker.run_id).data.tags["mlflow.parentRunId"]).data.params
    assert params["study.data_prefix"] == "datasets/nih-aaa"
    assert params["study.datasets"] == "datasets/nih-aaa, datasets/nih-bbb"


def test_each_attempt_catches_up_on_the_epochs_mlflow_missed_so_each_epoch_is_one_point(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    from jobs.training import checkpoints

    client = MlflowClient(tracking_uri=mlflow_server)
    store, (job,) = tracked_store(tmp_path, mlflow_server, "catch-up")

    def record(epoch: int) -> dict:
        return {"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 0.5, "val_avg_auroc": 0.5 + epoch / 100}

    def history() -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train_loss"))

    # A first attempt ran two epochs while the server was unreachable: the next attempt logs them first.
    for epoch in (1, 2):
        checkpoints.append_metrics(store, job, record(epoch))
    first = tracking.RunTracker(store, job, pytest.fail)
    first.start()
    run_id = first.run_id
    assert history() == [(1, 1.0), (2, 0.5)]
    first.epoch(record(3))
    # Killed after epoch 4's last.pt and before its log line: the resume at epoch 5 logs epoch 4, once.
    for epoch in (3, 4):
        checkpoints.append_metrics(store, job, record(epoch))
    tracking.RunTracker(store, job, pytest.fail).start()
    assert history() == [(e, 1.0 / e) for e in (1, 2, 3, 4)]
    assert [m.step for m in client.get_metric_history(run_id, "val_avg_auroc")] == [1, 2, 3, 4]
    assert "cxrstudy.epochs_trained_again" not in client.get_run(run_id).data.tags
    # last.pt damaged: the run resumes from last.prev.pt at epoch 3 and trains epochs 3 and 4 again.
    checkpoints.truncate_metrics(store, job, 2)
    again = tracking.RunTracker(store, job, pytest.fail)
    again.start()
    assert history() == [(e, 1.0 / e) for e in (1, 2, 3, 4)]  # nothing logged twice at the start
    tag = client.get_run(run_id).data.tags["cxrstudy.epochs_trained_again"]
    assert tag.startswith("3, 4: resumed from an older checkpoint")
    for epoch in (3, 4):  # trained again: MLflow keeps both tries; the tag outlives later resumes
        again.epoch(record(epoch))
        checkpoints.append_metrics(store, job, record(epoch))
    tracking.RunTracker(store, job, pytest.fail).start()
    assert [step for step, _ in history()] == [1, 2, 3, 3, 4, 4]
    assert client.get_run(run_id).data.tags["cxrstudy.epochs_trained_again"].startswith("3, 4: resumed")


def test_a_tracking_file_that_cannot_be_read_is_one_warning_and_no_tracking(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    store.put_text("studies/s-1/tracking.json", "[1, 2]")  # JSON, not settings
    monkeypatch.setattr(tracking, "_client", lambda uri: pytest.fail("a client was made"))
    warnings: list[str] = []
    job = JobSpec("s-1", "j-1", "densenet121", 1, TrainConfig(), "datasets/d/x")
    t = tracking.RunTracker(store, job, warnings.append)
    t.start()
    t.finish({}, None)
    assert len(warnings) == 1 and warnings[0].startswith("warning: MLflow tracking of run j-1 is off:")
