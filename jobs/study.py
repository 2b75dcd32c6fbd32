"""The study file: a grid of architectures x seeds over one dataset, preprocessing and training recipe.

```yaml
name: clahe-focal-seeds
dataset: s3://my-bucket/nih          # or a folder; or {location: ..., id: nih}
preprocessing: {image_size: 256, clip_limit: 2.0, tile_grid: 8}
training: {epochs: 20, batch_size: 32, lr: 1.0e-4, loss: {name: focal, alpha: 0.25, gamma: 2.0}}
runs:
  densenet121: [12, 22, 32, 42]
  efficientnet_b2: {seeds: [22, 32, 42], training: {lr: 3.0e-4}}
baselines: {chexnet: predictions/chexnet.csv}   # optional: other systems' predictions, in the report
```

Every key is checked: an unknown key, a wrong type or a bad value is a one-line error naming the
file and the field. Ids are content hashes: the study id covers the whole spec and the prepared
dataset's hash; a job id covers the study id, the architecture, the seed and the resolved training
config, so anyone re-running a job lands on the same keys in the store.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from jobs.errors import ConfigError, CxrStudyError, StudyFileError
from jobs.loader import AugmentConfig
from jobs.losses import LOSSES, create_loss
from jobs.models import check_architecture
from jobs.prepare import PrepConfig

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")
MONITORS = ("val_auroc", "val_loss")
HEAD_INITS = ("prior", "default")


@dataclass(frozen=True)
class LossConfig:
    """``name`` (focal, bce, asl) and that loss's keyword arguments (focal: alpha, gamma)."""

    name: str = "focal"
    args: dict = field(default_factory=lambda: {"alpha": 0.25, "gamma": 2.0})


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
        for name in ("lr",):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive (got {getattr(self, name)})")
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
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("schedule", self.schedule, SCHEDULES)
        _one_of("monitor", self.monitor, MONITORS)
        _one_of("head_init", self.head_init, HEAD_INITS)
        _one_of("loss.name", self.loss.name, tuple(LOSSES))
        try:
            create_loss(self.loss.name, **self.loss.args)
        except ConfigError as exc:
            raise ValueError(f"loss: {exc}") from None
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans: must be 1 or 3 (got {self.in_chans})")
        if not (self.weights in ("none", "timm") or self.weights.startswith(("store:", "s3://"))):
            raise ValueError(f"weights: must be none, timm, store:KEY or s3://BUCKET/KEY (got {self.weights!r})")


@dataclass(frozen=True)
class RunGroup:
    architecture: str
    seeds: tuple[int, ...]
    training: TrainConfig


@dataclass(frozen=True)
class Study:
    name: str
    dataset: str
    dataset_id: str | None
    preprocessing: PrepConfig
    training: TrainConfig
    runs: tuple[RunGroup, ...]
    source: str = ""  # the file it came from, for messages
    # External baselines for the report: (name, location of a CheXNet-style predictions CSV). Not part of
    # the spec or the study id: a baseline changes the report, not the runs.
    baselines: tuple[tuple[str, str], ...] = ()

    def spec(self) -> dict:
        """The normalised spec, as written into study.json (and hashed into the study id)."""
        return {
            "name": self.name,
            "dataset": {"location": self.dataset, "id": self.dataset_id},
            "preprocessing": asdict(self.preprocessing),
            "runs": [
                {"architecture": g.architecture, "seeds": list(g.seeds), "training": asdict(g.training)}
                for g in self.runs
            ],
        }


@dataclass(frozen=True)
class JobSpec:
    """One (architecture, seed) training run: everything ``jobs.train.run`` needs, as JSON."""

    study_id: str
    job_id: str
    architecture: str
    seed: int
    training: TrainConfig
    data_prefix: str  # datasets/<id>/<prep-hash> in the store

    @property
    def prefix(self) -> str:
        return f"studies/{self.study_id}/jobs/{self.job_id}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str = "job") -> JobSpec:
        try:
            training = build(TrainConfig, data["training"], "training")
            return cls(
                data["study_id"], data["job_id"], data["architecture"], int(data["seed"]), training, data["data_prefix"]
            )
        except KeyError as exc:
            raise CxrStudyError(f"{where}: missing field {exc.args[0]!r}") from None
        except ValueError as exc:
            raise CxrStudyError(f"{where}: {exc}") from None


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: must be one of {', '.join(allowed)} (got {value!r})")


def _coerce(value, kind, path: str):
    """``value`` as type ``kind`` (int, float, bool, str, dict, a dataclass), or ValueError naming ``path``."""
    if dataclasses.is_dataclass(kind):
        return build(kind, value, path)
    if typing.get_origin(kind) in (types.UnionType, typing.Union):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        return None if value is None else _coerce(value, options[0], path)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{path}: must be true or false (got {value!r})")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{path}: must be a whole number (got {value!r})")
    if kind is float:
        # YAML 1.1 reads 1e-4 (no dot) as a string; accept it as the number it is meant to be.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{path}: must be a number (got {value!r})")
    if kind is str:
        if isinstance(value, str) and value:
            return value
        raise ValueError(f"{path}: must be a non-empty string (got {value!r})")
    if kind is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ValueError(f"{path}: must be a mapping (got {value!r})")
    raise TypeError(kind)


def build(cls, data, path: str, base=None):
    """An instance of dataclass ``cls`` from a mapping, on top of ``base`` (or the defaults)."""
    if data is None:
        data = {}
    if cls is LossConfig and isinstance(data, str):
        data = {"name": data, "args": {} if data != "focal" else LossConfig().args}
    elif cls is LossConfig and isinstance(data, dict) and "args" not in data:
        name = data.get("name", "focal")
        data = {"name": name, "args": {k: v for k, v in data.items() if k != "name"}}
    if cls is AugmentConfig and data in (False, "none"):
        data = {"enabled": False}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must be a mapping (got {data!r})")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(names)}"
            raise ValueError(f"{path}.{key}: unknown key{hint}")
    values = {}
    for name in names:
        if name in data:
            sub_base = getattr(base, name) if base is not None and dataclasses.is_dataclass(hints[name]) else None
            if sub_base is not None:
                values[name] = build(hints[name], data[name], f"{path}.{name}", sub_base)
            else:
                values[name] = _coerce(data[name], hints[name], f"{path}.{name}")
        elif base is not None:
            values[name] = getattr(base, name)
    try:
        obj = cls(**values)
    except CxrStudyError as exc:  # PrepConfig checks its own values
        raise ValueError(str(exc).replace("preprocessing.", f"{path}.", 1)) from None
    if hasattr(obj, "check"):
        try:
            obj.check()
        except ValueError as exc:
            raise ValueError(f"{path}.{exc}") from None
    return obj


def parse_study(data, source: str = "<study>") -> Study:
    """A :class:`Study` from the YAML's mapping; errors name ``source`` and the field."""
    try:
        return _parse(data)
    except ValueError as exc:
        raise StudyFileError(f"{source}: {exc}") from None


def _parse(data) -> Study:
    if not isinstance(data, dict):
        raise ValueError(
            "the study file must be a mapping with name, dataset, runs (and optional preprocessing, training)"
        )
    known = ("name", "dataset", "preprocessing", "training", "runs", "baselines")
    for key in data:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            raise ValueError(
                f"{key}: unknown key"
                + (f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(known)}")
            )
    for key in ("name", "dataset", "runs"):
        if key not in data:
            raise ValueError(f"{key}: missing (required)")
    name = _coerce(data["name"], str, "name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"name: use letters, digits, '.', '_' and '-' only (got {name!r})")
    dataset, dataset_id = data["dataset"], None
    if isinstance(dataset, dict):
        unknown = set(dataset) - {"location", "id"}
        if unknown or "location" not in dataset:
            raise ValueError("dataset: must be a location, or a mapping with 'location' (and optional 'id')")
        dataset_id = _coerce(dataset.get("id"), str | None, "dataset.id")
        dataset = dataset["location"]
    dataset = _coerce(dataset, str, "dataset")
    prep = build(PrepConfig, data.get("preprocessing"), "preprocessing")
    training = build(TrainConfig, data.get("training"), "training")

    runs = data["runs"]
    if not isinstance(runs, dict) or not runs:
        raise ValueError("runs: must map each architecture to its seeds, e.g. {densenet121: [12, 22]}")
    groups = []
    for arch, entry in runs.items():
        path = f"runs.{arch}"
        overrides = None
        if isinstance(entry, dict):
            unknown = set(entry) - {"seeds", "training"}
            if unknown:
                raise ValueError(f"{path}.{sorted(unknown)[0]}: unknown key; use 'seeds' and 'training'")
            overrides, entry = entry.get("training"), entry.get("seeds")
        if not isinstance(entry, list) or not entry:
            raise ValueError(f"{path}: must be a non-empty list of seeds (or {{seeds: [...], training: {{...}}}})")
        seeds = tuple(_coerce(s, int, f"{path}[{i}]") for i, s in enumerate(entry))
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{path}: a seed is listed twice")
        try:
            check_architecture(str(arch))
        except ConfigError as exc:
            raise ValueError(f"{path}: {exc}") from None
        groups.append(RunGroup(str(arch), seeds, build(TrainConfig, overrides, f"{path}.training", training)))
    baselines = _baselines(data.get("baselines"))
    for baseline, _ in baselines:
        if baseline in runs:
            raise ValueError(f"baselines.{baseline}: the name of an architecture in runs; give the baseline another")
    return Study(name, dataset, dataset_id, prep, training, tuple(groups), baselines=baselines)


def _baselines(entry) -> tuple[tuple[str, str], ...]:
    """``baselines: {chexnet: preds/chexnet.csv}``: name -> predictions CSV (a path or s3:// URI)."""
    if entry is None:
        return ()
    if not isinstance(entry, dict) or not entry:
        raise ValueError("baselines: must map a name to a predictions CSV, e.g. {chexnet: predictions/chexnet.csv}")
    out = []
    for name, location in entry.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(name)):
            raise ValueError(f"baselines.{name}: a baseline name uses letters, digits, '.', '_' and '-' only")
        out.append((str(name), _coerce(location, str, f"baselines.{name}")))
    return tuple(out)


def load_study(path: str | Path) -> Study:
    """Read and validate a study file (``-``: standard input, e.g. through ``kubectl exec -i``)."""
    if str(path) == "-":
        import sys

        text, path = sys.stdin.read(), Path("<stdin>")
    else:
        path = Path(path)
    try:
        text = text if str(path) == "<stdin>" else path.read_text()
    except OSError as exc:
        raise StudyFileError(f"{path}: cannot read the study file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise StudyFileError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    study = parse_study(data, str(path))

    def beside(location: str) -> str:  # relative to the study file, not the shell
        if "://" in location or Path(location).expanduser().is_absolute() or str(path) == "<stdin>":
            return location
        return str((path.parent / location).resolve())

    baselines = tuple((name, beside(location)) for name, location in study.baselines)
    return dataclasses.replace(study, source=str(path), dataset=beside(study.dataset), baselines=baselines)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def study_id(study: Study, prep_hash: str) -> str:
    return f"{study.name}-{_digest({'spec': study.spec(), 'prep': prep_hash})[:10]}"


def expand(study: Study, sid: str, data_prefix: str) -> list[JobSpec]:
    """The study's jobs, one per (architecture, seed), in file order."""
    jobs = []
    for group in study.runs:
        for seed in group.seeds:
            digest = _digest(
                {"study": sid, "architecture": group.architecture, "seed": seed, "training": asdict(group.training)}
            )[:8]
            jobs.append(
                JobSpec(
                    sid, f"{group.architecture}-s{seed}-{digest}", group.architecture, seed, group.training, data_prefix
                )
            )
    return jobs
