"""Checkpoint I/O: last.pt restores the progress, the weights and the RNG streams; loading refuses pickles."""

import io
import pickle
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from jobs.spec.configs import TrainConfig
from jobs.spec.runs import JobSpec
from jobs.store import LocalStore
from jobs.training import checkpoints
from jobs.training.checkpoints import RunProgress
from jobs.training.optim import make_optimizer, make_schedule

CFG = TrainConfig(epochs=4, lr=1e-2, warmup_epochs=1.0)
JOB = JobSpec("study-x", "job-x", "test_resnet", 3, CFG, "datasets/x/y")
CPU = torch.device("cpu")


def parts(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    optimizer = make_optimizer(CFG, model)
    return model, optimizer, make_schedule(CFG, optimizer, steps_per_epoch=5)


def draws() -> tuple[list[float], float, list[float]]:
    return torch.rand(3).tolist(), random.random(), np.random.rand(3).tolist()


def test_last_round_trips_progress_weights_optimizer_and_rng_streams(tmp_path):
    store = LocalStore(tmp_path)
    model, optimizer, scheduler = parts(0)
    for _ in range(3):  # optimizer moments and a schedule position worth restoring
        model(torch.randn(6, 4)).square().mean().backward()
        optimizer.step()
        scheduler.step()
    progress = RunProgress(
        epoch=2, best_score=0.75, best_epoch=1, bad_epochs=1, step=3, partial_loss=1.5, partial_count=48
    )
    torch.manual_seed(11), random.seed(12), np.random.seed(13)
    checkpoints.save_last(store, JOB, model, optimizer, scheduler, progress)
    expected = draws()  # what the saved streams give next

    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    fresh, fresh_opt, fresh_sched = parts(1)
    restored = checkpoints.load_last(store, JOB, CPU, fresh, fresh_opt, fresh_sched)

    assert restored == progress and asdict(restored)["partial_count"] == 48
    assert draws() == expected
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    assert fresh_sched.last_epoch == 3 and fresh_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    moments = [s["exp_avg"] for s in optimizer.state_dict()["state"].values()]
    assert all(torch.equal(a, b["exp_avg"]) for a, b in zip(moments, fresh_opt.state_dict()["state"].values()))
    # The progress is in the checkpoint by name, at top level.
    ckpt = torch.load(io.BytesIO(store.get_bytes(JOB.keys.checkpoint("last.pt"))), weights_only=True)
    assert {k: ckpt[k] for k in asdict(progress)} == asdict(progress) and ckpt["job"]["job_id"] == "job-x"


def test_no_last_checkpoint_means_a_fresh_start(tmp_path):
    model, optimizer, scheduler = parts(0)
    assert checkpoints.load_last(LocalStore(tmp_path), JOB, CPU, model, optimizer, scheduler) is None


def test_best_round_trips_weights_and_epoch(tmp_path):
    store = LocalStore(tmp_path)
    model, _, _ = parts(0)
    checkpoints.save_best(store, JOB, model, epoch=5)
    fresh, _, _ = parts(1)
    assert checkpoints.load_best(store, JOB, CPU, fresh) == 5
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())


class Payload:
    """A pickle that would create a file when unpickled."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def test_loading_refuses_a_pickled_object(tmp_path):
    store, marker = LocalStore(tmp_path / "store"), tmp_path / "ran"
    buf = io.BytesIO()
    torch.save({"model": {}, "epoch": 0, "extra": Payload(marker)}, buf)
    store.put_bytes(JOB.keys.checkpoint("best.pt"), buf.getvalue())
    model, _, _ = parts(0)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        checkpoints.load_best(store, JOB, CPU, model)
    assert not marker.exists()
