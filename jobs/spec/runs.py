"""Ids and jobs: a study expands into one :class:`JobSpec` per (architecture, seed).

Ids are content hashes: the study id covers the whole spec and the prepared dataset's hash; a job
id covers the study id, the architecture, the seed and the resolved training config, so anyone
re-running a job lands on the same keys in the store.
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
    """One (architecture, seed) training run: everything ``jobs.train.run`` needs, as JSON."""

    study_id: str
    job_id: str
    architecture: str
    seed: int
    training: TrainConfig
    data_prefix: str  # datasets/<id>/<prep-hash> in the store

    @property
    def keys(self) -> JobKeys:
        """The run's keys in the store (result.json, checkpoints, predictions ...)."""
        return job_keys(self.study_id, self.job_id)

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


def digest(obj) -> str:
    """sha256 of an object's canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def study_id(name: str, spec: dict, prep_hash: str) -> str:
    return f"{name}-{digest({'spec': spec, 'prep': prep_hash})[:10]}"


def job_id(sid: str, architecture: str, seed: int, training: TrainConfig) -> str:
    d = digest({"study": sid, "architecture": architecture, "seed": seed, "training": asdict(training)})[:8]
    return f"{architecture}-s{seed}-{d}"
