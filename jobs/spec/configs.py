"""Every setting of a study, as typed dataclasses with their value checks (no torch, timm or OpenCV).

:class:`PrepConfig` (``preprocessing:``), :class:`TrainConfig` (``training:``) with its
:class:`LossConfig` and :class:`AugmentConfig`. A check raises ``ValueError`` whose message starts
with the field's name; :func:`jobs.spec.schema.build` adds the path in the study file. Every number
has its allowed range (:class:`Range`, the tables beside each class): a value that would fail on a
worker hours later, or quietly train something else (a negative learning rate), fails at submit.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from jobs.errors import ConfigError
from jobs.store.layout import key_problem

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")
MONITORS = ("val_auroc", "val_loss")
HEAD_INITS = ("prior", "default")
ENCODINGS = ("png", "npy")  # pixels in a shard: png (small) or raw uint8 .npy (fastest to decode)
SPLIT_PROTOCOLS = ("official", "random")  # NIH's test_list.txt, or a patient-wise random split of everything

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


def shown(value) -> str:
    """A number as the user wrote it: -2 for -2.0, 0.0001 for 1e-4."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Range:
    """The allowed values of a number: ``low`` .. ``high`` (None: no bound), each end included unless
    ``*_open``. :meth:`check` raises ``ValueError("name: must be ... (got value)")``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def rule(self) -> str:
        low = f"{'greater than' if self.low_open else 'at least'} {shown(self.low)}"
        high = f"{'less than' if self.high_open else 'at most'} {shown(self.high)}"
        if self.high is None:
            return f"must be {low}"
        if self.low is None:
            return f"must be {high}"
        if not (self.low_open or self.high_open):
            return f"must be between {shown(self.low)} and {shown(self.high)}"
        return f"must be {low} and {high}"

    def check(self, name: str, value) -> None:
        if value is not None and value not in self:
            raise ValueError(f"{name}: {self.rule()} (got {shown(value)})")


def check_ranges(obj, ranges: dict[str, Range]) -> None:
    for name, allowed in ranges.items():
        allowed.check(name, getattr(obj, name))


# A seed, as numpy and torch take it: a non-negative 32-bit integer.
SEED = Range(0, 2**32 - 1)
FRACTION = Range(0, 1)  # 0 .. 1, both included
RATE = Range(0, 1, high_open=True)  # 0 <= x < 1: at 1, dropout drops everything, a shift leaves the film
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)

PREP_RANGES = {
    "image_size": Range(16, 2048),  # 2048 px is twice NIH's native 1024; each image is held whole in memory
    "clip_limit": POSITIVE,
    "tile_grid": Range(1, 64),
    "val_fraction": Range(0, 1, low_open=True, high_open=True),  # both splits need patients
    "split_seed": SEED,
    "shard_size": Range(1),
}


@dataclass(frozen=True)
class SplitFractions:
    """The image fractions of a random split (``preprocessing.split: random``); they sum to 1."""

    train: float = 0.7
    val: float = 0.1
    test: float = 0.2


@dataclass(frozen=True)
class PrepConfig:
    """Preprocessing settings; every field that decides the prepared data is part of the prep hash
    (:meth:`hashed`).

    Args:
        image_size: side of the stored square image, in pixels.
        clahe: CLAHE before the resize (False: the plain INTER_AREA resize of the film).
        clip_limit: CLAHE contrast limit.
        tile_grid: CLAHE tiles per side.
        split: ``official`` (NIH's ``test_list.txt``; validation carved from ``train_val_list.txt`` by
            patient) or ``random`` (a patient-wise random split of both lists with ``split_fractions``).
        val_fraction: with ``official``, the fraction of train_val patients carved out as validation.
        split_fractions: with ``random``, the image fractions of train, val and test.
        split_seed: seed of the split (not a training seed: every run shares the split).
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
    clahe: bool = True
    split: str = "official"
    split_fractions: SplitFractions = SplitFractions()

    def spec(self) -> dict:
        """The fields as ``study.json`` records them (and the study id hashes them): every field, except
        those added after format 3 (``clahe``, ``split``, ``split_fractions``) at their earlier
        behaviour, so a study that does not use them keeps its study and job ids."""
        fields = asdict(self)
        if self.clahe:
            del fields["clahe"]
        if self.split == "official":
            del fields["split"], fields["split_fractions"]
        return fields

    def hashed(self) -> dict:
        """What the prep hash covers. Settings that do not apply are left out (``clip_limit`` and
        ``tile_grid`` without CLAHE, ``val_fraction`` with a random split, ``split_fractions`` with the
        official one), and so are the fields added after format 3 (``clahe``, ``split``) at their
        earlier behaviour, so a study that does not use them keeps its ids."""
        fields = self.spec()
        if not self.clahe:
            del fields["clip_limit"], fields["tile_grid"]
        if self.split != "official":
            del fields["val_fraction"]
        return fields

    def __post_init__(self):
        # Checked on construction, not only from a study file: `cxrstudy prepare` builds one from its flags.
        try:
            self.check()
        except ValueError as exc:
            raise ConfigError(f"preprocessing.{exc}") from None

    def check(self) -> None:
        """Value checks; the message starts with the field name."""
        one_of("encoding", self.encoding, ENCODINGS)
        one_of("split", self.split, SPLIT_PROTOCOLS)
        check_ranges(self, PREP_RANGES)
        f = self.split_fractions
        for name in ("train", "val", "test"):  # every split needs images
            Range(0, 1, low_open=True, high_open=True).check(f"split_fractions.{name}", getattr(f, name))
        if abs(f.train + f.val + f.test - 1.0) > 1e-9:
            raise ValueError(
                f"split_fractions: train, val and test must sum to 1 (got {shown(f.train)} + {shown(f.val)} + "
                f"{shown(f.test)} = {f.train + f.val + f.test:.6g})"
            )
        if self.split == "official" and self.split_fractions != SplitFractions():
            raise ValueError(
                "split_fractions: only with split: random (the official split's test set is NIH's test_list.txt; "
                "its validation share is val_fraction)"
            )


def prep_from_flags(**flags) -> PrepConfig:
    """A :class:`PrepConfig` from ``cxrstudy prepare``'s flags; an error names the flag (``--image-size``)."""
    try:
        return PrepConfig(**flags)
    except ConfigError as exc:
        name, _, rule = str(exc).removeprefix("preprocessing.").partition(": ")
        if name.startswith("split_fractions"):  # one flag, TRAIN,VAL,TEST
            f = flags["split_fractions"]
            raise ConfigError(f"--split-fractions {shown(f.train)},{shown(f.val)},{shown(f.test)}: {rule}") from None
        raise ConfigError(f"--{name.replace('_', '-')} {shown(flags.get(name))}: {rule}") from None


AUGMENT_RANGES = {
    "rotate_deg": Range(0, 180),
    "translate": RATE,  # a shift of the whole side leaves nothing of the film
    "scale_min": POSITIVE,
    "scale_max": POSITIVE,
    "brightness": FRACTION,
    "contrast": RATE,  # the gain 1 - contrast must stay positive
}


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

    def check(self) -> None:
        """Value checks; the message starts with the field name."""
        check_ranges(self, AUGMENT_RANGES)
        if self.scale_min > self.scale_max:
            raise ValueError(
                f"scale_min: must be at most scale_max ({shown(self.scale_max)}) (got {shown(self.scale_min)})"
            )


# Each loss argument's allowed values; None (no weighting) only where it is the default.
LOSS_RANGES = {
    "alpha": FRACTION,
    "gamma": NON_NEGATIVE,
    "pos_weight": POSITIVE,
    "gamma_neg": NON_NEGATIVE,
    "gamma_pos": NON_NEGATIVE,
    "clip": RATE,
    "eps": Range(0, 1, low_open=True, high_open=True),
}


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
            if value is None and known[key] is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"{key}: must be a number (got {value!r})")
            if value in (float("inf"), float("-inf")):
                raise ValueError(f"{key}: must be a finite number (got {value!r})")
            LOSS_RANGES[key].check(key, value)


TRAIN_RANGES = {
    "epochs": Range(1),
    "batch_size": Range(1),
    "lr": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "momentum": RATE,
    "warmup_epochs": NON_NEGATIVE,
    "min_lr_ratio": FRACTION,
    "patience": NON_NEGATIVE,
    "drop_rate": RATE,
    "drop_path": RATE,
    "bn_recalibrate": NON_NEGATIVE,
    "num_workers": Range(0, 256),  # DataLoader processes, each a copy of the pipeline
}


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
        check_ranges(self, TRAIN_RANGES)
        one_of("optimizer", self.optimizer, OPTIMIZERS)
        one_of("schedule", self.schedule, SCHEDULES)
        one_of("monitor", self.monitor, MONITORS)
        one_of("head_init", self.head_init, HEAD_INITS)
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans: must be 1 or 3 (got {self.in_chans})")
        if not (self.weights in ("none", "timm") or self.weights.startswith(("store:", "s3://"))):
            raise ValueError(f"weights: must be none, timm, store:KEY or s3://BUCKET/KEY (got {self.weights!r})")
        check_weights_key(self.weights)


def check_weights_key(weights: str) -> None:
    """``store:KEY`` must name an object inside the store (never ``store:../../etc/hostname``), and
    ``s3://BUCKET/KEY`` one object of a bucket; the worker reads it hours later."""
    if weights.startswith("store:"):
        problem = key_problem(weights.removeprefix("store:"))
        if problem:
            raise ValueError(
                f"weights: the key of store:KEY {problem}; name an object inside the store, "
                f"like store:models/densenet121.pth (got {weights!r})"
            )
    elif weights.startswith("s3://"):
        bucket, _, key = weights.removeprefix("s3://").partition("/")
        problem = key_problem(key) if bucket else "has no bucket"
        if problem:
            raise ValueError(f"weights: the key of s3://BUCKET/KEY {problem}; name one object (got {weights!r})")


BOOTSTRAP_UNITS = ("patient", "image")  # what a bootstrap resample of the report draws
MIN_RESAMPLES = 100


@dataclass(frozen=True)
class ReportConfig:
    """The study file's ``report:``: how the report computes its intervals. Not part of any id: it
    changes the report, never the runs. Unset fields keep what is stored with the study (or the defaults).

    Args:
        bootstrap_unit: ``patient`` (a cluster bootstrap: each drawn patient with all their test images;
            the default) or ``image``.
        resamples: bootstrap resamples (1,000 by default).
    """

    bootstrap_unit: str | None = None
    resamples: int | None = None

    def check(self) -> None:
        if self.bootstrap_unit is not None:
            one_of("bootstrap_unit", self.bootstrap_unit, BOOTSTRAP_UNITS)
        Range(MIN_RESAMPLES).check("resamples", self.resamples)


TRACKING_URI = re.compile(r"^(https?|file|databricks|sqlite|postgresql|mysql)(\+\w+)?:")


@dataclass(frozen=True)
class TrackingConfig:
    """The study file's ``tracking:``: where its runs are logged besides the store. Not part of any id.

    Args:
        mlflow: an MLflow tracking URI (``http://mlflow.mlops:5000``); unset, the workers' own
            ``MLFLOW_TRACKING_URI`` (the chart's ``tracking.mlflowUri``) is used, when they have one.
        experiment: the MLflow experiment (default: ``$MLFLOW_EXPERIMENT_NAME``, else ``cxrstudy``).
    """

    mlflow: str | None = None
    experiment: str | None = None

    def check(self) -> None:
        if self.mlflow is not None and not TRACKING_URI.match(self.mlflow):
            raise ValueError(
                f"mlflow: must be a tracking URI such as http://mlflow:5000 or file:///path (got {self.mlflow!r})"
            )
