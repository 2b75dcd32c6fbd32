"""Checkpoints of one run, in the store under ``studies/<study>/jobs/<job>/checkpoints/``.

    last.pt        everything a resume needs, by name: model, optimizer, scheduler, the run's progress
                   (``epoch``, ``best_score``, ... at top level: see :class:`RunProgress`), ``rng``, ``job``
    last.prev.pt   the ``last.pt`` before it: where a run resumes when ``last.pt`` cannot be read
    best.pt        the model at the best validation score so far, and its (0-based) ``epoch``

All are loaded with ``weights_only=True``: a checkpoint holds tensors, numbers and strings, never
pickled objects, so a tampered store cannot run code in the trainer.

A checkpoint that cannot be read (truncated, garbage, a pickle, fields missing or of the wrong
shape) is set aside, never deleted: copied to ``<name>.damaged-<UTC time>`` beside it, then
removed, with a warning naming both keys. A damaged ``last.pt`` resumes the run from
``last.prev.pt`` (the same run: randomness comes from the seed, the epoch and the saved RNG
states), else from the start. The cost of ``last.prev.pt``: each save PUTs the bytes of the
previous save (kept in memory, never downloaded again) before the new ``last.pt``, so one more
upload of one checkpoint per epoch. A damaged ``best.pt`` cannot be remade without training:
testing fails with :class:`~jobs.errors.DamagedArtifact`, and the next attempt, finding no
``best.pt`` behind a checkpoint that had one, trains the run again from the start.

``metrics.jsonl`` follows the checkpoint a run resumes from: lines of later epochs (written before
a kill, or by epochs of a set-aside ``last.pt``) are dropped, so each epoch is there once.
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn

from jobs.errors import DamagedArtifact
from jobs.spec.runs import JobSpec
from jobs.store import Store
from jobs.store.records import metrics_lines

LAST, PREV, BEST = "last.pt", "last.prev.pt", "best.pt"
Log = Callable[[str], None]


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


@dataclass
class Resumed:
    """What :func:`load_last` restored: the progress, the checkpoint it came from, and its bytes
    (the next :func:`save_last` keeps them as ``last.prev.pt``)."""

    progress: RunProgress
    name: str
    data: bytes


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


def _encode(ckpt: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


def _decode(data: bytes, device: torch.device, *required: str) -> dict:
    ckpt = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"holds a {type(ckpt).__name__}, not a checkpoint")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise ValueError(f"has no {', '.join(missing)}")
    return ckpt


def _why(exc: BaseException) -> str:
    """What went wrong, in one short line (torch's messages run to paragraphs)."""
    if isinstance(exc, pickle.UnpicklingError):  # torch's text suggests weights_only=False: never for a store's file
        return "weights-only loading refused it: not a checkpoint of tensors, numbers and strings"
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split()).split(". ")[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def set_aside(store: Store, job: JobSpec, name: str, data: bytes, why: str, log: Log) -> str:
    """Keep a damaged checkpoint's ``data`` as ``<name>.damaged-<UTC time>`` and remove it; returns the new key."""
    key = job.keys.set_aside(name, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    store.put_bytes(key, data)
    store.delete(job.keys.checkpoint(name))
    log(f"{job.job_id}: warning: {store.url(job.keys.checkpoint(name))} cannot be read ({why}); set aside as {key}")
    return key


def save_last(
    store: Store,
    job: JobSpec,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: RunProgress,
    previous: bytes | None = None,
) -> bytes:
    """Write ``last.pt``: the weights, optimizer and schedule, ``progress`` and the global RNG states now.

    ``previous`` (the bytes of the ``last.pt`` this one replaces) is written first as ``last.prev.pt``.
    Returns the bytes written: the next save's ``previous``.
    """
    ckpt = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        **asdict(progress),
        "rng": rng_state(),
        "job": job.to_json(),
    }
    data = _encode(ckpt)
    if previous is not None:
        store.put_bytes(job.keys.checkpoint(PREV), previous)
    store.put_bytes(job.keys.checkpoint(LAST), data)
    return data


def _progress(ckpt: dict, job: JobSpec) -> RunProgress:
    """The checkpoint's :class:`RunProgress`, checked: a ValueError when it is not this run's, or not whole."""
    if not isinstance(ckpt.get("job"), dict) or ckpt["job"].get("job_id") != job.job_id:
        raise ValueError(f"is not a checkpoint of run {job.job_id}")
    progress = RunProgress(**{f.name: ckpt[f.name] for f in fields(RunProgress)})
    counts = (progress.epoch, progress.best_epoch, progress.bad_epochs, progress.step, progress.partial_count)
    if not all(type(v) is int for v in counts) or not 0 <= progress.epoch <= job.training.epochs:
        raise ValueError(f"has progress fields out of range ({asdict(progress)})")
    return progress


def _restore(ckpt: dict, job: JobSpec, model, optimizer, scheduler) -> RunProgress:
    progress = _progress(ckpt, job)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    return progress


def load_last(
    store: Store,
    job: JobSpec,
    device: torch.device,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    log: Log = print,
) -> Resumed | None:
    """Restore model, optimizer, schedule and global RNGs from ``last.pt``, else ``last.prev.pt``;
    None (everything as it was) when neither exists or can be read, or ``best.pt`` is gone.

    A checkpoint that cannot be read is set aside (:func:`set_aside`); errors of the store itself
    (unreachable, refused) are raised, not taken for damage.
    """
    fresh = None
    required = ("model", "optimizer", "scheduler", "rng", "job", *(f.name for f in fields(RunProgress)))
    for name in (LAST, PREV):
        if not store.exists(job.keys.checkpoint(name)):
            continue
        data = store.get_bytes(job.keys.checkpoint(name))
        fresh = fresh or copy.deepcopy((model.state_dict(), optimizer.state_dict(), scheduler.state_dict()))
        try:
            progress = _restore(_decode(data, device, *required), job, model, optimizer, scheduler)
        except (MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # any failure to decode or apply it: the checkpoint is unusable
            _reset(fresh, model, optimizer, scheduler)
            set_aside(store, job, name, data, _why(exc), log)
            continue
        if progress.best_epoch >= 0 and not store.exists(job.keys.checkpoint(BEST)):
            _reset(fresh, model, optimizer, scheduler)
            log(f"{job.job_id}: checkpoints/{BEST} is gone (set aside?); training the run again from the start")
            return None
        return Resumed(progress, name, data)
    return None


def _reset(fresh: tuple, model, optimizer, scheduler) -> None:
    """Put back the states from before a load that failed half-way."""
    model.load_state_dict(fresh[0])
    optimizer.load_state_dict(fresh[1])
    scheduler.load_state_dict(fresh[2])


def save_best(store: Store, job: JobSpec, model: nn.Module, epoch: int) -> None:
    """Write ``best.pt``: the weights now, reached at (0-based) ``epoch``."""
    store.put_bytes(job.keys.checkpoint(BEST), _encode({"model": model.state_dict(), "epoch": epoch}))


def load_best(store: Store, job: JobSpec, device: torch.device, model: nn.Module, log: Log = print) -> int:
    """Load ``best.pt``'s weights into ``model``; the (0-based) epoch they were reached at.

    A ``best.pt`` that cannot be read is set aside and raises :class:`DamagedArtifact`: the next
    attempt (``cxrstudy resume``) trains the run again.
    """
    key = job.keys.checkpoint(BEST)
    data = store.get_bytes(key)
    try:
        best = _decode(data, device, "model", "epoch")
        if type(best["epoch"]) is not int:
            raise ValueError(f"has a non-integer epoch {best['epoch']!r}")
        model.load_state_dict(best["model"])
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:
        why = _why(exc)
        aside = set_aside(store, job, BEST, data, why, log)
        raise DamagedArtifact(
            f"{store.url(key)} cannot be read ({why}); it was set aside as {aside}. "
            f"`cxrstudy resume {job.study_id}` (or `cxrstudy run` again) trains run {job.job_id} again from the start"
        ) from exc
    return best["epoch"]


# --- metrics.jsonl, kept in step with the checkpoint a run continues from --------------------------------
def append_metrics(store: Store, job: JobSpec, record: dict) -> None:
    """Add one finished epoch's line; lines of that epoch or later (from an earlier try) are dropped first."""
    lines = [ln for ln in metrics_lines(store, job) if json.loads(ln)["epoch"] < record["epoch"]]
    lines.append(json.dumps(record))
    store.put_text(job.keys.metrics, "\n".join(lines) + "\n")


def truncate_metrics(store: Store, job: JobSpec, epochs: int) -> None:
    """Drop the lines of epochs after the first ``epochs`` (those a resumed run trains again)."""
    lines = metrics_lines(store, job)
    kept = [ln for ln in lines if json.loads(ln)["epoch"] <= epochs]
    if len(kept) == len(lines):
        return
    if kept:
        store.put_text(job.keys.metrics, "\n".join(kept) + "\n")
    else:
        store.delete(job.keys.metrics)
