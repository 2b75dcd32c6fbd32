"""Multi-label losses by name: focal (the reference's), BCE and ASL.

Every loss casts logits to float32 first: under bf16 autocast, ``sigmoid`` of a large logit rounds
to exactly 1.0 and ``(1 - p) ** gamma`` and ``log`` lose everything that distinguishes easy examples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jobs.errors import ConfigError


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017) for independent sigmoid outputs, averaged over all elements.

    Args:
        alpha: weight of the positive term; negatives get ``1 - alpha``. 0.25 as in the paper.
        gamma: focusing exponent: ``(1 - p_t) ** gamma`` scales down well-classified examples.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = logits.float(), targets.float()
        ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        alpha_t = self.alpha * targets + (1 - self.alpha) * (1 - targets)
        return (alpha_t * (1 - p_t) ** self.gamma * ce).mean()


class BCELoss(nn.Module):
    """Binary cross-entropy on logits, averaged over all elements.

    Args:
        pos_weight: optional weight of positives (one number for every class).
    """

    def __init__(self, pos_weight: float | None = None):
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=weight)


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (Ridnik et al., 2021), averaged over all elements.

    Args:
        gamma_neg: focusing exponent on negatives (they dominate in multi-label X-rays).
        gamma_pos: focusing exponent on positives.
        clip: probability margin: negatives with ``p < clip`` contribute nothing.
        eps: floor inside the logs.
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.float()
        p = torch.sigmoid(logits.float())
        p_neg = (p - self.clip).clamp(min=0) if self.clip > 0 else p
        loss_pos = targets * (1 - p) ** self.gamma_pos * torch.log(p.clamp(min=self.eps))
        loss_neg = (1 - targets) * p_neg**self.gamma_neg * torch.log((1 - p_neg).clamp(min=self.eps))
        return -(loss_pos + loss_neg).mean()


LOSSES: dict[str, type[nn.Module]] = {"focal": FocalLoss, "bce": BCELoss, "asl": AsymmetricLoss}


def create_loss(name: str, **kwargs) -> nn.Module:
    """A loss by name (``focal``, ``bce``, ``asl``) with its keyword arguments."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; known losses: {', '.join(LOSSES)}")
    try:
        return LOSSES[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"loss {name!r}: {exc}") from None
