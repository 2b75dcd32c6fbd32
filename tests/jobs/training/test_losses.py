import math

import pytest
import torch

from jobs.errors import ConfigError
from jobs.training.losses import AsymmetricLoss, FocalLoss, create_loss


def test_focal_loss_known_value():
    # One positive with logit 0: p = 0.5, ce = ln 2, weight alpha * (1 - 0.5)^2 = 0.25 * 0.25
    loss = FocalLoss(alpha=0.25, gamma=2.0)(torch.tensor([[0.0]]), torch.tensor([[1.0]]))
    assert loss.item() == pytest.approx(0.0625 * math.log(2), rel=1e-6)
    # One negative with logit 0: weight (1 - alpha) * 0.5^2
    loss = FocalLoss(alpha=0.25, gamma=2.0)(torch.tensor([[0.0]]), torch.tensor([[0.0]]))
    assert loss.item() == pytest.approx(0.75 * 0.25 * math.log(2), rel=1e-6)


def test_focal_with_gamma_zero_is_weighted_bce():
    logits, targets = torch.randn(8, 14), (torch.rand(8, 14) < 0.3).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert FocalLoss(alpha=0.5, gamma=0.0)(logits, targets).item() == pytest.approx(0.5 * bce.item(), rel=1e-5)


def test_losses_compute_in_float32_under_bf16_logits():
    logits = torch.tensor([[12.0, -12.0]], dtype=torch.bfloat16)
    targets = torch.tensor([[1.0, 0.0]])
    for loss_fn in (FocalLoss(), AsymmetricLoss(), create_loss("bce")):
        out = loss_fn(logits, targets)
        assert out.dtype == torch.float32 and out.item() > 0  # bf16 would round the tiny loss to 0


def test_unknown_loss_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown loss 'focl'; known losses: focal, bce, asl"):
        create_loss("focl")
    with pytest.raises(ConfigError, match="loss 'focal'"):
        create_loss("focal", beta=1)
