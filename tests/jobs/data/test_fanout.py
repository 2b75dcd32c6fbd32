"""The prepare spread over CPU workers writes the single-process prepare's shards, byte for byte."""

import json
import random

from jobs.data import fanout
from jobs.data.manifest import plan
from jobs.store import LocalStore, layout
from tests.conftest import TINY_PREP


def _without_created(store, prefix) -> dict:
    manifest = json.loads(store.get_text(layout.manifest_key(prefix)))
    manifest.pop("created")
    return manifest


def test_shards_in_any_order_give_the_single_process_prepare_byte_for_byte(synthetic, prepared, tmp_path):
    single, manifest = prepared
    store = LocalStore(tmp_path / "fanned")
    dataset, prefix = plan(str(synthetic), TINY_PREP, log=lambda m: None)
    assert prefix == manifest["prefix"]
    names = fanout.write_plan(store, str(synthetic), dataset, TINY_PREP, prefix)
    index = fanout.read_plan(store, prefix)
    assert (
        names
        == index["shards"]
        == [e["name"] for s in ("train", "val", "test") for e in manifest["splits"][s]["shards"]]
    )
    order = names[:]
    random.Random(3).shuffle(order)
    for name in order:
        assert not fanout.plan_complete(store, prefix, index)
        assert fanout.build_planned_shard(store, prefix, name, threads=2, log=lambda m: None)
    assert fanout.plan_complete(store, prefix, index)
    fanout.finish(store, prefix, index)
    for name in names:
        key = layout.shard_key(prefix, name)
        assert store.get_bytes(key) == single.get_bytes(key), name
    assert _without_created(store, prefix) == _without_created(single, prefix)


def test_a_shard_task_run_twice_skips_and_a_damaged_shard_is_written_again(synthetic, tmp_path):
    store = LocalStore(tmp_path / "fanned")
    dataset, prefix = plan(str(synthetic), TINY_PREP, log=lambda m: None)
    name = fanout.write_plan(store, str(synthetic), dataset, TINY_PREP, prefix)[0]
    logged = []
    assert fanout.build_planned_shard(store, prefix, name, threads=1, log=logged.append)
    good = store.get_bytes(layout.shard_key(prefix, name))
    assert not fanout.build_planned_shard(store, prefix, name, threads=1, log=logged.append)
    assert logged == [f"prepare: {name} is already written (its size and sha256 match); skipped"]
    store.put_bytes(layout.shard_key(prefix, name), good[:-10] + b"x" * 10)  # same size, other bytes
    assert fanout.build_planned_shard(store, prefix, name, threads=1, log=logged.append)
    assert store.get_bytes(layout.shard_key(prefix, name)) == good
    assert fanout.done_shards(store, prefix) == {name}
