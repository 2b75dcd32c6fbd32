"""A prepared dataset's identity and manifest, without OpenCV: what ``submit`` needs to name its shards.

The prep hash covers the preprocessing config and the dataset's fingerprint (metadata, split lists,
names and sizes of the images present): the same inputs and config give the same hash, and a
prefix whose ``manifest.json`` exists is complete. The manifest is written last by
:mod:`jobs.data.sharding`: shards without a manifest are an interrupted run and are rewritten.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict

import numpy as np

from jobs.data.labels import CLASSES
from jobs.data.nih import SPLITS, NihDataset, Record, read_nih
from jobs.spec.configs import PrepConfig
from jobs.store import Store, layout, open_store
from jobs.store.records import utc_timestamp

MANIFEST_FORMAT = "cxrstudy-shards/1"


def prep_hash(dataset: NihDataset, config: PrepConfig) -> str:
    blob = json.dumps(
        {"config": asdict(config), "dataset": dataset.fingerprint, "format": MANIFEST_FORMAT}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dataset_id_for(uri: str) -> str:
    """A readable id from the dataset's location: its last path component, slugged."""
    name = str(uri).rstrip("/").rsplit("/", 1)[-1] or "dataset"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "dataset"


def plan(
    dataset_uri: str, config: PrepConfig, dataset_id: str | None = None, log: Callable[[str], None] = print
) -> tuple[NihDataset, str]:
    """Read the dataset's metadata and listing: the dataset and the store prefix its shards go to."""
    dataset = read_nih(open_store(dataset_uri), config.val_fraction, config.split_seed, log=log)
    log(f"dataset: {dataset.describe()}")
    return dataset, layout.dataset_prefix(dataset_id or dataset_id_for(dataset_uri), prep_hash(dataset, config))


def split_summary(records: list[Record]) -> dict:
    """Images, patients, positives and prevalence per class of one split."""
    labels = np.array([r.labels for r in records], dtype=np.int64).reshape(-1, len(CLASSES))
    positives = labels.sum(axis=0)
    return {
        "images": len(records),
        "patients": len({r.patient for r in records}),
        "positives": {c: int(n) for c, n in zip(CLASSES, positives)},
        "prevalence": {c: round(float(n) / max(len(records), 1), 6) for c, n in zip(CLASSES, positives)},
    }


def build_manifest(dataset: NihDataset, config: PrepConfig, prefix: str, shards: dict[str, list[dict]]) -> dict:
    """The manifest of a prepared dataset whose shards (``{split: [{name, count}]}``) are all written."""
    return {
        "format": MANIFEST_FORMAT,
        "prefix": prefix,
        "prep_hash": prefix.rsplit("/", 1)[-1],
        "source": dataset.source,
        "metadata_file": dataset.metadata_file,
        "config": asdict(config),
        "classes": list(CLASSES),
        "splits": {split: {**split_summary(dataset.splits[split]), "shards": shards[split]} for split in SPLITS},
        "listed": dataset.listed,
        "missing": {**dataset.missing, "total": dataset.missing_total},
        "unlisted": dataset.unlisted,
        "created": utc_timestamp(),
    }


def load_manifest(store: Store, prefix: str) -> dict:
    return json.loads(store.get_text(layout.manifest_key(prefix)))


def manifest_exists(store: Store, prefix: str) -> bool:
    return store.exists(layout.manifest_key(prefix))
