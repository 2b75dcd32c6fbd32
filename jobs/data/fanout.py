"""Prepare spread over CPU workers: a plan, one task per shard, the manifest last.

The single-process prepare (:func:`jobs.data.sharding.prepare`) runs on one machine and starts over
when it is killed. On a cluster the prepare task instead:

1. plans (:func:`write_plan`): reads the dataset's metadata and listing once, and writes under the
   prefix's ``plan/`` the records of each shard (``plan/<shard>.json``) and then ``plan/index.json``
   (the dataset's summary, the config, the shard list): what the other tasks need, so none of them
   reads the metadata again;
2. one task per shard (:func:`build_planned_shard`), on any CPU worker: it processes its records
   (OpenCV releases the GIL, so a thread per core), writes the shard and then its mark
   ``plan/<shard>.done.json`` (its manifest entry: count, size, sha256). A shard whose mark exists
   and whose bytes match it is skipped, so a task may run twice and a killed prepare loses only the
   shards in flight;
3. the task that finds every mark present (:func:`plan_complete`, one listing) writes the manifest
   (:func:`finish`) from the marks, in plan order.

The shards are the single-process prepare's, byte for byte: the same plan (:func:`plan_shards`),
the same per-image processing and the same tar writer; the manifest is too, but for its ``created``
time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import cv2

from jobs.data.manifest import MANIFEST_FORMAT, build_manifest, dataset_summary, shard_entry
from jobs.data.nih import SPLITS, NihDataset, Record
from jobs.data.sharding import plan_shards, process_image, shard_bytes
from jobs.errors import DamagedArtifact
from jobs.spec.configs import PrepConfig
from jobs.spec.schema import build
from jobs.store import Store, layout, open_store
from jobs.store.records import read_json, write_json

PLAN_FORMAT = f"{MANIFEST_FORMAT}/plan-1"
REPLAN = "its prepare plan is damaged: delete {} and submit (or `cxrstudy resume`) the study again"


def write_plan(store: Store, dataset_uri: str, dataset: NihDataset, config: PrepConfig, prefix: str) -> list[str]:
    """Write the plan of preparing ``dataset`` into ``prefix``; returns the shard names in order."""
    planned = plan_shards(dataset, config)

    def one(p):
        records = [[r.image, r.key, r.patient, list(r.labels)] for r in p.records]
        write_json(store, layout.plan_shard_key(prefix, p.name), {"split": p.split, "records": records})

    with ThreadPoolExecutor(8) as ex:
        list(ex.map(one, planned))
    index = {
        "format": PLAN_FORMAT,
        "dataset": open_store(dataset_uri).uri,
        "config": asdict(config),
        "summary": dataset_summary(dataset),
        "shards": [p.name for p in planned],
        "splits": [p.split for p in planned],
    }
    write_json(store, layout.plan_index_key(prefix), index)  # last: present means the plan is whole
    return index["shards"]


def read_plan(store: Store, prefix: str) -> dict | None:
    """The plan's index, None when there is none; a DamagedArtifact when it cannot be used."""
    fix = REPLAN.format(store.url(layout.plan_prefix(prefix)))
    index = read_json(store, layout.plan_index_key(prefix), fix)
    if index is not None and (
        index.get("format") != PLAN_FORMAT
        or not isinstance(index.get("shards"), list)
        or not isinstance(index.get("splits"), list)
    ):
        raise DamagedArtifact(f"{store.url(layout.plan_index_key(prefix))}: {fix}")
    return index


def done_shards(store: Store, prefix: str) -> set[str]:
    """The shards whose mark is written (one listing of ``plan/``)."""
    return {name for o in store.list(layout.plan_prefix(prefix)) if (name := layout.plan_done_name(o.key))}


def plan_complete(store: Store, prefix: str, index: dict) -> bool:
    return done_shards(store, prefix) >= set(index["shards"])


def _present(store: Store, key: str, entry: dict) -> bool:
    """The shard at ``key`` has the size and sha256 its mark records."""
    if not store.exists(key):
        return False
    digest, size = hashlib.sha256(), 0
    with store.open(key) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size == entry.get("size") and digest.hexdigest() == entry.get("sha256")


def build_planned_shard(store: Store, prefix: str, name: str, threads: int, log: Callable[[str], None]) -> bool:
    """Write shard ``name`` of the plan at ``prefix`` and its mark; False when it was already there."""
    index = read_plan(store, prefix)
    if index is None or name not in index["shards"]:
        raise DamagedArtifact(
            f"{store.url(layout.plan_index_key(prefix))} plans no shard {name!r}: "
            + REPLAN.format(store.url(layout.plan_prefix(prefix)))
        )
    key, mark = layout.shard_key(prefix, name), layout.plan_done_key(prefix, name)
    try:
        done = read_json(store, mark)
    except DamagedArtifact:  # a mark that cannot be read: the shard is made again, and its mark
        done = None
    if done is not None and _present(store, key, done):
        log(f"prepare: {name} is already written (its size and sha256 match); skipped")
        return False
    part = read_json(store, layout.plan_shard_key(prefix, name), REPLAN.format(store.url(layout.plan_prefix(prefix))))
    records = [Record(image, where, int(patient), tuple(labels)) for image, where, patient, labels in part["records"]]
    config, source = build(PrepConfig, index["config"], "config"), open_store(index["dataset"])
    cv2.setNumThreads(1)  # one image per thread; OpenCV releases the GIL while it works
    with ThreadPoolExecutor(max(1, threads)) as ex:
        payloads = ex.map(lambda r: process_image(source, config, r), records)
        data = shard_bytes(records, payloads, config.encoding)
    store.put_bytes(key, data)
    write_json(store, mark, shard_entry(name, len(records), data))  # after the shard: a mark means it is there
    return True


def finish(store: Store, prefix: str, index: dict) -> dict:
    """Write the manifest from every shard's mark, in plan order; returns it."""
    entries = {name: read_json(store, layout.plan_done_key(prefix, name)) for name in index["shards"]}
    shards: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for name, split in zip(index["shards"], index["splits"]):
        entry = entries[name]
        if entry is None:
            raise DamagedArtifact(f"{store.url(layout.plan_done_key(prefix, name))} is missing; run the prepare again")
        shards[split].append(entry)
    manifest = build_manifest(index["summary"], build(PrepConfig, index["config"], "config"), prefix, shards)
    write_json(store, layout.manifest_key(prefix), manifest)
    return manifest
