"""The train job: one (architecture, seed) run, from shards in the store to ``result.json``.

Read top to bottom: :func:`run` is the whole run (start or resume, epochs, final test of the best
checkpoint); :meth:`Trainer.run_epoch` is one epoch (train, validate, keep the best, log, checkpoint);
:meth:`Trainer.train_steps` is its steps. Everything lands under ``studies/<study>/jobs/<job>/`` in the store:

    metrics.jsonl            one line per finished epoch (train/val loss, per-class val AUROC, lr)
    checkpoints/last.pt      model, optimizer, scheduler, RNG states, the run's progress (:mod:`.checkpoints`)
    checkpoints/best.pt      the model at the best validation score so far
    predictions_val.csv      per-image probabilities (and labels) on validation, from best.pt
    predictions_test.csv     the same on test: the input of ensembles, CIs and significance tests
    result.json              test loss, per-class AUROC and F1 (thresholds chosen on validation)
    provenance.json          versions, GPU, host, determinism, data digest, attempts and seconds (:mod:`.provenance`)

``result.json`` is written last and marks the job done: a re-run skips it. ``last.pt`` present
means resume at the next epoch (from ``last.prev.pt`` when it cannot be read: :mod:`.checkpoints`).
Randomness is re-derived from ``(seed, epoch)`` at each epoch, so a resumed run is the same run.

The job's entry is :mod:`jobs.train` (``python -m jobs.train --job job.json --store URI``).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from jobs.data.labels import CLASSES
from jobs.data.loader import RunLoader, SplitBatches
from jobs.data.manifest import load_manifest
from jobs.errors import CxrStudyError, LeaseLost
from jobs.scoring.calibration import brier_per_class, ece_per_class
from jobs.scoring.metrics import auroc_per_class, best_f1_thresholds, f1_per_class, json_number, nanmean
from jobs.scoring.predictions import as_stored, predictions_csv
from jobs.spec.runs import JobSpec
from jobs.store import Store
from jobs.store.records import read_json, write_result
from jobs.tracking import RunTracker
from jobs.training import checkpoints, provenance
from jobs.training.checkpoints import RunProgress
from jobs.training.losses import create_loss
from jobs.training.models import GRAY_MEAN, GRAY_STD, create_model
from jobs.training.optim import make_optimizer, make_schedule

# Called after every training step with the run's position; returns None to go on, "checkpoint" to
# save last.pt here and stop (SIGTERM, cancel), or "abandon" to stop without writing (lease lost).
StepHook = Callable[[dict], "str | None"]
# Called after every finished epoch with its metrics.jsonl record.
EpochHook = Callable[[dict], None]
# The running training loss stays on the device; it is read (a host-device sync) at most this often,
# at log lines, at a checkpoint and at the end of an epoch, never once per step.
LOSS_READ_EVERY_S = 5.0
LOG_EVERY_S = 30.0  # a progress line inside a long epoch


class TrainingDiverged(RuntimeError):
    """The model's outputs became NaN: the run cannot be scored."""


def seed_everything(seed: int, epoch: int) -> None:
    """Seed torch, numpy and random from ``(seed, epoch)``: epoch -1 is model initialisation."""
    value = int(np.random.SeedSequence([seed, epoch + 1]).generate_state(1)[0])
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def run(
    job: JobSpec,
    store: Store,
    *,
    device: torch.device | None = None,
    log: Callable[[str], None] = print,
    on_epoch: EpochHook | None = None,
    on_step: StepHook | None = None,
    worker: str | None = None,
    attempt: int | None = None,
) -> dict | None:
    """Train, validate and test one run; returns ``result.json``'s content, or None when ``on_step``
    stopped it (the checkpoint then holds the position; a re-run continues from there).

    Args:
        job: the run: architecture, seed, training config, data prefix, and the store keys of its outputs.
        store: where the shards are read and the outputs written.
        device: where to train; None picks CUDA when available, else the CPU.
        log: receives one line per start, epoch and end (and every ``LOG_EVERY_S`` inside an epoch).
        on_epoch: receives each finished epoch's metrics.jsonl record.
        on_step: receives the position after every step; its answer can stop the run (see ``StepHook``).
        worker, attempt: who runs this attempt and its number, for ``provenance.json``.
    """
    tracker = RunTracker(store, job, log)  # MLflow, when configured; its failures are warnings
    if (done := read_json(store, job.keys.result)) is not None:  # a damaged one raises, naming it
        log(f"{job.job_id}: result.json exists; skipped")
        tracker.settle(done)  # its tracking, if a worker died before it ended
        return done

    def epoch_done(record: dict) -> None:
        tracker.epoch(record)
        if on_epoch:
            on_epoch(record)

    with Trainer(job, store, device or pick_device(), log) as trainer:
        trainer.start_or_resume(worker, attempt)
        tracker.start(trainer.manifest.get("config"))
        started = time.monotonic()
        try:
            for epoch in range(trainer.progress.epoch, job.training.epochs):
                if trainer.out_of_patience():
                    break
                if not trainer.run_epoch(epoch, on_step, epoch_done):
                    if trainer.stop_reason == "checkpoint":  # requeued to resume; a lost lease's run is another's
                        tracker.stopped()
                    return None  # on_step stopped the run inside the epoch
            result = trainer.test_best(started)
        except LeaseLost:
            raise  # the run goes on with the lease's new holder, which tracks it
        except Exception as exc:
            tracker.fail(f"{type(exc).__name__}: {exc}")
            raise
        except BaseException:  # interrupted (KeyboardInterrupt, SystemExit): resumed later, if at all
            tracker.stopped()
            raise
        tracker.finish(result, trainer.provenance)
        return result


class Evaluation:
    """Loss, probabilities and labels of a model over one split (and each image's patient), in image-name order."""

    def __init__(self, names: list[str], probs: np.ndarray, labels: np.ndarray, loss: float, patients: list[int]):
        order = np.argsort(names)
        self.names = [names[i] for i in order]
        self.patients = np.asarray(patients, dtype=np.int64)[order]
        self.probs, self.labels, self.loss = probs[order], labels[order], loss

    def auroc(self) -> np.ndarray:
        return auroc_per_class(self.labels, self.probs)

    def summary(self, thresholds: np.ndarray | None = None) -> dict:
        """Images, loss and AUROC for ``result.json``; with ``thresholds``, F1 at those thresholds too."""
        auroc = self.auroc()
        head = {"images": len(self.names), "loss": round(self.loss, 6), "avg_auroc": json_number(nanmean(auroc))}
        if thresholds is None:
            return {**head, "auroc": dict(zip(CLASSES, map(json_number, auroc)))}
        f1 = f1_per_class(self.labels, self.probs, thresholds)
        f1 = np.where(self.labels.sum(axis=0) > 0, f1, np.nan)  # F1 is undefined without positives
        stored = as_stored(self.probs)  # as the report reads them back: its calibration equals this one
        brier, ece = brier_per_class(self.labels, stored), ece_per_class(self.labels, stored)
        return {
            **head,
            "avg_f1": json_number(nanmean(f1)),
            "avg_brier": json_number(nanmean(brier)),
            "avg_ece": json_number(nanmean(ece)),
            "auroc": dict(zip(CLASSES, map(json_number, auroc))),
            "f1": dict(zip(CLASSES, map(json_number, f1))),
            "brier": dict(zip(CLASSES, map(json_number, brier))),
            "ece": dict(zip(CLASSES, map(json_number, ece))),
            "thresholds": {c: round(float(v), 6) for c, v in zip(CLASSES, thresholds)},
        }


class Trainer:
    """One run: model, loss, optimizer, schedule, data, and its :class:`RunProgress` (what a resume restores).

    A context manager: leaving it stops the run's loader workers.
    """

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
        self.scheduler = make_schedule(cfg, self.optimizer, self.steps_per_epoch)
        self.progress, self.previous = RunProgress(), None  # previous: last.pt's bytes, saved next as last.prev.pt
        self.stop_reason: str | None = None  # what on_step answered when it stopped the run
        m = self.manifest
        self.data = RunLoader(
            SplitBatches(
                store.uri,
                job.data_prefix,
                {split: m["splits"][split]["shards"] for split in m["splits"]},  # the loader checks each shard
                m["config"]["encoding"],
                seed=job.seed,
                batch_size=cfg.batch_size,
                augment=cfg.augment,
            ),
            cfg.num_workers,
            pin_memory=self.cuda,
        )
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # this epoch's loss x images
        self._read_count = 0  # images covered by progress.partial_loss, as of its last read

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> None:
        self.data.close()

    # --- data ---------------------------------------------------------------------------------
    def train_prevalence(self) -> list[float]:
        prevalence = self.manifest["splits"]["train"]["prevalence"]
        return [prevalence[c] for c in CLASSES]

    def batches(self, split: str, epoch: int = 0, train: bool = False):
        """One pass over ``split``: shuffled and augmented by ``(seed, epoch)`` when ``train``."""
        return self.data.batches(split, epoch, train)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float().div_(255.0).sub_(GRAY_MEAN).div_(GRAY_STD)
        if self.cfg.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        return x.contiguous(memory_format=torch.channels_last) if self.cuda and self.cfg.channels_last else x

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda and self.cfg.amp)

    # --- the run ------------------------------------------------------------------------------
    def start_or_resume(self, worker: str | None = None, attempt: int | None = None) -> None:
        """Continue from ``last.pt`` (else ``last.prev.pt``) if one can be read; log where the run
        starts; record the attempt in ``provenance.json``."""
        job, cfg, parts = self.job, self.cfg, (self.model, self.optimizer, self.scheduler)
        self.provenance = provenance.start(self.store, job, self.device, worker, attempt)
        self.attempt_started = time.monotonic()
        resumed = checkpoints.load_last(self.store, job, self.device, *parts, log=self.log)
        checkpoints.truncate_metrics(self.store, job, resumed.progress.epoch if resumed else 0)  # to be run again
        if resumed is not None:
            self.progress, self.previous, p = resumed.progress, resumed.data, resumed.progress
            at = f"epoch {p.epoch + 1}/{cfg.epochs}" + (f" step {p.step}/{self.steps_per_epoch}" if p.step else "")
            self.log(f"{job.job_id}: resuming from checkpoints/{resumed.name} at {at}")
            return
        splits = self.manifest["splits"]
        self.log(
            f"{job.job_id}: training {job.architecture} seed {job.seed} on {self.device.type} for {cfg.epochs} "
            f"epochs ({splits['train']['images']:,} train / {splits['val']['images']:,} val images)"
        )

    def out_of_patience(self) -> bool:
        return bool(self.cfg.patience) and self.progress.bad_epochs >= self.cfg.patience

    def run_epoch(self, epoch: int, on_step: StepHook | None = None, on_epoch: EpochHook | None = None) -> bool:
        """One epoch: train, recalibrate BatchNorm, validate, keep the best, append metrics, checkpoint, log.

        Returns False when ``on_step`` stopped the run inside the epoch (nothing after training then happens).
        """
        job, cfg, p = self.job, self.cfg, self.progress
        started = time.monotonic()
        if not p.step:  # an interrupted epoch continues with the RNG states of its checkpoint
            seed_everything(job.seed, epoch)
        train_loss = self.train_steps(epoch, on_step)
        if train_loss is None:
            return False
        if cfg.bn_recalibrate:
            self.recalibrate_batchnorm(epoch)
        val = self.evaluate("val")
        val_auroc = val.auroc()
        score = nanmean(val_auroc) if cfg.monitor == "val_auroc" else -val.loss
        improved = p.best_score is None or (not math.isnan(score) and score > p.best_score)
        if improved:
            p.best_score, p.best_epoch, p.bad_epochs = score, epoch, 0
            checkpoints.save_best(self.store, job, self.model, epoch)
        else:
            p.bad_epochs += 1
        record = {
            "epoch": epoch + 1,
            "train_loss": round(train_loss, 6),
            "val_loss": round(val.loss, 6),
            "val_avg_auroc": json_number(nanmean(val_auroc)),
            "val_auroc": dict(zip(CLASSES, map(json_number, val_auroc))),
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(time.monotonic() - started, 2),
            "best": improved,
        }
        checkpoints.append_metrics(self.store, job, record)
        p.epoch = epoch + 1
        self.save_last()
        provenance.lap(self.store, job, self.provenance, time.monotonic() - self.attempt_started)
        self.log(
            f"{job.job_id}: epoch {epoch + 1}/{cfg.epochs} train loss {train_loss:.4f} val loss {val.loss:.4f} "
            f"val AUROC {nanmean(val_auroc):.4f}{' (best)' if improved else ''} [{record['seconds']:.0f}s]"
        )
        if on_epoch:
            on_epoch(record)
        if self.out_of_patience():
            self.log(f"{job.job_id}: no improvement for {cfg.patience} epochs; stopping early")
        return True

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimisation step on a batch (uint8 images, float labels; on the host or the device).
        Returns the batch's mean loss as a device tensor: reading it is left to the caller."""
        with self.autocast():
            logits = self.model(self.inputs(images))
        loss = self.loss_fn(logits, labels.to(self.device, non_blocking=True))  # float32 inside the loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    def train_steps(self, epoch: int, on_step: StepHook | None = None) -> float | None:
        """Train one epoch's steps; the mean training loss, or None when ``on_step`` asked to stop.

        An epoch interrupted by a stop request (SIGTERM, cancel) is checkpointed with its position:
        the resumed run skips the batches already trained (the stream is a function of the seed and
        epoch, the global RNGs come from the checkpoint), so it continues the same run. The loss is
        summed on the device and read every :data:`LOSS_READ_EVERY_S` at most (:meth:`_read_loss`).
        """
        job, cfg, p = self.job, self.cfg, self.progress
        self.model.train()
        done = p.step
        self._loss_sum.fill_(p.partial_loss)  # summed in step order, as a resumed epoch's checkpoint holds it
        self._read_count = p.partial_count
        start = last_log = last_read = time.monotonic()
        for step, (images, labels, *_) in enumerate(self.batches("train", epoch, train=True), start=1):
            if step <= done:
                continue  # trained before the interruption
            loss = self.step(images, labels)
            self._loss_sum += loss.double() * len(images)
            p.step = step
            p.partial_count += len(images)
            now = time.monotonic()
            if now - last_read >= LOSS_READ_EVERY_S or now - last_log > LOG_EVERY_S:
                last_read = self._read_loss()
            if now - last_log > LOG_EVERY_S:
                last_log = now
                self.log(
                    f"{job.job_id}: epoch {epoch + 1}/{cfg.epochs} step {step}/{self.steps_per_epoch} "
                    f"loss {p.partial_loss / p.partial_count:.4f} ({p.partial_count / (now - start):.1f} img/s)"
                )
            if on_step and self._stop_requested(on_step, epoch):
                return None
        self._read_loss()
        if p.partial_count == 0:
            raise CxrStudyError(
                f"{job.job_id}: the train split has fewer images than one batch ({cfg.batch_size}); "
                "lower training.batch_size"
            )
        train_loss = p.partial_loss / p.partial_count
        p.step, p.partial_loss, p.partial_count = 0, 0.0, 0  # the epoch is whole
        return train_loss

    def _read_loss(self) -> float:
        """Copy the device's loss sum into the progress (one host-device sync); returns the time.

        The sum runs over the whole epoch in step order, whenever it is read, so the epoch's loss is
        the same number however often it was read, and the same after a resume.
        """
        self.progress.partial_loss = self._loss_sum.item()
        self._read_count = self.progress.partial_count  # the images that sum covers
        return time.monotonic()

    def _stop_requested(self, on_step: StepHook, epoch: int) -> bool:
        """Tell ``on_step`` the position; on "checkpoint" save ``last.pt`` here. True to stop the run.

        The ``train_loss`` it is told is the mean as of the last read of the loss (at most
        :data:`LOSS_READ_EVERY_S` old; None before the epoch's first read); a checkpoint reads it
        first, so ``last.pt`` holds it exact.
        """
        p = self.progress
        directive = on_step(
            {
                "epoch": epoch + 1,
                "epochs": self.cfg.epochs,
                "step": p.step,
                "steps": self.steps_per_epoch,
                "train_loss": round(p.partial_loss / self._read_count, 6) if self._read_count else None,
            }
        )
        if directive in ("checkpoint", "abandon"):
            self.stop_reason = directive
        if directive == "checkpoint":
            self._read_loss()
            self.save_last()
            self.log(
                f"{self.job.job_id}: stop requested; checkpoint saved at epoch {epoch + 1} "
                f"step {p.step}/{self.steps_per_epoch}"
            )
        return directive in ("checkpoint", "abandon")

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
        for i, (images, *_) in enumerate(self.batches("train", epoch + 10_000, train=True)):
            if i >= self.cfg.bn_recalibrate:
                break
            with self.autocast():
                self.model(self.inputs(images))
        for m, momentum in zip(norms, saved):
            m.momentum = momentum

    @torch.no_grad()
    def evaluate(self, split: str) -> Evaluation:
        """The model on ``split``; outputs stay on the device until the pass ends (one copy back)."""
        self.model.eval()
        names, patients, probs, labels = [], [], [], []
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for images, y, batch_names, batch_patients in self.batches(split):
            with self.autocast():
                logits = self.model(self.inputs(images))
            y = y.to(self.device, non_blocking=True)
            loss_sum += self.loss_fn(logits, y).double() * len(images)
            probs.append(torch.sigmoid(logits.float()))
            labels.append(y)
            names.extend(batch_names)
            patients.extend(batch_patients)
        probs = torch.cat(probs).cpu().numpy()
        if not np.isfinite(probs).all():  # metrics cannot rank NaN; say what happened instead
            raise TrainingDiverged(
                f"{self.job.job_id}: the model's {split} probabilities contain NaN: training diverged "
                f"(lower training.lr, or raise training.warmup_epochs)"
            )
        labels = torch.cat(labels).cpu().numpy().astype(np.uint8)
        return Evaluation(names, probs, labels, loss_sum.item() / len(names), patients)

    # --- outputs ------------------------------------------------------------------------------
    def save_last(self) -> None:
        parts = (self.model, self.optimizer, self.scheduler, self.progress)
        self.previous = checkpoints.save_last(self.store, self.job, *parts, previous=self.previous)

    def test_best(self, started: float) -> dict:
        """Evaluate ``best.pt``: thresholds from validation, metrics on test; write predictions and ``result.json``.

        Args:
            started: ``time.monotonic()`` when training started (``train_seconds`` counts from it).
        """
        job = self.job
        best_epoch = checkpoints.load_best(self.store, job, self.device, self.model, self.log)
        val, test = self.evaluate("val"), self.evaluate("test")
        thresholds = best_f1_thresholds(val.labels, val.probs)  # chosen on validation, never on test
        test_summary, val_summary = test.summary(thresholds), val.summary()
        result = {
            "status": "succeeded",
            "study_id": job.study_id,
            "job_id": job.job_id,
            "architecture": job.architecture,
            **({"variant": job.variant} if job.variant is not None else {}),
            "seed": job.seed,
            "best_epoch": best_epoch + 1,
            "epochs_run": self.progress.epoch,
            "device": str(self.device),
            "train_seconds": round(time.monotonic() - started, 1),
            "classes": list(CLASSES),
            "test": test_summary,
            "val": val_summary,
        }
        for split, ev in (("val", val), ("test", test)):
            text = predictions_csv(ev.names, ev.probs, ev.labels, ev.patients)
            self.store.put_text(job.keys.predictions(split), text)
        provenance.finish(self.store, job, self.provenance, time.monotonic() - self.attempt_started)
        write_result(self.store, job, result)
        self.log(
            f"{job.job_id}: test loss {test.loss:.4f} Avg AUROC {test_summary['avg_auroc']:.4f} "
            f"Avg F1 {test_summary['avg_f1']:.4f} (best epoch {best_epoch + 1})"
        )
        return result
