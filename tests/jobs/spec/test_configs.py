"""The settings' defaults and checks, and the loss arguments the spec knows without torch."""

import inspect

import pytest

from jobs.spec.configs import LOSS_ARGS, LossConfig, TrainConfig
from jobs.spec.schema import build


def test_loss_arguments_match_the_loss_modules_signatures():
    from jobs.training.losses import LOSSES

    assert set(LOSS_ARGS) == set(LOSSES)
    for name, cls in LOSSES.items():
        params = inspect.signature(cls.__init__).parameters
        signature = {k: p.default for k, p in params.items() if k != "self"}
        assert signature == LOSS_ARGS[name], name


def test_loss_shorthands_and_bad_arguments():
    assert build(TrainConfig, {"loss": "bce"}, "training").loss == LossConfig("bce", {})
    assert build(TrainConfig, {"loss": {"name": "focal", "gamma": 1}}, "training").loss == LossConfig(
        "focal", {"gamma": 1}
    )
    with pytest.raises(
        ValueError, match=r"^training\.loss\.gamma_neg: not an argument of the focal loss; it takes alpha, gamma$"
    ):
        build(TrainConfig, {"loss": {"name": "focal", "gamma_neg": 1}}, "training")
    with pytest.raises(ValueError, match=r"^training\.loss\.alpha: must be a number \(got 'high'\)$"):
        build(TrainConfig, {"loss": {"alpha": "high"}}, "training")
    with pytest.raises(ValueError, match=r"^training\.loss\.name: must be one of focal, bce, asl \(got 'focl'\)$"):
        build(TrainConfig, {"loss": "focl"}, "training")
