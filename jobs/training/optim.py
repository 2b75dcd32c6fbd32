"""The optimizer and the learning-rate schedule of a run, from its :class:`TrainConfig`."""

from __future__ import annotations

import math

import torch
from torch import nn

from jobs.spec.configs import TrainConfig


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD (Nesterov) at ``cfg.lr``, with ``cfg.weight_decay`` on weights only."""
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


def make_schedule(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule of :func:`lr_factor`: the scheduler steps once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch))
