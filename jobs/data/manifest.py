"""A prepared dataset's identity and manifest, without OpenCV: what ``submit`` needs to name its shards.

The prep hash covers the preprocessing config, the dataset's fingerprint (metadata, split lists,
names and sizes of the images present) and :data:`MANIFEST_FORMAT`: the same inputs and config give
the same hash, a new format a new prefix (old shards are rebuilt, never mixed in), and a prefix
whose ``manifest.json`` exists is complete. The manifest is written last by
:mod:`jobs.data.sharding`: shards without a manifest are an interrupted run and are rewritten.

Each shard's entry is ``{name, count, size, sha256}``: its samples, and its bytes' length and
digest, which the loader checks while it streams the shard and ``prepare`` checks when it finds the
prefix already prepared (format 1 recorded only ``name`` and ``count``).
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
from jobs.errors import DamagedArtifact
from jobs.spec.configs import PrepConfig
from jobs.store import Store, layout, open_store
from jobs.store.records import utc_timestamp

# Part of the prep hash: a new format is a new prefix. 3: samples shuffled across a split's shards,
# PNG rows unfiltered.
MANIFEST_FORMAT = "cxrstudy-shards/3"


def prep_hash(dataset: NihDataset, config: PrepConfig) -> str:
    blob = json.dumps(
        {"config": config.hashed(), "dataset": dataset.fingerprint, "format": MANIFEST_FORMAT}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dataset_id_for(uri: str) -> str:
    """A readable id from the dataset's location: its last path component, slugged."""
    name = str(uri).rstrip("/").rsplit("/", 1)[-1] or "dataset"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")
    return slug if slug.strip(".") else "dataset"  # `--dataset .` or `..`: never a key segment


def plan(
    dataset_uri: str, config: PrepConfig, dataset_id: str | None = None, log: Callable[[str], None] = print
) -> tuple[NihDataset, str]:
    """Read the dataset's metadata and listing: the dataset and the store prefix its shards go to."""
    fractions = (config.split_fractions.train, config.split_fractions.val, config.split_fractions.test)
    dataset = read_nih(
        open_store(dataset_uri),
        config.val_fraction,
        config.split_seed,
        log=log,
        protocol=config.split,
        fractions=fractions,
    )
    log(f"dataset: {dataset.describe()}")
    return dataset, layout.dataset_prefix(dataset_id or dataset_id_for(dataset_uri), prep_hash(dataset, config))


def plan_all(
    dataset_uri: str, configs: list[PrepConfig], dataset_id: str | None = None, log: Callable[[str], None] = print
) -> dict[PrepConfig, str]:
    """Each config's store prefix (a study's variants), reading the dataset once per distinct split: configs
    that differ only in how the images are processed (CLAHE, size, shards) share one read and listing."""
    read: dict[tuple, NihDataset] = {}
    prefixes = {}
    for config in configs:
        split = (config.split, config.val_fraction, config.split_seed, config.split_fractions)
        if split not in read:
            read[split] = plan(dataset_uri, config, dataset_id, log)[0]
        name = dataset_id or dataset_id_for(dataset_uri)
        prefixes[config] = layout.dataset_prefix(name, prep_hash(read[split], config))
    return prefixes


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


def shard_entry(name: str, count: int, data: bytes) -> dict:
    """A shard's manifest entry: its name, samples, and its bytes' size and sha256."""
    return {"name": name, "count": count, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def dataset_summary(dataset: NihDataset) -> dict:
    """What a manifest says of the dataset itself (a JSON object): its source, each split's summary,
    what was listed, missing and unlisted. The fanned-out prepare keeps it in its plan, so the last
    shard task writes the manifest without reading the dataset again."""
    return {
        "source": dataset.source,
        "metadata_file": dataset.metadata_file,
        "splits": {split: split_summary(dataset.splits[split]) for split in SPLITS},
        "listed": dataset.listed,
        "missing": {**dataset.missing, "total": dataset.missing_total},
        "unlisted": dataset.unlisted,
    }


def build_manifest(summary: dict, config: PrepConfig, prefix: str, shards: dict[str, list[dict]]) -> dict:
    """The manifest of a prepared dataset (``summary``: :func:`dataset_summary`) whose shards
    (``{split: [shard_entry]}``) are all written."""
    return {
        "format": MANIFEST_FORMAT,
        "prefix": prefix,
        "prep_hash": prefix.rsplit("/", 1)[-1],
        "source": summary["source"],
        "metadata_file": summary["metadata_file"],
        "config": asdict(config),
        "classes": list(CLASSES),
        "splits": {split: {**summary["splits"][split], "shards": shards[split]} for split in SPLITS},
        "listed": summary["listed"],
        "missing": summary["missing"],
        "unlisted": summary["unlisted"],
        "created": utc_timestamp(),
    }


def load_manifest(store: Store, prefix: str) -> dict:
    key = layout.manifest_key(prefix)
    try:
        manifest = json.loads(store.get_text(key))
    except ValueError as exc:  # not UTF-8, not JSON
        manifest = exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise DamagedArtifact(
            f"{store.url(key)} is damaged (not a manifest): run `cxrstudy prepare` again for this dataset, "
            "which rebuilds it"
        )
    return manifest


def manifest_exists(store: Store, prefix: str) -> bool:
    return store.exists(layout.manifest_key(prefix))
