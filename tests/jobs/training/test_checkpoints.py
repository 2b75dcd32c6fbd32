"""Checkpoint I/O: last.pt restores the progress, the weights and the RNG streams; loading refuses pickles;
a checkpoint that cannot be read is set aside and the run resumes from last.prev.pt, else from the start."""

import io
import json
import pickle
import random
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from jobs.errors import DamagedArtifact, StoreError
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
    checkpoints.save_best(store, JOB, model, epoch=1)  # progress.best_epoch 1: a resume needs its best.pt
    torch.manual_seed(11), random.seed(12), np.random.seed(13)
    checkpoints.save_last(store, JOB, model, optimizer, scheduler, progress)
    expected = draws()  # what the saved streams give next

    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    fresh, fresh_opt, fresh_sched = parts(1)
    restored = checkpoints.load_last(store, JOB, CPU, fresh, fresh_opt, fresh_sched)

    assert restored.progress == progress and asdict(restored.progress)["partial_count"] == 48
    assert restored.name == "last.pt" and restored.data == store.get_bytes(JOB.keys.checkpoint("last.pt"))
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


def pickled(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"model": {}, "epoch": 0, "extra": Payload(marker)}, buf)
    return buf.getvalue()


def test_loading_refuses_a_pickled_object(tmp_path):
    store, marker = LocalStore(tmp_path / "store"), tmp_path / "ran"
    store.put_bytes(JOB.keys.checkpoint("best.pt"), pickled(marker))
    model, _, _ = parts(0)
    with pytest.raises(
        DamagedArtifact, match=r"cannot be read \(weights-only loading refused it: .*\); it was set aside"
    ) as caught:
        checkpoints.load_best(store, JOB, CPU, model, log=lambda m: None)
    assert isinstance(caught.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()


# --- damaged checkpoints ----------------------------------------------------------------------------------
def saved_twice(store) -> tuple[bytes, bytes, nn.Module]:
    """last.pt at epoch 2 over last.prev.pt at epoch 1, as two saves of a run leave them; (prev, last, prev's model)."""
    model, optimizer, scheduler = parts(0)
    first = checkpoints.save_last(store, JOB, model, optimizer, scheduler, RunProgress(epoch=1, best_epoch=0))
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    checkpoints.save_best(store, JOB, model, epoch=1)
    last = checkpoints.save_last(store, JOB, model, optimizer, scheduler, RunProgress(epoch=2, best_epoch=1), first)
    return first, last, kept


def load(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), weights_only=True)


def checkpoint_with(data: bytes, **changes) -> bytes:
    ckpt = load(data)
    for key, value in changes.items():
        if value is None:
            del ckpt[key]
        else:
            ckpt[key] = value
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


DAMAGE = {
    "truncated": (lambda data, tmp: data[:100], "RuntimeError: PytorchStreamReader failed reading zip archive"),
    "cut short": (lambda data, tmp: data[:-10], "ValueError: negative seek value"),
    "garbage": (lambda data, tmp: b"\x00not a checkpoint" * 50, "not a checkpoint of tensors, numbers and strings"),
    "empty": (lambda data, tmp: b"", "EOFError"),
    "a pickle": (lambda data, tmp: pickled(tmp / "ran"), "weights-only loading refused it: not a checkpoint"),
    "no progress fields": (lambda data, tmp: checkpoint_with(data, epoch=None, step=None), "has no epoch, step"),
    "another run's": (
        lambda data, tmp: checkpoint_with(data, job={"job_id": "job-y"}),
        "not a checkpoint of run job-x",
    ),
    "wrong shapes": (
        lambda data, tmp: checkpoint_with(data, model={**load(data)["model"], "0.weight": torch.zeros(3, 3)}),
        "RuntimeError: Error(s) in loading state_dict for Sequential: size mismatch for 0.weight",
    ),
    "epoch out of range": (lambda data, tmp: checkpoint_with(data, epoch=99), "out of range"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_last_is_set_aside_and_the_run_resumes_from_the_previous_one(tmp_path, damage):
    store = LocalStore(tmp_path / "store")
    first, last, kept = saved_twice(store)
    assert store.get_bytes(JOB.keys.checkpoint("last.prev.pt")) == first  # the save before is kept
    make, why = DAMAGE[damage]
    damaged = make(last, tmp_path)
    store.put_bytes(JOB.keys.checkpoint("last.pt"), damaged)

    messages = []
    model, optimizer, scheduler = parts(1)
    resumed = checkpoints.load_last(store, JOB, CPU, model, optimizer, scheduler, log=messages.append)

    assert resumed.name == "last.prev.pt" and resumed.progress == RunProgress(epoch=1, best_epoch=0)
    assert resumed.data == first and all(torch.equal(model.state_dict()[k], v) for k, v in kept.items())
    (aside,) = [o.key for o in store.list("studies/") if ".damaged-" in o.key]
    assert re.fullmatch(r"studies/study-x/jobs/job-x/checkpoints/last\.pt\.damaged-\d{8}T\d{6}Z", aside)
    assert store.get_bytes(aside) == damaged and not store.exists(JOB.keys.checkpoint("last.pt"))
    (message,) = messages
    assert message.startswith(f"job-x: warning: {store.url(JOB.keys.checkpoint('last.pt'))} cannot be read (")
    assert why in message and message.endswith(f"); set aside as {aside}") and "weights_only" not in message
    assert not (tmp_path / "ran").exists()


def test_with_no_readable_checkpoint_the_run_starts_again_untouched(tmp_path):
    store = LocalStore(tmp_path / "store")
    _, last, _ = saved_twice(store)
    # last.pt fails half-way (its weights load, then the optimizer refuses its state); last.prev.pt is garbage.
    half = checkpoint_with(last, optimizer={"state": {}, "param_groups": []})
    store.put_bytes(JOB.keys.checkpoint("last.pt"), half)
    store.put_bytes(JOB.keys.checkpoint("last.prev.pt"), b"garbage")
    model, optimizer, scheduler = parts(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    messages = []

    assert checkpoints.load_last(store, JOB, CPU, model, optimizer, scheduler, log=messages.append) is None
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert optimizer.state_dict()["state"] == {} and scheduler.last_epoch == 0
    assert [m.split(" cannot be read")[0] for m in messages] == [
        f"job-x: warning: {store.url(JOB.keys.checkpoint(n))}" for n in ("last.pt", "last.prev.pt")
    ]
    aside = sorted(
        o.key.rsplit("/", 1)[1].split(".damaged-")[0] for o in store.list("studies/") if ".damaged-" in o.key
    )
    assert aside == ["last.prev.pt", "last.pt"] and not store.exists(JOB.keys.checkpoint("last.prev.pt"))


def test_a_store_that_cannot_be_read_is_not_taken_for_a_damaged_checkpoint(tmp_path):
    store = LocalStore(tmp_path / "store")
    saved_twice(store)

    def unreachable(key):
        raise StoreError(f"GET {key}: cannot reach the S3 endpoint")

    store.get_bytes = unreachable
    model, optimizer, scheduler = parts(1)
    with pytest.raises(StoreError, match="cannot reach"):
        checkpoints.load_last(store, JOB, CPU, model, optimizer, scheduler, log=lambda m: None)
    assert store.exists(JOB.keys.checkpoint("last.pt")) and not [o for o in store.list() if ".damaged-" in o.key]


def test_a_damaged_best_is_set_aside_and_the_next_attempt_trains_again_from_the_start(tmp_path):
    store = LocalStore(tmp_path / "store")
    saved_twice(store)
    store.put_bytes(JOB.keys.checkpoint("best.pt"), b"PK\x03\x04 cut short")
    model, optimizer, scheduler = parts(1)
    messages = []
    with pytest.raises(DamagedArtifact) as caught:
        checkpoints.load_best(store, JOB, CPU, model, log=messages.append)
    (aside,) = [o.key for o in store.list("studies/") if ".damaged-" in o.key]
    assert str(caught.value) == (
        f"{store.url(JOB.keys.checkpoint('best.pt'))} cannot be read ({messages[0].split('(', 1)[1].split(');')[0]}); "
        f"it was set aside as {aside}. `cxrstudy resume study-x` (or `cxrstudy run` again) trains run job-x again "
        "from the start"
    )
    assert aside.startswith(JOB.keys.checkpoint("best.pt.damaged-")) and store.get_bytes(aside).endswith(b"short")

    # The next attempt finds last.pt (epoch 2, best at epoch 1) without its best.pt: it starts over.
    messages.clear()
    assert checkpoints.load_last(store, JOB, CPU, model, optimizer, scheduler, log=messages.append) is None
    assert messages == ["job-x: checkpoints/best.pt is gone (set aside?); training the run again from the start"]
    assert optimizer.state_dict()["state"] == {}


def test_save_keeps_the_previous_bytes_as_last_prev(tmp_path):
    store = LocalStore(tmp_path)
    model, optimizer, scheduler = parts(0)
    first = checkpoints.save_last(store, JOB, model, optimizer, scheduler, RunProgress(epoch=1))
    assert not store.exists(JOB.keys.checkpoint("last.prev.pt"))  # nothing to keep yet
    second = checkpoints.save_last(store, JOB, model, optimizer, scheduler, RunProgress(epoch=2), previous=first)
    assert store.get_bytes(JOB.keys.checkpoint("last.prev.pt")) == first
    assert store.get_bytes(JOB.keys.checkpoint("last.pt")) == second != first


def test_metrics_are_cut_back_to_the_checkpoint_a_run_resumes_from(tmp_path):
    store = LocalStore(tmp_path)
    for epoch in (1, 2, 3):
        checkpoints.append_metrics(store, JOB, {"epoch": epoch, "val_loss": epoch / 10})
    checkpoints.truncate_metrics(store, JOB, 1)
    assert [json.loads(x)["epoch"] for x in store.get_text(JOB.keys.metrics).splitlines()] == [1]
    checkpoints.append_metrics(store, JOB, {"epoch": 2, "val_loss": 0.5})
    assert [json.loads(x) for x in store.get_text(JOB.keys.metrics).splitlines()][-1] == {"epoch": 2, "val_loss": 0.5}
    checkpoints.truncate_metrics(store, JOB, 0)  # a start from scratch
    assert not store.exists(JOB.keys.metrics)
