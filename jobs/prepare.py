"""The prepare job: raw NIH images -> CLAHE at native resolution -> resize -> tar shards + manifest.

Output, under ``datasets/<dataset-id>/<prep-hash>/`` in the store::

    shards/train-000000.tar ... shards/val-*.tar, shards/test-*.tar
    manifest.json     counts and label prevalence per split, the config, the hash, what was missing

The prep hash covers the preprocessing config and the dataset's fingerprint (metadata, split lists,
names and sizes of the images present): the same inputs and config give the same hash, and a
prefix whose ``manifest.json`` exists is complete, so the job is skipped. The manifest is written
last: shards without a manifest are an interrupted run and are simply rewritten.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from jobs.clahe import decode_gray, preprocess
from jobs.errors import ConfigError, CxrStudyError
from jobs.labels import CLASSES
from jobs.nih import SPLITS, NihDataset, Record, read_nih
from jobs.shards import ENCODINGS, build_shard, encode_pixels
from jobs.store import Store, open_store

MANIFEST_FORMAT = "cxrstudy-shards/1"


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


def prep_hash(dataset: NihDataset, config: PrepConfig) -> str:
    blob = json.dumps(
        {"config": asdict(config), "dataset": dataset.fingerprint, "format": MANIFEST_FORMAT}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dataset_id_for(uri: str) -> str:
    """A readable id from the dataset's location: its last path component, slugged."""
    name = str(uri).rstrip("/").rsplit("/", 1)[-1] or "dataset"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "dataset"


# --- worker processes: each opens its own store client (boto3 clients are not fork-safe) -------
_worker: dict = {}


def _init_worker(dataset_uri: str, config: PrepConfig) -> None:
    cv2.setNumThreads(1)
    _worker["store"], _worker["config"] = open_store(dataset_uri), config


def _process(record: Record) -> bytes:
    store, cfg = _worker["store"], _worker["config"]
    gray = decode_gray(store.get_bytes(record.key), store.url(record.key))
    return encode_pixels(preprocess(gray, cfg.image_size, cfg.clip_limit, cfg.tile_grid), cfg.encoding)


def _map(dataset_uri: str, config: PrepConfig, records: list[Record], workers: int):
    """Processed images in ``records`` order, from ``workers`` processes (or in-process for 1)."""
    if workers <= 1:
        _init_worker(dataset_uri, config)
        yield from map(_process, records)
        return
    # An executor, not multiprocessing.Pool: a worker that dies breaks the map instead of hanging it.
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(dataset_uri, config)) as ex:
        try:
            yield from ex.map(_process, records, chunksize=8)
        except BrokenProcessPool:
            raise CxrStudyError(
                "prepare: a worker process died (out of memory, or a script without an "
                "`if __name__ == '__main__':` guard calling prepare); retry with --workers 1 to see why"
            ) from None


class _Progress:
    def __init__(self, total: int, log: Callable[[str], None], every_s: float = 5.0):
        self.total, self.log, self.every_s = total, log, every_s
        self.done = 0
        self.start = self.last = time.monotonic()

    def step(self, split: str) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else 0
            self.log(f"prepare: {self.done:,}/{self.total:,} images ({split}) {rate:,.0f}/s, eta {eta:,.0f}s")


def _split_summary(records: list[Record]) -> dict:
    labels = np.array([r.labels for r in records], dtype=np.int64).reshape(-1, len(CLASSES))
    positives = labels.sum(axis=0)
    return {
        "images": len(records),
        "patients": len({r.patient for r in records}),
        "positives": {c: int(n) for c, n in zip(CLASSES, positives)},
        "prevalence": {c: round(float(n) / max(len(records), 1), 6) for c, n in zip(CLASSES, positives)},
    }


def plan(
    dataset_uri: str, config: PrepConfig, dataset_id: str | None = None, log: Callable[[str], None] = print
) -> tuple[NihDataset, str]:
    """Read the dataset's metadata and listing: the dataset and the store prefix its shards go to."""
    dataset = read_nih(open_store(dataset_uri), config.val_fraction, config.split_seed, log=log)
    log(f"dataset: {dataset.describe()}")
    return dataset, f"datasets/{dataset_id or dataset_id_for(dataset_uri)}/{prep_hash(dataset, config)}"


def run(
    dataset_uri: str,
    store: Store,
    config: PrepConfig = PrepConfig(),
    dataset_id: str | None = None,
    workers: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Prepare ``dataset_uri`` into ``store``; returns the manifest (with its ``prefix`` in the store)."""
    source = open_store(dataset_uri)
    dataset, prefix = plan(dataset_uri, config, dataset_id, log)
    if store.exists(f"{prefix}/manifest.json"):
        log(f"prepare: {store.url(prefix)} is up to date (same dataset and config); skipped")
        return json.loads(store.get_text(f"{prefix}/manifest.json"))

    workers = workers or os.cpu_count() or 1
    total = sum(len(v) for v in dataset.splits.values())
    log(
        f"prepare: {total:,} images -> {store.url(prefix)} ({workers} processes, {config.image_size}px, "
        f"CLAHE clip {config.clip_limit} grid {config.tile_grid})"
    )
    progress = _Progress(total, log)
    ordered = [(split, r) for split in SPLITS for r in dataset.splits[split]]
    shards: dict[str, list[dict]] = {split: [] for split in SPLITS}
    batch: list[tuple[dict, bytes]] = []
    payloads = _map(source.uri, config, [r for _, r in ordered], workers)
    for i, ((split, record), payload) in enumerate(zip(ordered, payloads)):
        batch.append(({"image": record.image, "patient": record.patient, "labels": list(record.labels)}, payload))
        progress.step(split)
        if len(batch) == config.shard_size or i + 1 == len(ordered) or ordered[i + 1][0] != split:
            name = f"{split}-{len(shards[split]):06d}.tar"
            store.put_bytes(f"{prefix}/shards/{name}", build_shard(batch, config.encoding))
            shards[split].append({"name": name, "count": len(batch)})
            batch = []
    splits = {split: {**_split_summary(dataset.splits[split]), "shards": shards[split]} for split in SPLITS}

    manifest = {
        "format": MANIFEST_FORMAT,
        "prefix": prefix,
        "prep_hash": prefix.rsplit("/", 1)[-1],
        "source": dataset.source,
        "metadata_file": dataset.metadata_file,
        "config": asdict(config),
        "classes": list(CLASSES),
        "splits": splits,
        "listed": dataset.listed,
        "missing": {**dataset.missing, "total": dataset.missing_total},
        "unlisted": dataset.unlisted,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    store.put_text(f"{prefix}/manifest.json", json.dumps(manifest, indent=2))
    log(f"prepare: wrote {sum(len(s['shards']) for s in splits.values())} shards and {store.url(prefix)}/manifest.json")
    return manifest


def load_manifest(store: Store, prefix: str) -> dict:
    return json.loads(store.get_text(f"{prefix}/manifest.json"))


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.prepare``: what the prepare task runs, in a process of its own (Celery's pool
    children are daemonic and may not start the process pool)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m jobs.prepare", description="CLAHE shards of an NIH dataset.")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--config", default="{}", help="PrepConfig fields as JSON")
    parser.add_argument("--dataset-id")
    parser.add_argument("--workers", type=int)
    args = parser.parse_args(argv)
    try:
        config = PrepConfig(**json.loads(args.config))
        manifest = run(
            args.dataset,
            open_store(args.store),
            config,
            args.dataset_id,
            args.workers,
            log=lambda m: print(m, flush=True),
        )
    except (CxrStudyError, TypeError, ValueError) as exc:
        print(f"jobs.prepare: error: {exc}", file=sys.stderr)
        return 2
    print(f"prefix: {manifest['prefix']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
