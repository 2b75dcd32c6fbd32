"""Ids and jobs: a study expands into one :class:`JobSpec` per (architecture, variant, seed).

Ids are content hashes: the study id covers the whole spec and the prepared datasets' hashes; a job
id covers the study id, the architecture, the seed and the resolved training config (and, in a
study with ``variants:``, the variant's name and its prepared dataset), so anyone re-running a job
lands on the same keys in the store.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from jobs.errors import CxrStudyError
from jobs.spec.configs import TrainConfig
from jobs.spec.schema import build
from jobs.store.layout import JobKeys, job_keys


@dataclass(frozen=True)
class JobSpec:
    """One (architecture, variant, seed) training run: everything ``jobs.train.run`` needs, as JSON."""

    study_id: str
    job_id: str
    architecture: str
    seed: int
    training: TrainConfig
    data_prefix: str  # datasets/<id>/<prep-hash> in the store
    variant: str | None = None  # the study file's variant (None: a study without ``variants:``)

    @property
    def keys(self) -> JobKeys:
        """The run's keys in the store (result.json, checkpoints, predictions ...)."""
        return job_keys(self.study_id, self.job_id)

    @property
    def arm(self) -> str:
        """What the report compares: the architecture, with its variant when the study has variants."""
        return arm_name(self.architecture, self.variant)

    def to_json(self) -> dict:
        data = asdict(self)
        if self.variant is None:  # a study without variants keeps its study.json as it was
            del data["variant"]
        return data

    @classmethod
    def from_json(cls, data: dict, where: str = "job") -> JobSpec:
        try:
            training = build(TrainConfig, data["training"], "training")
            variant = data.get("variant")
            if variant is not None and not isinstance(variant, str):
                raise ValueError(f"variant: must be a name (got {variant!r})")
            return cls(
                data["study_id"],
                data["job_id"],
                data["architecture"],
                int(data["seed"]),
                training,
                data["data_prefix"],
                variant,
            )
        except KeyError as exc:
            raise CxrStudyError(f"{where}: missing field {exc.args[0]!r}") from None
        except ValueError as exc:
            raise CxrStudyError(f"{where}: {exc}") from None


def digest(obj) -> str:
    """sha256 of an object's canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


ARM_SEPARATOR = "@"  # densenet121@plain-focal: an arm's name, in the report's files and in --compare


def arm_name(architecture: str, variant: str | None) -> str:
    return architecture if variant is None else f"{architecture}{ARM_SEPARATOR}{variant}"


def study_id(name: str, spec: dict, prep_hash: str | list[str]) -> str:
    """``prep_hash``: the prepared dataset's hash, or the list of every variant's (a study with variants)."""
    return f"{name}-{digest({'spec': spec, 'prep': prep_hash})[:10]}"


def job_id(sid: str, architecture: str, seed: int, training: TrainConfig, variant: str | None = None, prep=None) -> str:
    """The run's id; with a variant, it covers the variant's name and prepared dataset (``prep``: its hash)."""
    fields = {"study": sid, "architecture": architecture, "seed": seed, "training": asdict(training)}
    if variant is None:
        return f"{architecture}-s{seed}-{digest(fields)[:8]}"
    d = digest({**fields, "variant": variant, "prep": prep})[:8]
    return f"{architecture}-{variant}-s{seed}-{d}"
