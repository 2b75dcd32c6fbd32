"""The train job on a tiny timm model (test_resnet, 32 px): real training, values checked."""

import csv
import dataclasses
import hashlib
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import timm
import torch

from jobs import train
from jobs.data.labels import CLASSES
from jobs.errors import DamagedArtifact
from jobs.scoring.metrics import auroc_per_class, best_f1_thresholds, f1_per_class
from jobs.spec.study import JobSpec, TrainConfig
from jobs.training import trainer

TINY = TrainConfig(epochs=3, batch_size=16, lr=3e-3, warmup_epochs=0.2, patience=0, weight_decay=1e-4)


def job(manifest, study: str, seed: int = 0, arch: str = "test_resnet", cfg: TrainConfig = TINY) -> JobSpec:
    return JobSpec(study, f"{arch}-s{seed}", arch, seed, cfg, manifest["prefix"])


def read_predictions(store, key):
    rows = list(csv.DictReader(io.StringIO(store.get_text(key))))
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
    labels = np.array([[int(r[f"label_{c}"]) for c in CLASSES] for r in rows])
    return [r["Image Index"] for r in rows], probs, labels


def test_run_outputs_and_thresholds_from_validation_only(prepared, monkeypatch):
    store, m = prepared
    seen = []
    real = trainer.best_f1_thresholds
    monkeypatch.setattr(trainer, "best_f1_thresholds", lambda y, p: seen.append(y.copy()) or real(y, p))
    j = job(m, "outputs")
    result = train.run(j, store, log=lambda s: None)

    assert result["status"] == "succeeded" and result["epochs_run"] == 3 and 1 <= result["best_epoch"] <= 3
    lines = [json.loads(x) for x in store.get_text(j.keys.metrics).splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert [x["best"] for x in lines].count(True) >= 1 and set(lines[0]["val_auroc"]) == set(CLASSES)
    ckpt = torch.load(io.BytesIO(store.get_bytes(j.keys.checkpoint("last.pt"))), weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "best_score", "bad_epochs"} <= set(ckpt)
    assert ckpt["epoch"] == 3

    _, val_p, val_y = read_predictions(store, j.keys.predictions("val"))
    names, test_p, test_y = read_predictions(store, j.keys.predictions("test"))
    assert len(names) == result["test"]["images"] == m["splits"]["test"]["images"]
    # The thresholds were fitted on the validation labels, once, and never on the test labels.
    assert len(seen) == 1 and np.array_equal(seen[0], val_y) and seen[0].shape != test_y.shape
    thresholds = best_f1_thresholds(val_y, val_p)
    assert [result["test"]["thresholds"][c] for c in CLASSES] == pytest.approx(thresholds, abs=1e-6)
    f1 = f1_per_class(test_y, test_p, thresholds)
    assert [result["test"]["f1"][c] for c in CLASSES] == pytest.approx(f1, abs=1e-6)
    auroc = auroc_per_class(test_y, test_p)
    assert [result["test"]["auroc"][c] for c in CLASSES] == pytest.approx(auroc, abs=1e-5)
    assert result["test"]["avg_auroc"] == pytest.approx(auroc.mean(), abs=1e-5)
    assert result["test"]["avg_auroc"] > 0.6  # it learned something in 3 short epochs

    record = json.loads(store.get_text(j.keys.provenance))
    env = record["environment"]
    assert (env["torch"], env["timm"], env["python"]) == (
        torch.__version__,
        timm.__version__,
        platform.python_version(),
    )
    assert env["gpu"] is None and env["host"] == socket.gethostname()
    assert (
        record["data"]["manifest_sha256"] == hashlib.sha256(store.get_bytes(f"{m['prefix']}/manifest.json")).hexdigest()
    )
    assert record["determinism"] == {
        "deterministic": False,
        "cudnn_benchmark": False,
        "amp": False,
        "channels_last": False,
    }
    (attempt,) = record["attempts"]
    assert attempt["attempt"] == 1 and attempt["device"] == "cpu" and attempt["ended"] == record["ended"]
    assert record["status"] == "succeeded" and record["wall_seconds"] == attempt["seconds"] > 0
    assert record["gpu_seconds"] == 0


def test_same_seed_gives_identical_metrics_and_another_seed_differs(prepared):
    store, m = prepared
    a = train.run(job(m, "repeat-a"), store, log=lambda s: None)
    b = train.run(job(m, "repeat-b"), store, log=lambda s: None)
    c = train.run(job(m, "repeat-c", seed=1), store, log=lambda s: None)
    assert a["test"] == b["test"] and a["val"] == b["val"]
    assert a["test"]["auroc"] != c["test"]["auroc"]


def test_loader_workers_start_once_a_run_and_train_the_same_run_as_none(prepared, monkeypatch):
    import multiprocessing.context

    store, m = prepared
    started = []
    real_start = multiprocessing.context.SpawnProcess.start
    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", lambda p: started.append(p) or real_start(p))
    cfg = dataclasses.replace(TINY, bn_recalibrate=2, drop_rate=0.3)  # dropout: the global RNG must match too
    inline = train.run(job(m, "workers-0", cfg=cfg), store, log=lambda s: None)
    assert started == []
    pooled = train.run(job(m, "workers-1", cfg=dataclasses.replace(cfg, num_workers=1)), store, log=lambda s: None)
    # One worker process for 3 epochs of training, BatchNorm recalibration and validation, and the test.
    assert len(started) == 1 and not started[0].is_alive()
    assert pooled["test"] == inline["test"] and pooled["val"] == inline["val"]


def test_the_training_loss_stays_on_the_device_and_is_read_once_an_epoch(prepared, monkeypatch):
    store, m = prepared
    monkeypatch.setattr(trainer, "LOSS_READ_EVERY_S", float("inf"))
    monkeypatch.setattr(trainer, "LOG_EVERY_S", float("inf"))
    steps, reads = [], []
    real_step, real_read = trainer.Trainer.step, trainer.Trainer._read_loss

    def step(self, images, labels):
        loss = real_step(self, images, labels)
        steps.append((self.progress.epoch, loss, len(images)))
        return loss

    monkeypatch.setattr(trainer.Trainer, "step", step)
    monkeypatch.setattr(
        trainer.Trainer, "_read_loss", lambda self: reads.append(self.progress.epoch) or real_read(self)
    )
    j = job(m, "loss-reads", cfg=dataclasses.replace(TINY, epochs=2))
    train.run(j, store, log=lambda s: None)
    assert reads == [0, 1]  # at the end of each epoch, never per step
    assert all(isinstance(loss, torch.Tensor) and loss.shape == () for _, loss, _ in steps)
    lines = [json.loads(x) for x in store.get_text(j.keys.metrics).splitlines()]
    for epoch, line in enumerate(lines):
        mine = [(float(loss), n) for e, loss, n in steps if e == epoch]
        assert line["train_loss"] == round(sum(loss * n for loss, n in mine) / sum(n for _, n in mine), 6)


def test_the_step_hook_is_told_the_mean_loss_as_of_the_last_read(prepared, monkeypatch):
    store, m = prepared
    monkeypatch.setattr(trainer, "LOSS_READ_EVERY_S", 0.0)  # a read after every step
    losses, told = [], []
    real_step = trainer.Trainer.step
    monkeypatch.setattr(
        trainer.Trainer, "step", lambda self, x, y: losses.append((float(out := real_step(self, x, y)), len(x))) or out
    )
    j = job(m, "hook-loss", cfg=dataclasses.replace(TINY, epochs=1))
    train.run(j, store, log=lambda s: None, on_step=lambda p: told.append(p["train_loss"]))
    means = [sum(a * n for a, n in losses[: k + 1]) / sum(n for _, n in losses[: k + 1]) for k in range(len(losses))]
    assert told == [round(x, 6) for x in means]


def test_a_job_with_result_json_is_skipped(prepared):
    store, m = prepared
    j = job(m, "skip")
    store.put_text(j.keys.result, json.dumps({"status": "succeeded", "marker": 1}))
    messages = []
    assert train.run(j, store, log=messages.append)["marker"] == 1
    assert messages == [f"{j.job_id}: result.json exists; skipped"]
    assert not store.exists(j.keys.metrics)


def _kill_after_two_epochs_and_resume(store, m, tmp_path, cfg: TrainConfig) -> tuple[dict, dict]:
    """Run ``python -m jobs.train`` (on CUDA when there is one), SIGKILL it once two epochs have
    logged, resume in this process; returns the resumed run's result and an uninterrupted run's."""
    killed = job(m, "killed", cfg=cfg)
    (tmp_path / "job.json").write_text(json.dumps(killed.to_json()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.train", "--job", str(tmp_path / "job.json"), "--store", store.uri],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    metrics_key = killed.keys.metrics
    deadline = time.monotonic() + 300
    while not (store.exists(metrics_key) and len(store.get_text(metrics_key).splitlines()) >= 2):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not store.exists(killed.keys.result), "training finished before it could be killed"

    messages = []
    resumed = train.run(killed, store, log=messages.append)
    resume_line = next(x for x in messages if "resuming" in x)
    start_epoch = int(resume_line.split("at epoch ")[1].split("/")[0])
    # Two epochs had logged metrics; the kill may land before epoch 2's last.pt: resume at 2 or 3, never 1.
    assert start_epoch in (2, 3)
    epochs = [json.loads(x)["epoch"] for x in store.get_text(metrics_key).splitlines()]
    assert epochs == list(range(1, cfg.epochs + 1))
    assert sum(1 for x in messages if ": epoch " in x and "train loss" in x) == cfg.epochs - start_epoch + 1
    return resumed, train.run(job(m, "uninterrupted", cfg=cfg), store, log=lambda s: None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA: test_a_killed_cuda_run_resumes_as_if_uninterrupted")
def test_killed_training_resumes_at_the_next_epoch_and_ends_as_if_uninterrupted(prepared, tmp_path):
    store, m = prepared
    cfg = TrainConfig(epochs=8, batch_size=16, lr=3e-3, warmup_epochs=0.2, patience=0)
    resumed, uninterrupted = _kill_after_two_epochs_and_resume(store, m, tmp_path, cfg)
    assert resumed["test"] == uninterrupted["test"]
    record = json.loads(store.get_text(job(m, "killed", cfg=cfg).keys.provenance))
    killed, finished = record["attempts"]
    assert [killed["attempt"], finished["attempt"]] == [1, 2]
    assert killed["ended"] is None and killed["seconds"] > 0  # counted up to its last finished epoch
    assert finished["ended"] == record["ended"] and record["wall_seconds"] == round(
        killed["seconds"] + finished["seconds"], 1
    )


# --- on a CUDA GPU (the device tool); skipped elsewhere -------------------------------------------
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DETERMINISTIC = dataclasses.replace(TINY, deterministic=True, num_workers=2)


@cuda_only
def test_a_cuda_run_says_cuda_and_deterministic_kernels_give_identical_metrics_twice(prepared):
    store, m = prepared
    a = train.run(job(m, "cuda-a", cfg=DETERMINISTIC), store, log=lambda s: None)
    b = train.run(job(m, "cuda-b", cfg=DETERMINISTIC), store, log=lambda s: None)
    assert a["device"] == "cuda" and a["test"] == b["test"] and a["val"] == b["val"]
    record = json.loads(store.get_text(job(m, "cuda-a", cfg=DETERMINISTIC).keys.provenance))
    assert record["environment"]["gpu"]["name"] == torch.cuda.get_device_name()
    assert record["determinism"]["deterministic"] is True and record["gpu_seconds"] == record["wall_seconds"] > 0


@cuda_only
def test_the_focal_loss_is_float32_under_cuda_autocast(prepared, monkeypatch):
    store, m = prepared
    seen = []
    real = trainer.create_loss

    def recording(name, **args):
        loss = real(name, **args)
        forward = loss.forward
        loss.forward = lambda logits, y: seen.append((logits.dtype, (out := forward(logits, y)).dtype)) or out
        return loss

    monkeypatch.setattr(trainer, "create_loss", recording)
    train.run(job(m, "cuda-focal", cfg=dataclasses.replace(TINY, epochs=1)), store, log=lambda s: None)
    assert seen and set(seen) == {(torch.bfloat16, torch.float32)}  # bf16 logits, float32 loss


@cuda_only
def test_training_steps_never_wait_for_the_device(prepared):
    store, m = prepared
    with trainer.Trainer(job(m, "cuda-sync", cfg=TINY), store, torch.device("cuda"), log=lambda s: None) as t:
        images, labels, _ = next(t.batches("train", 0, train=True))
        images, labels = images.cuda(), labels.cuda()
        t.step(images, labels)  # the first step may allocate and autotune
        total = torch.zeros((), dtype=torch.float64, device="cuda")
        torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation raises
        try:
            for _ in range(3):
                total += t.step(images, labels).double() * len(images)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert total.item() > 0


@cuda_only
def test_a_killed_cuda_run_resumes_as_if_uninterrupted(prepared, tmp_path):
    store, m = prepared
    cfg = dataclasses.replace(DETERMINISTIC, epochs=8)
    resumed, uninterrupted = _kill_after_two_epochs_and_resume(store, m, tmp_path, cfg)
    assert resumed["device"] == "cuda" and resumed["test"] == uninterrupted["test"]


def test_a_stop_inside_an_epoch_checkpoints_the_position_and_the_rerun_is_the_same_run(prepared):
    store, m = prepared
    j = job(m, "stopped-mid-epoch")
    seen = []

    def stop_at_epoch_2_step_3(p):
        seen.append((p["epoch"], p["step"]))
        return "checkpoint" if (p["epoch"], p["step"]) == (2, 3) else None

    assert train.run(j, store, log=lambda s: None, on_step=stop_at_epoch_2_step_3) is None
    steps = max(s for e, s in seen if e == 1)
    assert seen[-1] == (2, 3) and seen.count((1, 1)) == 1 and steps == m["splits"]["train"]["images"] // 16
    ckpt = torch.load(io.BytesIO(store.get_bytes(j.keys.checkpoint("last.pt"))), weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], ckpt["partial_count"]) == (1, 3, 48)
    assert not store.exists(j.keys.result)

    messages, resumed_steps = [], []
    resumed = train.run(j, store, log=messages.append, on_step=lambda p: resumed_steps.append(p["step"]))
    assert f"{j.job_id}: resuming from checkpoints/last.pt at epoch 2/3 step 3/{steps}" in messages
    assert resumed_steps[0] == 4  # the three trained batches are not trained again
    uninterrupted = train.run(job(m, "not-stopped"), store, log=lambda s: None)
    assert resumed["test"] == uninterrupted["test"] and resumed["val"] == uninterrupted["val"]


def test_abandon_stops_without_writing(prepared):
    store, m = prepared
    j = job(m, "abandoned")
    assert train.run(j, store, log=lambda s: None, on_step=lambda p: "abandon" if p["epoch"] == 2 else None) is None
    ckpt = torch.load(io.BytesIO(store.get_bytes(j.keys.checkpoint("last.pt"))), weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 0)
    assert len(store.get_text(j.keys.metrics).splitlines()) == 1


def test_a_diverged_model_fails_with_what_happened_and_what_to_do(prepared, monkeypatch):
    store, m = prepared
    real = trainer.create_model

    def nan_model(*args, **kwargs):
        model = real(*args, **kwargs)
        forward = model.forward
        model.forward = lambda x: forward(x) * float("nan")  # every output NaN, as after a divergence
        return model

    monkeypatch.setattr(trainer, "create_model", nan_model)
    j = job(m, "diverged")
    with pytest.raises(trainer.TrainingDiverged, match=r"val probabilities contain NaN: training diverged \(lower"):
        train.run(j, store, log=lambda s: None)
    assert not store.exists(j.keys.result)


# --- damaged checkpoints: set aside, and the run still ends as if nothing had happened -------------------
def metrics_epochs(store, j) -> list[int]:
    return [json.loads(x)["epoch"] for x in store.get_text(j.keys.metrics).splitlines()]


def set_aside(store, j) -> list[str]:
    return sorted(o.key for o in store.list(j.keys.checkpoint("")) if ".damaged-" in o.key)


def test_a_damaged_last_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(prepared):
    store, m = prepared
    j = job(m, "damaged-last")
    # Stopped in epoch 3 without a write: last.pt holds epoch 2, last.prev.pt epoch 1, metrics epochs 1-2.
    assert train.run(j, store, log=lambda s: None, on_step=lambda p: "abandon" if p["epoch"] == 3 else None) is None
    cut = store.get_bytes(j.keys.checkpoint("last.pt"))[:100]  # as by a failed copy: "PytorchStreamReader failed"
    store.put_bytes(j.keys.checkpoint("last.pt"), cut)

    messages = []
    result = train.run(j, store, log=messages.append)

    (aside,) = set_aside(store, j)
    assert aside.startswith(j.keys.checkpoint("last.pt.damaged-")) and store.get_bytes(aside) == cut
    assert [x for x in messages if "warning" in x] == [
        f"{j.job_id}: warning: {store.url(j.keys.checkpoint('last.pt'))} cannot be read (RuntimeError: "
        f"PytorchStreamReader failed reading zip archive: failed finding central directory); set aside as {aside}"
    ]
    assert f"{j.job_id}: resuming from checkpoints/last.prev.pt at epoch 2/3" in messages
    assert sum(1 for x in messages if " train loss " in x) == 2  # epochs 2 and 3
    assert metrics_epochs(store, j) == [1, 2, 3]  # epoch 2 once, though it ran twice
    uninterrupted = train.run(job(m, "never-damaged"), store, log=lambda s: None)
    assert result["test"] == uninterrupted["test"] and result["val"] == uninterrupted["val"]
    assert (result["epochs_run"], result["best_epoch"]) == (3, uninterrupted["best_epoch"])


def test_a_damaged_best_checkpoint_fails_the_run_and_the_next_attempt_trains_it_again(prepared):
    store, m = prepared
    j = job(m, "damaged-best", cfg=dataclasses.replace(TINY, epochs=1))

    def damage_best(record):  # after the last checkpoint, before the test
        store.put_bytes(j.keys.checkpoint("best.pt"), b"\x00" * 64)

    with pytest.raises(DamagedArtifact) as caught:
        train.run(j, store, log=lambda s: None, on_epoch=damage_best)
    (aside,) = set_aside(store, j)
    assert str(caught.value).startswith(f"{store.url(j.keys.checkpoint('best.pt'))} cannot be read (")
    assert str(caught.value).endswith(
        f"it was set aside as {aside}. `cxrstudy resume damaged-best` (or `cxrstudy run` again) trains run "
        f"{j.job_id} again from the start"
    )
    assert not store.exists(j.keys.result) and not store.exists(j.keys.checkpoint("best.pt"))
    first = [{**json.loads(x), "seconds": 0} for x in store.get_text(j.keys.metrics).splitlines()]

    messages = []
    result = train.run(j, store, log=messages.append)
    assert f"{j.job_id}: checkpoints/best.pt is gone (set aside?); training the run again from the start" in messages
    assert sum(1 for x in messages if " train loss " in x) == 1 and result["epochs_run"] == 1
    # Trained again from the start, the same run: the same epoch as the first attempt's.
    assert [{**json.loads(x), "seconds": 0} for x in store.get_text(j.keys.metrics).splitlines()] == first


class RecordingTracker:
    """Stands in for jobs.tracking.RunTracker: what the trainer told MLflow, in order."""

    calls: list[str] = []

    def __init__(self, store, job, log):
        pass

    def __getattr__(self, name):
        return lambda *args, **kwargs: RecordingTracker.calls.append(name)


@pytest.mark.parametrize(
    ("stop", "told"),
    [
        ("checkpoint", ["start", "stopped"]),  # SIGTERM or cancel: KILLED until the resume
        ("abandon", ["start"]),  # a lost lease: the run is the new holder's to track
        ("lease", ["start"]),  # LeaseLost raised from a fenced write: likewise, never FAILED
    ],
)
def test_a_stopped_run_tells_tracking_only_what_is_its_own(prepared, monkeypatch, stop, told):
    from jobs.errors import LeaseLost
    from jobs.training import trainer

    store, m = prepared
    RecordingTracker.calls = []
    monkeypatch.setattr(trainer, "RunTracker", RecordingTracker)

    def on_step(position):
        if stop == "lease":
            raise LeaseLost("another worker acquired the job")
        return stop

    j = job(m, f"tracked-{stop}")
    if stop == "lease":
        with pytest.raises(LeaseLost):
            train.run(j, store, log=lambda s: None, on_step=on_step)
    else:
        assert train.run(j, store, log=lambda s: None, on_step=on_step) is None
    assert RecordingTracker.calls == told
