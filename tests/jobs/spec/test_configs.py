"""The settings' defaults and checks, and the loss arguments the spec knows without torch."""

import inspect

import pytest

from jobs.errors import ConfigError
from jobs.spec.configs import LOSS_ARGS, LossConfig, PrepConfig, TrainConfig, prep_from_flags
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


@pytest.mark.parametrize(
    "data, message",
    [
        ({"lr": 0}, "lr: must be greater than 0 (got 0)"),
        ({"lr": -1e-4}, "lr: must be greater than 0 (got -0.0001)"),
        ({"lr": float("inf")}, "lr: must be a finite number (got inf)"),
        ({"weight_decay": -1e-5}, "weight_decay: must be at least 0 (got -1e-05)"),
        ({"momentum": 1}, "momentum: must be at least 0 and less than 1 (got 1)"),
        ({"warmup_epochs": -0.5}, "warmup_epochs: must be at least 0 (got -0.5)"),
        ({"min_lr_ratio": -2}, "min_lr_ratio: must be between 0 and 1 (got -2)"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio: must be between 0 and 1 (got 1.5)"),
        ({"patience": -1}, "patience: must be at least 0 (got -1)"),
        ({"drop_rate": 1.5}, "drop_rate: must be at least 0 and less than 1 (got 1.5)"),
        ({"drop_path": 1}, "drop_path: must be at least 0 and less than 1 (got 1)"),
        ({"bn_recalibrate": -1}, "bn_recalibrate: must be at least 0 (got -1)"),
        ({"num_workers": 1000}, "num_workers: must be between 0 and 256 (got 1000)"),
        ({"augment": {"rotate_deg": 270}}, "augment.rotate_deg: must be between 0 and 180 (got 270)"),
        ({"augment": {"translate": 1}}, "augment.translate: must be at least 0 and less than 1 (got 1)"),
        ({"augment": {"scale_min": 0}}, "augment.scale_min: must be greater than 0 (got 0)"),
        (
            {"augment": {"scale_min": 1.2, "scale_max": 1.1}},
            "augment.scale_min: must be at most scale_max (1.1) (got 1.2)",
        ),
        ({"augment": {"brightness": -0.1}}, "augment.brightness: must be between 0 and 1 (got -0.1)"),
        ({"augment": {"contrast": 1}}, "augment.contrast: must be at least 0 and less than 1 (got 1)"),
        ({"loss": {"name": "focal", "alpha": 5}}, "loss.alpha: must be between 0 and 1 (got 5)"),
        ({"loss": {"name": "focal", "alpha": None}}, "loss.alpha: must be a number (got None)"),
        ({"loss": {"name": "focal", "gamma": -1}}, "loss.gamma: must be at least 0 (got -1)"),
        ({"loss": {"name": "focal", "gamma": float("nan")}}, "loss.gamma: must be a number (got nan)"),
        ({"loss": {"name": "bce", "pos_weight": -3}}, "loss.pos_weight: must be greater than 0 (got -3)"),
        ({"loss": {"name": "asl", "gamma_neg": -1}}, "loss.gamma_neg: must be at least 0 (got -1)"),
        ({"loss": {"name": "asl", "clip": 1}}, "loss.clip: must be at least 0 and less than 1 (got 1)"),
        ({"loss": {"name": "asl", "eps": 0}}, "loss.eps: must be greater than 0 and less than 1 (got 0)"),
        (
            {"weights": "store:../../../../etc/hostname"},
            "weights: the key of store:KEY has a '..' segment; name an object inside the store, like "
            "store:models/densenet121.pth (got 'store:../../../../etc/hostname')",
        ),
        (
            {"weights": "store:/etc/hostname"},
            "weights: the key of store:KEY is absolute (starts with '/'); name an object inside the store, like "
            "store:models/densenet121.pth (got 'store:/etc/hostname')",
        ),
        (
            {"weights": "store:models//x.pth"},
            "weights: the key of store:KEY has an empty segment ('//' or a '/' at the end); name an object inside "
            "the store, like store:models/densenet121.pth (got 'store:models//x.pth')",
        ),
        (
            {"weights": "s3://bucket/models/../x.pth"},
            "weights: the key of s3://BUCKET/KEY has a '..' segment; name one object (got 's3://bucket/models/../x.pth')",
        ),
        (
            {"weights": "s3:///x.pth"},
            "weights: the key of s3://BUCKET/KEY has no bucket; name one object (got 's3:///x.pth')",
        ),
    ],
)
def test_every_training_number_has_a_range(data, message):
    with pytest.raises(ValueError) as info:
        build(TrainConfig, data, "training")
    assert str(info.value) == f"training.{message}"


def test_the_ends_of_the_ranges_and_optional_arguments_are_accepted():
    cfg = build(
        TrainConfig,
        {
            "min_lr_ratio": 0,
            "momentum": 0,
            "drop_rate": 0.999,
            "num_workers": 256,
            "loss": {"name": "bce", "pos_weight": None},
            "augment": {"scale_min": 1, "scale_max": 1, "rotate_deg": 180, "brightness": 1},
            "weights": "store:models/densenet121.pth",
        },
        "training",
    )
    assert cfg.min_lr_ratio == 0.0 and cfg.loss.args == {"pos_weight": None} and cfg.augment.scale_max == 1.0
    assert build(TrainConfig, {"weights": "s3://bucket/models/x.pth"}, "training").weights == "s3://bucket/models/x.pth"
    for beyond in ({"min_lr_ratio": -0.001}, {"num_workers": 257}, {"augment": {"rotate_deg": 180.5}}):
        with pytest.raises(ValueError, match=r"must be between"):
            build(TrainConfig, beyond, "training")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"image_size": 100000}, "image_size: must be between 16 and 2048 (got 100000)"),
        ({"image_size": 8}, "image_size: must be between 16 and 2048 (got 8)"),
        ({"clip_limit": 0}, "clip_limit: must be greater than 0 (got 0)"),
        ({"tile_grid": 0}, "tile_grid: must be between 1 and 64 (got 0)"),
        ({"val_fraction": 0}, "val_fraction: must be greater than 0 and less than 1 (got 0)"),
        ({"val_fraction": 1.5}, "val_fraction: must be greater than 0 and less than 1 (got 1.5)"),
        ({"split_seed": -1}, "split_seed: must be between 0 and 4294967295 (got -1)"),
        ({"shard_size": 0}, "shard_size: must be at least 1 (got 0)"),
        ({"encoding": "jpg"}, "encoding: must be one of png, npy (got 'jpg')"),
    ],
)
def test_every_preprocessing_number_has_a_range(data, message):
    with pytest.raises(ValueError) as info:
        build(PrepConfig, data, "preprocessing")
    assert str(info.value) == f"preprocessing.{message}"
    with pytest.raises(ConfigError) as info:  # built directly, as `cxrstudy prepare` and the tests do
        PrepConfig(**data)
    assert str(info.value) == f"preprocessing.{message}"


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"image_size": 100000}, "--image-size 100000: must be between 16 and 2048 (got 100000)"),
        ({"val_fraction": 1.5}, "--val-fraction 1.5: must be greater than 0 and less than 1 (got 1.5)"),
        ({"split_seed": -1}, "--split-seed -1: must be between 0 and 4294967295 (got -1)"),
    ],
)
def test_prepare_flags_are_named_as_flags(flags, message):
    with pytest.raises(ConfigError) as info:
        prep_from_flags(**flags)
    assert str(info.value) == message
    assert prep_from_flags(image_size=64) == PrepConfig(image_size=64)


def test_the_prep_hash_covers_what_applies_and_leaves_old_studies_ids_alone():
    from jobs.spec.configs import PrepConfig

    old_fields = ["image_size", "clip_limit", "tile_grid", "val_fraction", "split_seed", "shard_size", "encoding"]
    assert sorted(PrepConfig().hashed()) == sorted(old_fields)  # format 3's fields: the same hash as before
    assert sorted(PrepConfig(clahe=False).hashed()) == sorted(
        ["image_size", "val_fraction", "split_seed", "shard_size", "encoding", "clahe"]
    )
    assert PrepConfig(clahe=False, clip_limit=3.0).hashed() == PrepConfig(clahe=False).hashed()
    random = PrepConfig(split="random").hashed()
    assert "val_fraction" not in random and random["split_fractions"] == {"train": 0.7, "val": 0.1, "test": 0.2}


def test_the_default_prep_hash_of_the_real_sample_is_the_one_before_clahe_and_split_became_settings(nih_sample):
    """Measured on the tree before the change (64d757e): a study that does not use the new settings keeps its
    prep hash, so its study and job ids (which cover the prep hash) stay the same."""
    from jobs.data.manifest import prep_hash
    from jobs.data.nih import read_nih
    from jobs.spec.configs import PrepConfig
    from jobs.store import LocalStore

    dataset = read_nih(LocalStore(nih_sample))
    assert prep_hash(dataset, PrepConfig()) == "70f792021c64b759"
    assert prep_hash(dataset, PrepConfig(image_size=128, clip_limit=3.0)) == "821bedc554076342"
    assert prep_hash(dataset, PrepConfig(clahe=False)) not in ("70f792021c64b759", "821bedc554076342")
