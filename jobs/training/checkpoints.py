"""Checkpoints of one run, in the store under ``studies/<study>/jobs/<job>/checkpoints/``.

    last.pt   everything a resume needs, by name: model, optimizer, scheduler, the run's progress
              (``epoch``, ``best_score``, ... at top level: see :class:`RunProgress`), ``rng``, ``job``
    best.pt   the model at the best validation score so far, and its (0-based) ``epoch``

Both are loaded with ``weights_only=True``: a checkpoint holds tensors, numbers and strings, never
pickled objects, so a tampered store cannot run code in the trainer.
"""

from __future__ import annotations

import io
import random
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn

from jobs.spec.runs import JobSpec
from jobs.store import Store

LAST, BEST = "last.pt", "best.pt"


@dataclass
class RunProgress:
    """Where a run stands: what a resume needs besides the weights and the RNG states.

    Args:
        epoch: epochs finished.
        best_score: the best validation score so far (``monitor``, higher is better); None before the first.
        best_epoch: the 0-based epoch of ``best.pt``; -1 before the first.
        bad_epochs: epochs since the last improvement, for early stopping.
        step: steps trained in the unfinished epoch (0: at an epoch boundary).
        partial_loss: sum of training loss x images over those steps.
        partial_count: images over those steps.
    """

    epoch: int = 0
    best_score: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    step: int = 0
    partial_loss: float = 0.0
    partial_count: int = 0


def rng_state() -> dict:
    """The global RNG states (torch CPU, python ``random``, numpy), as tensors, numbers and lists."""
    kind, keys, *rest = np.random.get_state()
    # numpy's key array as a list: weights_only loading refuses numpy arrays.
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": [kind, keys.tolist(), *rest]}


def set_rng_state(rng: dict) -> None:
    """Restore the global RNG states captured by :func:`rng_state`."""
    torch.set_rng_state(rng["torch"].cpu())  # map_location may have moved it; the CPU generator wants a CPU tensor
    random.setstate(rng["python"])
    kind, keys, *rest = rng["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))


def _put(store: Store, job: JobSpec, name: str, ckpt: dict) -> None:
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    store.put_bytes(job.keys.checkpoint(name), buf.getvalue())


def _get(store: Store, job: JobSpec, name: str, device: torch.device) -> dict:
    data = store.get_bytes(job.keys.checkpoint(name))
    return torch.load(io.BytesIO(data), map_location=device, weights_only=True)


def save_last(
    store: Store,
    job: JobSpec,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: RunProgress,
) -> None:
    """Write ``last.pt``: the weights, optimizer and schedule, ``progress`` and the global RNG states now."""
    ckpt = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        **asdict(progress),
        "rng": rng_state(),
        "job": job.to_json(),
    }
    _put(store, job, LAST, ckpt)


def load_last(
    store: Store,
    job: JobSpec,
    device: torch.device,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> RunProgress | None:
    """Restore model, optimizer, schedule and global RNGs from ``last.pt``; its progress, or None without one."""
    if not store.exists(job.keys.checkpoint(LAST)):
        return None
    ckpt = _get(store, job, LAST, device)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    return RunProgress(**{f.name: ckpt[f.name] for f in fields(RunProgress)})


def save_best(store: Store, job: JobSpec, model: nn.Module, epoch: int) -> None:
    """Write ``best.pt``: the weights now, reached at (0-based) ``epoch``."""
    _put(store, job, BEST, {"model": model.state_dict(), "epoch": epoch})


def load_best(store: Store, job: JobSpec, device: torch.device, model: nn.Module) -> int:
    """Load ``best.pt``'s weights into ``model``; the (0-based) epoch they were reached at."""
    best = _get(store, job, BEST, device)
    model.load_state_dict(best["model"])
    return best["epoch"]
