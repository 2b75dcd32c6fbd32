"""``provenance.json``: what a run ran on, written when an attempt starts and completed at the end.

One file per run (``studies/<study>/jobs/<job>/provenance.json``), kept across attempts::

    {"job_id", "study_id", "architecture", "seed",
     "data": {"prefix", "prep_hash", "manifest_sha256"},
     "determinism": {"deterministic", "cudnn_benchmark", "amp", "channels_last"},
     "environment": {python, torch, torchvision, timm, numpy, opencv, cxrstudy versions; image and
                     git commit when the image says them; cuda, cudnn; gpu name, memory and driver; host and pod},
     "attempts": [{"attempt", "worker", "host", "device", "started", "ended", "seconds"}, ...],
     "started", "ended", "wall_seconds", "gpu_seconds", "status"}

The environment is the latest attempt's; an earlier attempt that ran elsewhere keeps its own
``host`` and ``device`` in ``attempts``. ``wall_seconds`` sums the attempts' seconds (each attempt's
are recorded at every epoch's end, so a killed attempt counts up to its last finished epoch);
``gpu_seconds`` sums those of the attempts on a GPU (one GPU per run).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import platform
import socket
import subprocess

import torch

from jobs.errors import DamagedArtifact
from jobs.spec.runs import JobSpec
from jobs.store import Store, layout
from jobs.store.records import read_json, utc_timestamp, write_json

# The packages whose versions a run records: the name in provenance.json -> (module, distribution).
# The module's own ``__version__`` first: torch's says its CUDA flavour (2.14.1+cu130), its
# distribution's metadata does not.
PACKAGES = {
    "torch": ("torch", "torch"),
    "torchvision": ("torchvision", "torchvision"),
    "timm": ("timm", "timm"),
    "numpy": ("numpy", "numpy"),
    "opencv": ("cv2", "opencv-python-headless"),
    "cxrstudy": (None, "cxrstudy"),
}


def _version(module: str | None, distribution: str) -> str | None:
    if module is not None:
        try:
            return str(importlib.import_module(module).__version__)
        except (ImportError, AttributeError):
            pass
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict:
    """Versions, the image, the accelerator and the host of this process."""
    env = {"python": platform.python_version(), **{name: _version(*where) for name, where in PACKAGES.items()}}
    env["image"] = os.environ.get("CXRSTUDY_IMAGE") or None  # the chart passes repository:tag
    env["git_commit"] = os.environ.get("CXRSTUDY_GIT_COMMIT") or None  # a build argument of Dockerfile.gpu
    env["cuda"] = torch.version.cuda
    env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        memory = round(props.total_memory / 2**30, 1)
        env["gpu"] = {"name": props.name, "memory_gib": memory, "count": 1, "driver": nvidia_driver()}
    else:
        env["gpu"] = None
    env["host"] = socket.gethostname()
    env["pod"] = os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or None
    return env


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version, from ``nvidia-smi`` (the device plugin mounts it); None without it."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.stdout.strip().splitlines()[:1]
    return first[0].strip() if out.returncode == 0 and first else None


def manifest_digest(store: Store, prefix: str) -> str:
    return hashlib.sha256(store.get_bytes(layout.manifest_key(prefix))).hexdigest()


def start(store: Store, job: JobSpec, device: torch.device, worker: str | None, attempt: int | None) -> dict:
    """Record an attempt's start (the run's first, or another after a kill or a retry); returns the record."""
    cfg = job.training
    try:
        record = read_json(store, job.keys.provenance) or {}
    except DamagedArtifact:  # a record is evidence, never a reason to fail the run: start it again
        record = {}
    attempts = record.get("attempts", []) if isinstance(record, dict) else None
    if not isinstance(attempts, list) or not all(_attempt_entry(a) for a in attempts):
        record, attempts = {}, []  # JSON, but not a record this module wrote
    now = utc_timestamp()
    record.update(
        {
            "job_id": job.job_id,
            "study_id": job.study_id,
            "architecture": job.architecture,
            **({"variant": job.variant} if job.variant is not None else {}),
            "seed": job.seed,
            "data": {
                "prefix": job.data_prefix,
                "prep_hash": job.data_prefix.rsplit("/", 1)[-1],
                "manifest_sha256": manifest_digest(store, job.data_prefix),
            },
            "determinism": {
                "deterministic": cfg.deterministic,
                "cudnn_benchmark": device.type == "cuda" and not cfg.deterministic,
                "amp": device.type == "cuda" and cfg.amp,
                "channels_last": device.type == "cuda" and cfg.channels_last,
            },
            "environment": environment(device),
            "status": "running",
        }
    )
    record.setdefault("started", now)
    attempts.append(
        {
            "attempt": attempt or len(attempts) + 1,
            "worker": worker,
            "host": socket.gethostname(),
            "device": str(device),
            "started": now,
            "ended": None,
            "seconds": 0.0,
        }
    )
    record["attempts"] = attempts
    _totals(record)
    write_json(store, job.keys.provenance, record)
    return record


def lap(store: Store, job: JobSpec, record: dict, seconds: float) -> None:
    """Record this attempt's seconds so far (at an epoch's end)."""
    record["attempts"][-1]["seconds"] = round(seconds, 1)
    _totals(record)
    write_json(store, job.keys.provenance, record)


def finish(store: Store, job: JobSpec, record: dict, seconds: float) -> dict:
    """Complete the record at the run's end: this attempt's seconds, the totals, ``succeeded``."""
    current = record["attempts"][-1]
    current["ended"] = utc_timestamp()
    record["ended"], record["status"] = current["ended"], "succeeded"
    lap(store, job, record, seconds)
    return record


def _attempt_entry(entry) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("device"), str)
        and isinstance(entry.get("seconds"), (int, float))
        and not isinstance(entry.get("seconds"), bool)
    )


def _totals(record: dict) -> None:
    attempts = record["attempts"]
    record["wall_seconds"] = round(sum(a["seconds"] for a in attempts), 1)
    record["gpu_seconds"] = round(sum(a["seconds"] for a in attempts if a["device"].startswith("cuda")), 1)
