"""Every setting of a study, as typed dataclasses with their value checks (no torch, timm or OpenCV).

:class:`PrepConfig` (``preprocessing:``), :class:`TrainConfig` (``training:``) with its
:class:`LossConfig` and :class:`AugmentConfig`. A check raises ``ValueError`` whose message starts
with the field's name; :func:`jobs.spec.schema.build` adds the path in the study file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jobs.errors import ConfigError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")
MONITORS = ("val_auroc", "val_loss")
HEAD_INITS = ("prior", "default")
ENCODINGS = ("png", "npy")  # pixels in a shard: png (small) or raw uint8 .npy (fastest to decode)

# Each loss's keyword arguments and defaults: what ``training.loss`` may set. ``jobs.training.losses``
# builds the modules; a test checks that these match their signatures.
LOSS_ARGS: dict[str, dict[str, float | None]] = {
    "focal": {"alpha": 0.25, "gamma": 2.0},
    "bce": {"pos_weight": None},
    "asl": {"gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05, "eps": 1e-8},
}


def one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: must be one of {', '.join(allowed)} (got {value!r})")


@dataclass(frozen=True)
class PrepConfig:
    """Preprocessing settings; every field is part of the prep hash.

    Args:
        image_size: side of the stored square image, in pixels.
        clip_limit: CLAHE contrast limit.
        tile_grid: CLAHE tiles per side.
        val_fraction: fraction of train_val patients carved out as validation.
        split_seed: seed of that carving (not a training seed: every run shares the split).
        shard_size: images per tar shard.
        encoding: ``png`` (small) or ``npy`` (raw uint8, fastest to decode).
    """

    image_size: int = 256
    clip_limit: float = 2.0
    tile_grid: int = 8
    val_fraction: float = 0.1
    split_seed: int = 20171
    shard_size: int = 1000
    encoding: str = "png"

    def __post_init__(self):
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"preprocessing.encoding must be one of {', '.join(ENCODINGS)} (got {self.encoding!r})")
        for name in ("image_size", "tile_grid", "shard_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"preprocessing.{name} must be a positive integer (got {getattr(self, name)})")
        if self.clip_limit <= 0:
            raise ConfigError(f"preprocessing.clip_limit must be positive (got {self.clip_limit})")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation of the (already CLAHE'd) image. The default suits chest films:
    small rotations, shifts and zooms, mild exposure changes, no horizontal flip (the heart is on
    one side; a flip makes dextrocardia of every film).

    Args:
        rotate_deg: maximum rotation either way, in degrees.
        translate: maximum shift, as a fraction of the side.
        scale_min, scale_max: zoom range.
        hflip: flip left-right with probability 0.5.
        brightness: maximum additive change, as a fraction of full scale.
        contrast: maximum multiplicative change around the mean (0.1 = x0.9 .. x1.1).
    """

    enabled: bool = True
    rotate_deg: float = 7.0
    translate: float = 0.05
    scale_min: float = 0.95
    scale_max: float = 1.05
    hflip: bool = False
    brightness: float = 0.05
    contrast: float = 0.1


@dataclass(frozen=True)
class LossConfig:
    """``name`` (focal, bce, asl) and that loss's keyword arguments (focal: alpha, gamma)."""

    name: str = "focal"
    args: dict = field(default_factory=lambda: dict(LOSS_ARGS["focal"]))

    def check(self) -> None:
        one_of("name", self.name, tuple(LOSS_ARGS))
        known = LOSS_ARGS[self.name]
        for key, value in self.args.items():
            if key not in known:
                raise ValueError(f"{key}: not an argument of the {self.name} loss; it takes {', '.join(known)}")
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{key}: must be a number (got {value!r})")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings of one run. Every field may be set in the study file's ``training:``.

    Args:
        epochs: maximum number of epochs.
        batch_size: images per step.
        optimizer: adamw, adam or sgd.
        lr: peak learning rate.
        weight_decay: decoupled (adamw) or L2 weight decay.
        momentum: SGD momentum.
        schedule: cosine (decay to ``min_lr_ratio`` x lr) or constant, after the warm-up.
        warmup_epochs: linear warm-up from lr/100, in epochs (fractions allowed).
        min_lr_ratio: final learning rate of the cosine schedule, as a fraction of ``lr``.
        patience: stop after this many epochs without improvement of ``monitor`` (0: never).
        monitor: val_auroc (higher is better) or val_loss; picks the best checkpoint too.
        loss: the loss and its arguments.
        weights: none, timm, store:KEY or s3://bucket/key.
        in_chans: 1 (grayscale) or 3 (replicated, for weights that expect RGB).
        drop_rate: dropout before the classifier.
        drop_path: stochastic depth rate.
        head_init: prior (classifier weights zero, bias at the log-odds of each class's training
            prevalence) or default (timm's initialisation).
        bn_recalibrate: batches used to re-estimate BatchNorm statistics before each evaluation (0: off).
        augment: training-time augmentation.
        num_workers: DataLoader worker processes.
        amp: bf16 autocast on CUDA (ignored on CPU).
        channels_last: channels-last memory format on CUDA (ignored on CPU).
        deterministic: deterministic CUDA algorithms (slower); CPU runs are always repeatable.
    """

    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-5
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.01
    patience: int = 5
    monitor: str = "val_auroc"
    loss: LossConfig = field(default_factory=LossConfig)
    weights: str = "none"
    in_chans: int = 1
    drop_rate: float = 0.0
    drop_path: float = 0.0
    head_init: str = "prior"
    bn_recalibrate: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int = 0
    amp: bool = True
    channels_last: bool = True
    deterministic: bool = False

    def check(self) -> None:
        """Value checks; the message starts with the field name."""
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1 (got {getattr(self, name)})")
        if self.lr <= 0:
            raise ValueError(f"lr: must be positive (got {self.lr})")
        for name in (
            "weight_decay",
            "warmup_epochs",
            "patience",
            "drop_rate",
            "drop_path",
            "num_workers",
            "bn_recalibrate",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative (got {getattr(self, name)})")
        one_of("optimizer", self.optimizer, OPTIMIZERS)
        one_of("schedule", self.schedule, SCHEDULES)
        one_of("monitor", self.monitor, MONITORS)
        one_of("head_init", self.head_init, HEAD_INITS)
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans: must be 1 or 3 (got {self.in_chans})")
        if not (self.weights in ("none", "timm") or self.weights.startswith(("store:", "s3://"))):
            raise ValueError(f"weights: must be none, timm, store:KEY or s3://BUCKET/KEY (got {self.weights!r})")
