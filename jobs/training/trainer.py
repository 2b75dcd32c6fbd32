"""The train job: one (architecture, seed) run, from shards in the store to ``result.json``.

Read top to bottom: seed, data, model, optimizer, loop (train, validate, checkpoint), final test
evaluation of the best-on-validation checkpoint. Everything lands under
``studies/<study>/jobs/<job>/`` in the store:

    metrics.jsonl            one line per finished epoch (train/val loss, per-class val AUROC, lr)
    checkpoints/last.pt      model, optimizer, scheduler, RNG states, epoch, early-stopping state
    checkpoints/best.pt      the model at the best validation score so far
    predictions_val.csv      per-image probabilities (and labels) on validation, from best.pt
    predictions_test.csv     the same on test: the input of ensembles, CIs and significance tests
    result.json              test loss, per-class AUROC and F1 (thresholds chosen on validation)

``result.json`` is written last and marks the job done: a re-run skips it. ``last.pt`` present
means resume at the next epoch. Randomness is re-derived from ``(seed, epoch)`` at each epoch,
so a resumed run is the same run.

The job's entry is :mod:`jobs.train` (``python -m jobs.train --job job.json --store URI``).
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from jobs.data.labels import CLASSES
from jobs.data.loader import ShardStream, make_loader
from jobs.data.manifest import load_manifest
from jobs.errors import CxrStudyError
from jobs.scoring.metrics import auroc_per_class, best_f1_thresholds, f1_per_class, nanmean
from jobs.scoring.predictions import predictions_csv
from jobs.spec.configs import TrainConfig
from jobs.spec.runs import JobSpec
from jobs.store import Store
from jobs.store.records import write_result
from jobs.training.losses import create_loss
from jobs.training.models import GRAY_MEAN, GRAY_STD, create_model

# Called after every training step with the run's position; returns None to go on, "checkpoint" to
# save last.pt here and stop (SIGTERM, cancel), or "abandon" to stop without writing (lease lost).
StepHook = Callable[[dict], "str | None"]


def seed_everything(seed: int, epoch: int) -> None:
    """Seed torch, numpy and random from ``(seed, epoch)``: epoch -1 is model initialisation."""
    value = int(np.random.SeedSequence([seed, epoch + 1]).generate_state(1)[0])
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on norms and biases: decaying BatchNorm scales hurts small-batch training.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Linear warm-up from 1% to 100%, then cosine to ``min_lr_ratio`` (or constant)."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return 0.01 + 0.99 * step / warmup
    if cfg.schedule == "constant":
        return 1.0
    total = max(cfg.epochs * steps_per_epoch - warmup, 1)
    progress = min((step - warmup) / total, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Evaluation:
    """Loss, probabilities and labels of a model over one split, in image-name order."""

    def __init__(self, names: list[str], probs: np.ndarray, labels: np.ndarray, loss: float):
        order = np.argsort(names)
        self.names = [names[i] for i in order]
        self.probs, self.labels, self.loss = probs[order], labels[order], loss

    def auroc(self) -> np.ndarray:
        return auroc_per_class(self.labels, self.probs)


class Trainer:
    """The state of one run between epochs: model, optimizer, schedule, data, early stopping."""

    def __init__(self, job: JobSpec, store: Store, device: torch.device, log: Callable[[str], None]):
        self.job, self.store, self.device, self.log = job, store, device, log
        self.cfg = cfg = job.training
        self.cuda = device.type == "cuda"
        self.manifest = load_manifest(store, job.data_prefix)
        if self.cuda:
            torch.backends.cudnn.benchmark = not cfg.deterministic
            if cfg.deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.use_deterministic_algorithms(True)
        seed_everything(job.seed, -1)
        self.model = create_model(
            job.architecture,
            in_chans=cfg.in_chans,
            weights=cfg.weights,
            drop_rate=cfg.drop_rate,
            drop_path_rate=cfg.drop_path,
            store=store,
            head_prior=self.train_prevalence() if cfg.head_init == "prior" else None,
        ).to(device)
        if self.cuda and cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = create_loss(cfg.loss.name, **cfg.loss.args)
        self.optimizer = make_optimizer(cfg, self.model)
        self.steps_per_epoch = max(1, self.manifest["splits"]["train"]["images"] // cfg.batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, cfg, self.steps_per_epoch)
        )
        # epoch: epochs finished; step/partial_*: progress inside the unfinished epoch (interrupted runs).
        self.state = {
            "epoch": 0,
            "best_score": None,
            "best_epoch": -1,
            "bad_epochs": 0,
            "step": 0,
            "partial_loss": 0.0,
            "partial_count": 0,
        }

    # --- data ---------------------------------------------------------------------------------
    def train_prevalence(self) -> list[float]:
        prevalence = self.manifest["splits"]["train"]["prevalence"]
        return [prevalence[c] for c in CLASSES]

    def loader(self, split: str, epoch: int = 0, train: bool = False):
        m = self.manifest
        stream = ShardStream(
            self.store.uri,
            self.job.data_prefix,
            [s["name"] for s in m["splits"][split]["shards"]],
            m["config"]["encoding"],
            seed=self.job.seed,
            epoch=epoch,
            shuffle=train,
            augment=self.cfg.augment if train else None,
        )
        return make_loader(stream, self.cfg.batch_size, self.cfg.num_workers, drop_last=train, pin_memory=self.cuda)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float().div_(255.0).sub_(GRAY_MEAN).div_(GRAY_STD)
        if self.cfg.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        return x.contiguous(memory_format=torch.channels_last) if self.cuda and self.cfg.channels_last else x

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda and self.cfg.amp)

    # --- one epoch ------------------------------------------------------------------------------
    def train_epoch(self, epoch: int, on_step: StepHook | None = None) -> float | None:
        """Train one epoch; the mean training loss, or None when ``on_step`` asked to stop.

        An epoch interrupted by a stop request (SIGTERM, cancel) is checkpointed with its position:
        the resumed run skips the batches already trained (the stream is a function of the seed and
        epoch, the global RNGs come from the checkpoint), so it continues the same run.
        """
        self.model.train()
        done = self.state["step"]
        total, count = self.state["partial_loss"], self.state["partial_count"]
        start, last_log = time.monotonic(), time.monotonic()
        for step, (images, labels, _) in enumerate(self.loader("train", epoch, train=True), start=1):
            if step <= done:
                continue  # trained before the interruption
            with self.autocast():
                logits = self.model(self.inputs(images))
            loss = self.loss_fn(logits, labels.to(self.device))  # float32 inside the loss
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            total, count = total + loss.item() * len(images), count + len(images)
            self.state.update(step=step, partial_loss=total, partial_count=count)
            if time.monotonic() - last_log > 30:
                last_log = time.monotonic()
                self.log(
                    f"{self.job.job_id}: epoch {epoch + 1}/{self.cfg.epochs} step {step}/{self.steps_per_epoch} "
                    f"loss {total / count:.4f} ({count / (last_log - start):.1f} img/s)"
                )
            if on_step:
                directive = on_step(
                    {
                        "epoch": epoch + 1,
                        "epochs": self.cfg.epochs,
                        "step": step,
                        "steps": self.steps_per_epoch,
                        "train_loss": round(total / count, 6),
                    }
                )
                if directive == "abandon":
                    return None
                if directive == "checkpoint":
                    self.save_last()
                    self.log(
                        f"{self.job.job_id}: stop requested; checkpoint saved at epoch {epoch + 1} "
                        f"step {step}/{self.steps_per_epoch}"
                    )
                    return None
        if count == 0:
            raise CxrStudyError(
                f"{self.job.job_id}: the train split has fewer images than one batch "
                f"({self.cfg.batch_size}); lower training.batch_size"
            )
        self.state.update(step=0, partial_loss=0.0, partial_count=0)
        return total / count

    @torch.no_grad()
    def recalibrate_batchnorm(self, epoch: int) -> None:
        """Re-estimate BatchNorm running statistics as a plain average over a few training batches.

        After a short training the running averages lag far behind weights that moved fast; eval-mode
        outputs are then garbage although train-mode outputs are good.
        """
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        saved = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        self.model.train()
        for i, (images, _, _) in enumerate(self.loader("train", epoch + 10_000, train=True)):
            if i >= self.cfg.bn_recalibrate:
                break
            with self.autocast():
                self.model(self.inputs(images))
        for m, momentum in zip(norms, saved):
            m.momentum = momentum

    @torch.no_grad()
    def evaluate(self, split: str) -> Evaluation:
        self.model.eval()
        names, probs, labels, loss_sum = [], [], [], 0.0
        for images, y, batch_names in self.loader(split):
            with self.autocast():
                logits = self.model(self.inputs(images))
            y = y.to(self.device)
            loss_sum += self.loss_fn(logits, y).item() * len(images)
            probs.append(torch.sigmoid(logits.float()).cpu().numpy())
            labels.append(y.cpu().numpy())
            names.extend(batch_names)
        return Evaluation(names, np.concatenate(probs), np.concatenate(labels).astype(np.uint8), loss_sum / len(names))

    # --- checkpoints --------------------------------------------------------------------------------
    def _put(self, name: str, obj: dict) -> None:
        buf = io.BytesIO()
        torch.save(obj, buf)
        self.store.put_bytes(self.job.keys.checkpoint(name), buf.getvalue())

    def _get(self, name: str) -> dict:
        data = self.store.get_bytes(self.job.keys.checkpoint(name))
        return torch.load(io.BytesIO(data), map_location=self.device, weights_only=True)

    def save_last(self) -> None:
        np_state = np.random.get_state()
        self._put(
            "last.pt",
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                **self.state,
                "rng": {
                    "torch": torch.get_rng_state(),
                    "python": random.getstate(),
                    "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                },
                "job": self.job.to_json(),
            },
        )

    def resume(self) -> bool:
        if not self.store.exists(self.job.keys.checkpoint("last.pt")):
            return False
        ckpt = self._get("last.pt")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.state.update({k: ckpt[k] for k in self.state if k in ckpt})
        torch.set_rng_state(ckpt["rng"]["torch"])
        random.setstate(ckpt["rng"]["python"])
        kind, keys, *rest = ckpt["rng"]["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
        return True

    # --- metrics log ---------------------------------------------------------------------------------
    def metrics_lines(self) -> list[str]:
        key = self.job.keys.metrics
        return self.store.get_text(key).splitlines() if self.store.exists(key) else []

    def append_metrics(self, record: dict) -> None:
        # Drop lines of epochs past the checkpoint: written by a run killed before its last.pt landed.
        lines = [ln for ln in self.metrics_lines() if json.loads(ln)["epoch"] < record["epoch"]]
        lines.append(json.dumps(record))
        self.store.put_text(self.job.keys.metrics, "\n".join(lines) + "\n")


def _clean(values: np.ndarray) -> dict[str, float | None]:
    return {c: (None if math.isnan(v) else round(float(v), 6)) for c, v in zip(CLASSES, values)}


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def run(
    job: JobSpec,
    store: Store,
    *,
    device: torch.device | None = None,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[dict], None] | None = None,
    on_step: StepHook | None = None,
) -> dict | None:
    """Train, validate and test one run; returns ``result.json``'s content, or None when ``on_step``
    stopped it (the checkpoint then holds the position; a re-run continues from there)."""
    result_key = job.keys.result
    if store.exists(result_key):
        log(f"{job.job_id}: result.json exists; skipped")
        return json.loads(store.get_text(result_key))
    t = Trainer(job, store, device or pick_device(), log)
    cfg, state = job.training, t.state
    if t.resume():
        state = t.state
        where = f" step {state['step']}/{t.steps_per_epoch}" if state["step"] else ""
        log(f"{job.job_id}: resuming from checkpoints/last.pt at epoch {state['epoch'] + 1}/{cfg.epochs}{where}")
    else:
        log(
            f"{job.job_id}: training {job.architecture} seed {job.seed} on {t.device.type} for {cfg.epochs} "
            f"epochs ({t.manifest['splits']['train']['images']:,} train / "
            f"{t.manifest['splits']['val']['images']:,} val images)"
        )
    started = time.monotonic()
    for epoch in range(state["epoch"], cfg.epochs):
        if cfg.patience and state["bad_epochs"] >= cfg.patience:
            break
        epoch_start = time.monotonic()
        if not state["step"]:  # an interrupted epoch continues with the RNG states of its checkpoint
            seed_everything(job.seed, epoch)
        train_loss = t.train_epoch(epoch, on_step)
        if train_loss is None:
            return None
        if cfg.bn_recalibrate:
            t.recalibrate_batchnorm(epoch)
        val = t.evaluate("val")
        val_auroc = val.auroc()
        score = nanmean(val_auroc) if cfg.monitor == "val_auroc" else -val.loss
        improved = state["best_score"] is None or (not math.isnan(score) and score > state["best_score"])
        if improved:
            state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
            t._put("best.pt", {"model": t.model.state_dict(), "epoch": epoch})
        else:
            state["bad_epochs"] += 1
        record = {
            "epoch": epoch + 1,
            "train_loss": round(train_loss, 6),
            "val_loss": round(val.loss, 6),
            "val_avg_auroc": _none_if_nan(nanmean(val_auroc)),
            "val_auroc": _clean(val_auroc),
            "lr": t.optimizer.param_groups[0]["lr"],
            "seconds": round(time.monotonic() - epoch_start, 2),
            "best": improved,
        }
        t.append_metrics(record)
        state["epoch"] = epoch + 1
        t.save_last()
        log(
            f"{job.job_id}: epoch {epoch + 1}/{cfg.epochs} train loss {train_loss:.4f} val loss {val.loss:.4f} "
            f"val AUROC {nanmean(val_auroc):.4f}{' (best)' if improved else ''} [{record['seconds']:.0f}s]"
        )
        if on_epoch:
            on_epoch(record)
        if cfg.patience and state["bad_epochs"] >= cfg.patience:
            log(f"{job.job_id}: no improvement for {cfg.patience} epochs; stopping early")
            break
    return finish(t, started)


def finish(t: Trainer, train_seconds_start: float) -> dict:
    """Evaluate the best checkpoint: thresholds from validation, metrics on test; write the outputs."""
    job, store = t.job, t.store
    best = t._get("best.pt")
    t.model.load_state_dict(best["model"])
    val, test = t.evaluate("val"), t.evaluate("test")
    thresholds = best_f1_thresholds(val.labels, val.probs)  # chosen on validation, never on test
    test_auroc, test_f1 = test.auroc(), f1_per_class(test.labels, test.probs, thresholds)
    test_f1 = np.where(test.labels.sum(axis=0) > 0, test_f1, np.nan)  # F1 is undefined without positives
    val_auroc = val.auroc()
    result = {
        "status": "succeeded",
        "study_id": job.study_id,
        "job_id": job.job_id,
        "architecture": job.architecture,
        "seed": job.seed,
        "best_epoch": best["epoch"] + 1,
        "epochs_run": t.state["epoch"],
        "device": str(t.device),
        "train_seconds": round(time.monotonic() - train_seconds_start, 1),
        "classes": list(CLASSES),
        "test": {
            "images": len(test.names),
            "loss": round(test.loss, 6),
            "avg_auroc": _none_if_nan(nanmean(test_auroc)),
            "avg_f1": _none_if_nan(nanmean(test_f1)),
            "auroc": _clean(test_auroc),
            "f1": _clean(test_f1),
            "thresholds": {c: round(float(v), 6) for c, v in zip(CLASSES, thresholds)},
        },
        "val": {
            "images": len(val.names),
            "loss": round(val.loss, 6),
            "avg_auroc": _none_if_nan(nanmean(val_auroc)),
            "auroc": _clean(val_auroc),
        },
    }
    for split, ev in (("val", val), ("test", test)):
        store.put_text(job.keys.predictions(split), predictions_csv(ev.names, ev.probs, ev.labels))
    write_result(store, job, result)
    t.log(
        f"{job.job_id}: test loss {test.loss:.4f} Avg AUROC {result['test']['avg_auroc']:.4f} "
        f"Avg F1 {result['test']['avg_f1']:.4f} (best epoch {result['best_epoch']})"
    )
    return result
