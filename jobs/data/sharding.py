"""Raw NIH images -> CLAHE at native resolution -> resize -> tar shards, spread over processes.

Output, under ``datasets/<dataset-id>/<prep-hash>/`` in the store (keys from :mod:`jobs.store.layout`)::

    shards/train-000000.tar ... shards/val-*.tar, shards/test-*.tar
    manifest.json     counts and label prevalence per split, the config, the hash, what was missing

A prefix whose ``manifest.json`` exists is complete (the manifest is written last, see
:mod:`jobs.data.manifest`), so :func:`prepare` only checks its shards against the manifest's sizes
and sha256 digests, and rebuilds those that differ (the same records give byte-identical shards).
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import cv2
import numpy as np

from jobs.data.clahe import decode_gray, preprocess, resize
from jobs.data.manifest import build_manifest, dataset_summary, load_manifest, manifest_exists, plan, shard_entry
from jobs.data.nih import SPLITS, NihDataset, Record
from jobs.data.shards import build_shard, encode_pixels
from jobs.errors import CxrStudyError, DamagedArtifact
from jobs.spec.configs import PrepConfig
from jobs.store import Store, layout, open_store
from jobs.store.records import write_json

# --- worker processes: each opens its own store client (boto3 clients are not fork-safe) -------
_worker: dict = {}


def _init_worker(dataset_uri: str, config: PrepConfig) -> None:
    cv2.setNumThreads(1)
    _worker["store"], _worker["config"] = open_store(dataset_uri), config


def process_image(store: Store, cfg: PrepConfig, record: Record) -> bytes:
    """One image, read from the dataset's store, CLAHE'd (unless ``cfg.clahe`` is off), resized and
    encoded: a shard's payload."""
    gray = decode_gray(store.get_bytes(record.key), store.url(record.key))
    if cfg.clahe:
        pixels = preprocess(gray, cfg.image_size, cfg.clip_limit, cfg.tile_grid)
    else:
        pixels = resize(gray, cfg.image_size)
    return encode_pixels(pixels, cfg.encoding)


def _process(record: Record) -> bytes:
    return process_image(_worker["store"], _worker["config"], record)


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: the ``index``-th of its split, with its records in order."""

    split: str
    index: int
    records: list[Record]

    @property
    def name(self) -> str:
        return layout.shard_name(self.split, self.index)


def plan_shards(dataset: NihDataset, config: PrepConfig) -> list[ShardPlan]:
    """Every shard of a prepare, in order: each split's records in an order shuffled by the split
    seed, cut in runs of ``shard_size``. Both the single-process prepare and the fanned-out one
    (:mod:`jobs.data.fanout`) write these.

    NIH lists images by patient, and one patient's films share findings; shards cut from that order
    would each hold a few neighbouring patients, and a training shuffle buffer that spans a few shards
    would draw its batches from them. Shuffled, each shard is a sample of the whole split: its label
    prevalence is the split's within sampling noise.
    """
    size = config.shard_size
    plans = []
    for number, split in enumerate(SPLITS):
        records = dataset.splits[split]
        order = np.random.default_rng([config.split_seed, number]).permutation(len(records))
        shuffled = [records[i] for i in order]
        plans += [
            ShardPlan(split, start // size, shuffled[start : start + size]) for start in range(0, len(shuffled), size)
        ]
    return plans


def shard_bytes(records: list[Record], payloads, encoding: str) -> bytes:
    """The tar of ``records`` with their processed images, taking ``len(records)`` from ``payloads``."""
    return build_shard([(_meta(r), p) for r, p in zip(records, itertools.islice(payloads, len(records)))], encoding)


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

    def counted(self, payloads, split: str):
        """``payloads``, each one counted as it is taken."""
        for payload in payloads:
            self.step(split)
            yield payload

    def step(self, split: str) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else 0
            self.log(f"prepare: {self.done:,}/{self.total:,} images ({split}) {rate:,.0f}/s, eta {eta:,.0f}s")


def _meta(record: Record) -> dict:
    return {"image": record.image, "patient": record.patient, "labels": list(record.labels)}


def _sha256(store: Store, key: str) -> str:
    digest = hashlib.sha256()
    with store.open(key) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def damaged_shards(store: Store, prefix: str, manifest: dict, threads: int = 4) -> list[tuple[str, int, dict]]:
    """``(split, index, entry)`` of every shard whose size or sha256 differs from the manifest (or is absent)."""
    sizes = {o.key: o.size for o in store.list(layout.shards_prefix(prefix))}
    entries = [(split, i, e) for split in SPLITS for i, e in enumerate(manifest["splits"][split]["shards"])]

    def bad(item: tuple[str, int, dict]) -> bool:
        key = layout.shard_key(prefix, item[2]["name"])
        return sizes.get(key) != item[2].get("size") or _sha256(store, key) != item[2].get("sha256")

    with ThreadPoolExecutor(max(1, min(threads, 8))) as ex:
        return [item for item, is_bad in zip(entries, ex.map(bad, entries)) if is_bad]


def _rebuild(
    dataset_uri: str, store: Store, dataset: NihDataset, config: PrepConfig, prefix: str, damaged: list, workers: int
) -> None:
    """Make the ``damaged`` shards again from their records; each must come out as its manifest entry says."""
    planned = {p.name: p.records for p in plan_shards(dataset, config)}
    parts = [planned.get(entry["name"], []) for _, _, entry in damaged]
    payloads = _map(dataset_uri, config, [r for part in parts for r in part], workers)
    for (_, _, entry), records in zip(damaged, parts):
        data = shard_bytes(records, payloads, config.encoding)
        key = layout.shard_key(prefix, entry["name"])
        if shard_entry(entry["name"], len(records), data) != entry:
            raise DamagedArtifact(
                f"{store.url(key)} is damaged and rebuilding it gives other bytes than its manifest records "
                f"(the images or OpenCV changed since): delete {store.url(prefix)} and run `cxrstudy prepare` again"
            )
        store.put_bytes(key, data)


def _reuse(
    dataset_uri: str, store: Store, dataset: NihDataset, config: PrepConfig, prefix: str, workers: int, log
) -> dict | None:
    """The manifest of an already prepared ``prefix``, its damaged shards rebuilt; None when there is none."""
    if not manifest_exists(store, prefix):
        return None
    try:
        manifest = load_manifest(store, prefix)
    except DamagedArtifact:
        log(f"prepare: {store.url(layout.manifest_key(prefix))} is damaged; preparing again")
        return None
    damaged = damaged_shards(store, prefix, manifest, workers)
    if not damaged:
        count = sum(len(manifest["splits"][split]["shards"]) for split in SPLITS)
        log(
            f"prepare: {store.url(prefix)} is up to date (same dataset and config); skipped "
            f"({count} shards match the manifest's sizes and sha256)"
        )
        return manifest
    names = ", ".join(entry["name"] for _, _, entry in damaged[:5]) + (", ..." if len(damaged) > 5 else "")
    log(f"prepare: {len(damaged)} shard(s) differ from {store.url(layout.manifest_key(prefix))} ({names}); rebuilding")
    _rebuild(dataset_uri, store, dataset, config, prefix, damaged, workers)
    log(f"prepare: rebuilt {len(damaged)} shard(s); {store.url(prefix)} is up to date")
    return manifest


def prepare(
    dataset_uri: str,
    store: Store,
    config: PrepConfig | None = None,
    dataset_id: str | None = None,
    workers: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Prepare ``dataset_uri`` into ``store``; returns the manifest (with its ``prefix`` in the store).

    An already prepared prefix is checked, shard by shard, against its manifest; damaged shards are rebuilt.
    """
    config = config or PrepConfig()
    source = open_store(dataset_uri)
    dataset, prefix = plan(dataset_uri, config, dataset_id, log)
    workers = workers or os.cpu_count() or 1
    if (manifest := _reuse(source.uri, store, dataset, config, prefix, workers, log)) is not None:
        return manifest

    total = sum(len(v) for v in dataset.splits.values())
    clahe = f"CLAHE clip {config.clip_limit} grid {config.tile_grid}" if config.clahe else "no CLAHE"
    split = "official split" if config.split == "official" else "random split"
    where = f"{store.url(prefix)} ({workers} processes, {config.image_size}px, {clahe}, {split})"
    log(f"prepare: {total:,} images -> {where}")
    progress = _Progress(total, log)
    planned = plan_shards(dataset, config)
    shards: dict[str, list[dict]] = {split: [] for split in SPLITS}
    payloads = _map(source.uri, config, [r for p in planned for r in p.records], workers)
    for p in planned:
        data = shard_bytes(p.records, progress.counted(payloads, p.split), config.encoding)
        store.put_bytes(layout.shard_key(prefix, p.name), data)
        shards[p.split].append(shard_entry(p.name, len(p.records), data))
    manifest = build_manifest(dataset_summary(dataset), config, prefix, shards)
    write_json(store, layout.manifest_key(prefix), manifest)
    log(f"prepare: wrote {sum(len(s) for s in shards.values())} shards and {store.url(layout.manifest_key(prefix))}")
    return manifest
