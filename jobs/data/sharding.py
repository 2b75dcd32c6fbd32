"""Raw NIH images -> CLAHE at native resolution -> resize -> tar shards, spread over processes.

Output, under ``datasets/<dataset-id>/<prep-hash>/`` in the store (keys from :mod:`jobs.store.layout`)::

    shards/train-000000.tar ... shards/val-*.tar, shards/test-*.tar
    manifest.json     counts and label prevalence per split, the config, the hash, what was missing

A prefix whose ``manifest.json`` exists is complete, so :func:`prepare` is skipped; the manifest is
written last (see :mod:`jobs.data.manifest`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import cv2

from jobs.data.clahe import decode_gray, preprocess
from jobs.data.manifest import build_manifest, load_manifest, manifest_exists, plan
from jobs.data.nih import SPLITS, Record
from jobs.data.shards import build_shard, encode_pixels
from jobs.errors import CxrStudyError
from jobs.spec.configs import PrepConfig
from jobs.store import Store, layout, open_store
from jobs.store.records import write_json

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


def prepare(
    dataset_uri: str,
    store: Store,
    config: PrepConfig | None = None,
    dataset_id: str | None = None,
    workers: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Prepare ``dataset_uri`` into ``store``; returns the manifest (with its ``prefix`` in the store)."""
    config = config or PrepConfig()
    source = open_store(dataset_uri)
    dataset, prefix = plan(dataset_uri, config, dataset_id, log)
    if manifest_exists(store, prefix):
        log(f"prepare: {store.url(prefix)} is up to date (same dataset and config); skipped")
        return load_manifest(store, prefix)

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
            name = layout.shard_name(split, len(shards[split]))
            store.put_bytes(layout.shard_key(prefix, name), build_shard(batch, config.encoding))
            shards[split].append({"name": name, "count": len(batch)})
            batch = []
    manifest = build_manifest(dataset, config, prefix, shards)
    write_json(store, layout.manifest_key(prefix), manifest)
    log(f"prepare: wrote {sum(len(s) for s in shards.values())} shards and {store.url(layout.manifest_key(prefix))}")
    return manifest
