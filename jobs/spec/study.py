"""The study file: a grid of architectures x seeds (x variants) over one dataset, preprocessing and
training recipe.

```yaml
name: clahe-focal-seeds
dataset: s3://my-bucket/nih          # or a folder; or {location: ..., id: nih}
preprocessing: {image_size: 256, clip_limit: 2.0, tile_grid: 8}
training: {epochs: 20, batch_size: 32, lr: 1.0e-4, loss: {name: focal, alpha: 0.25, gamma: 2.0}}
runs:
  densenet121: [12, 22, 32, 42]
  efficientnet_b2: {seeds: [22, 32, 42], training: {lr: 3.0e-4}}
baselines: {chexnet: predictions/chexnet.csv}   # optional: other systems' predictions, in the report
variants:                           # optional: arms beyond the seed, each crossed with every run
  clahe-focal: {}                                  # the recipe above
  plain-focal: {preprocessing: {clahe: false}}     # its own prepared dataset
  clahe-bce: {training: {loss: bce}}               # shares clahe-focal's dataset
report: {bootstrap_unit: patient, resamples: 1000}  # optional: how the report draws its intervals
tracking: {mlflow: http://mlflow.mlops:5000, experiment: cxr}  # optional: log the runs to MLflow too
```

An *arm* is an architecture with a variant. A variant's overrides go on top of the recipe and of the
architecture's own ``training`` in ``runs``. Every key is checked: an unknown key, a wrong type or a
bad value is a one-line error naming the file and the field; so are an empty variant name and two
variants that resolve to the same preprocessing and training. Architecture names are checked
against timm's list without importing timm (:mod:`jobs.spec.architectures`); ids are content
hashes (:mod:`jobs.spec.runs`).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from jobs.errors import ConfigError, StudyFileError
from jobs.spec.architectures import check_architecture
from jobs.spec.configs import SEED, PrepConfig, ReportConfig, TrackingConfig, TrainConfig
from jobs.spec.runs import JobSpec, arm_name, digest, job_id
from jobs.spec.runs import study_id as _study_id
from jobs.spec.schema import build, coerce, unknown_key

# A study, baseline or dataset name: it becomes part of keys in the store.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_RULE = "letters, digits, '.', '_' and '-' only, starting with a letter or digit"


def check_name(value: str, path: str) -> str:
    """``value`` when it is a valid name (see :data:`NAME`), else a ValueError naming ``path``."""
    if not NAME.fullmatch(value):
        raise ValueError(f"{path}: use {NAME_RULE} (got {value!r})")
    return value


def check_option_name(value: str | None, option: str) -> str | None:
    """A name given on the command line (``--dataset-id``), if any; a ConfigError naming the option."""
    try:
        return value if value is None else check_name(value, option)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class RunGroup:
    architecture: str
    seeds: tuple[int, ...]
    training: TrainConfig


@dataclass(frozen=True)
class Variant:
    """A variant of the study file: its resolved preprocessing, and each run group's resolved training
    (in the order of ``runs``)."""

    name: str
    preprocessing: PrepConfig
    training: tuple[TrainConfig, ...]


@dataclass(frozen=True)
class Arm:
    """An architecture with a variant (None: a study without variants): its seeds and resolved config."""

    architecture: str
    variant: str | None
    seeds: tuple[int, ...]
    training: TrainConfig
    preprocessing: PrepConfig

    @property
    def name(self) -> str:
        return arm_name(self.architecture, self.variant)


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
    report: ReportConfig = ReportConfig()  # how the report computes its intervals; not part of the id either
    tracking: TrackingConfig = TrackingConfig()  # where the runs are logged besides the store; nor this
    variants: tuple[Variant, ...] = ()  # none: one arm per architecture, the recipe's

    def spec(self) -> dict:
        """The normalised spec, as written into study.json (and hashed into the study id). A study
        without variants has no ``variants`` field, so it keeps the id it had before variants existed."""
        spec = {
            "name": self.name,
            "dataset": {"location": self.dataset, "id": self.dataset_id},
            "preprocessing": self.preprocessing.spec(),
            "runs": [
                {"architecture": g.architecture, "seeds": list(g.seeds), "training": asdict(g.training)}
                for g in self.runs
            ],
        }
        if self.variants:
            spec["variants"] = [
                {"name": v.name, "preprocessing": v.preprocessing.spec(), "training": [asdict(t) for t in v.training]}
                for v in self.variants
            ]
        return spec

    def arms(self) -> list[Arm]:
        """Every arm, architecture by architecture (in the order of ``runs``), then variant by variant."""
        if not self.variants:
            return [Arm(g.architecture, None, g.seeds, g.training, self.preprocessing) for g in self.runs]
        return [
            Arm(g.architecture, v.name, g.seeds, v.training[i], v.preprocessing)
            for i, g in enumerate(self.runs)
            for v in self.variants
        ]

    def preprocessings(self) -> list[PrepConfig]:
        """The distinct preprocessing configs of the arms: one prepared dataset each."""
        return list(dict.fromkeys(a.preprocessing for a in self.arms()))


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
    known = ("name", "dataset", "preprocessing", "training", "runs", "variants", "baselines", "report", "tracking")
    for key in data:
        if key not in known:
            raise unknown_key("", key, known)
    for key in ("name", "dataset", "runs"):
        if key not in data:
            raise ValueError(f"{key}: missing (required)")
    name = check_name(coerce(data["name"], str, "name"), "name")
    dataset, dataset_id = data["dataset"], None
    if isinstance(dataset, dict):
        unknown = set(dataset) - {"location", "id"}
        if unknown or "location" not in dataset:
            raise ValueError("dataset: must be a location, or a mapping with 'location' (and optional 'id')")
        dataset_id = coerce(dataset.get("id"), str | None, "dataset.id")
        if dataset_id is not None:
            check_name(dataset_id, "dataset.id")
        dataset = dataset["location"]
    dataset = coerce(dataset, str, "dataset")
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
        seeds = tuple(coerce(s, int, f"{path}[{i}]") for i, s in enumerate(entry))
        for i, seed in enumerate(seeds):  # seeds numpy and torch: a non-negative 32-bit integer
            SEED.check(f"{path}[{i}]", seed)
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
    report = build(ReportConfig, data.get("report"), "report")
    tracking = build(TrackingConfig, data.get("tracking"), "tracking")
    return Study(
        name,
        dataset,
        dataset_id,
        prep,
        training,
        tuple(groups),
        baselines=baselines,
        report=report,
        tracking=tracking,
        variants=_variants(data.get("variants"), prep, groups),
    )


VARIANT_KEYS = ("preprocessing", "training")


def _variants(entry, prep: PrepConfig, groups: list[RunGroup]) -> tuple[Variant, ...]:
    """``variants: {name: {preprocessing: {...}, training: {...}}}``: each override resolved on top of the
    recipe (``training`` on top of each architecture's own); two variants may not resolve alike."""
    if entry is None:
        return ()
    if not isinstance(entry, dict) or not entry:
        raise ValueError(
            "variants: must map each variant's name to its overrides, e.g. "
            "{clahe: {}, plain: {preprocessing: {clahe: false}}}"
        )
    variants, seen = [], {}
    for name, overrides in entry.items():
        if name is None or (isinstance(name, str) and not name.strip()):
            raise ValueError(f"variants: a variant has an empty name ({name!r}); name it, e.g. plain-focal")
        if not isinstance(name, str):
            raise ValueError(f"variants: a variant's name must be text, not {name!r}; quote it, e.g. '{name}'")
        path = f"variants.{name}"
        check_name(name, path)
        overrides = {} if overrides is None else overrides
        if not isinstance(overrides, dict):
            raise ValueError(
                f"{path}: must be a mapping of preprocessing and/or training overrides, {{}} for the recipe itself "
                f"(got {overrides!r})"
            )
        for key in overrides:
            if key not in VARIANT_KEYS:
                raise unknown_key(path, key, VARIANT_KEYS)
        resolved = Variant(
            name,
            build(PrepConfig, overrides.get("preprocessing"), f"{path}.preprocessing", prep),
            tuple(build(TrainConfig, overrides.get("training"), f"{path}.training", g.training) for g in groups),
        )
        # What decides the runs: the prepared data (its hash's fields: clip_limit is moot without CLAHE) and
        # each architecture's training.
        resolved_config = digest([resolved.preprocessing.hashed(), [asdict(t) for t in resolved.training]])
        same = seen.setdefault(resolved_config, name)
        if same != name:
            raise ValueError(
                f"{path}: resolves to the same preprocessing and training as variants.{same}, so its runs would "
                "repeat that variant's; give it an override that differs, or remove it"
            )
        variants.append(resolved)
    return tuple(variants)


def _baselines(entry) -> tuple[tuple[str, str], ...]:
    """``baselines: {chexnet: preds/chexnet.csv}``: name -> predictions CSV (a path or s3:// URI)."""
    if entry is None:
        return ()
    if not isinstance(entry, dict) or not entry:
        raise ValueError("baselines: must map a name to a predictions CSV, e.g. {chexnet: predictions/chexnet.csv}")
    out = []
    for name, location in entry.items():
        check_name(str(name), f"baselines.{name}")
        out.append((str(name), coerce(location, str, f"baselines.{name}")))
    return tuple(out)


def load_study_file(path: str | Path) -> Study:
    """Read and validate a study file (``-``: standard input, e.g. through ``kubectl exec -i``)."""
    if str(path) == "-":
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


def prep_hash_of(data_prefix: str) -> str:
    return data_prefix.rsplit("/", 1)[-1]


def _per_prep(study: Study, value: str | dict[PrepConfig, str]) -> dict[PrepConfig, str]:
    return value if isinstance(value, dict) else {p: value for p in study.preprocessings()}


def study_id(study: Study, prep_hashes: str | dict[PrepConfig, str]) -> str:
    """The study's id. ``prep_hashes``: each of :meth:`Study.preprocessings` with its prepared dataset's
    hash (one hash: every arm's dataset)."""
    hashes = _per_prep(study, prep_hashes)
    if not study.variants:
        return _study_id(study.name, study.spec(), hashes[study.preprocessing])
    return _study_id(study.name, study.spec(), [hashes[p] for p in study.preprocessings()])


def expand(study: Study, sid: str, prefixes: str | dict[PrepConfig, str]) -> list[JobSpec]:
    """The study's jobs, one per (architecture, variant, seed), arm by arm (:meth:`Study.arms`).
    ``prefixes``: each of :meth:`Study.preprocessings` with its prepared dataset (one: every arm's)."""
    prefixes, jobs = _per_prep(study, prefixes), []
    for arm in study.arms():
        prefix = prefixes[arm.preprocessing]
        prep = prep_hash_of(prefix) if arm.variant is not None else None
        for seed in arm.seeds:
            jid = job_id(sid, arm.architecture, seed, arm.training, arm.variant, prep)
            jobs.append(JobSpec(sid, jid, arm.architecture, seed, arm.training, prefix, arm.variant))
    return jobs
