"""prepare on a prepared prefix: shards that differ from the manifest are rebuilt, the rest left alone."""

import pytest

from jobs import prepare
from jobs.errors import DamagedArtifact
from jobs.spec.configs import PrepConfig
from jobs.store import LocalStore
from jobs.store.records import write_json

CONFIG = PrepConfig(image_size=32, shard_size=100, encoding="npy")


def _shards(store, m) -> dict:
    return {
        e["name"]: store.path(f"{m['prefix']}/shards/{e['name']}")
        for info in m["splits"].values()
        for e in info["shards"]
    }


def test_prepare_again_rebuilds_cut_flipped_and_missing_shards(synthetic, tmp_path):
    store = LocalStore(tmp_path)
    m = prepare.run(str(synthetic), store, CONFIG, workers=1, log=lambda s: None)
    paths = _shards(store, m)
    assert sorted(paths) == [
        *("test-000000.tar", "test-000001.tar"),
        *("train-000000.tar", "train-000001.tar", "train-000002.tar"),
        "val-000000.tar",
    ]
    original = {name: p.read_bytes() for name, p in paths.items()}
    paths["test-000000.tar"].write_bytes(original["test-000000.tar"][:5000])
    flipped = bytearray(original["val-000000.tar"])
    flipped[3000] ^= 0x10
    paths["val-000000.tar"].write_bytes(bytes(flipped))  # same size, other bytes
    paths["train-000001.tar"].unlink()
    mtimes = {name: p.stat().st_mtime_ns for name, p in paths.items() if p.exists()}
    messages = []
    again = prepare.run(str(synthetic), store, CONFIG, workers=1, log=messages.append)
    assert again == m
    assert {name: p.read_bytes() for name, p in paths.items()} == original
    assert [n for n, t in mtimes.items() if paths[n].stat().st_mtime_ns != t] == ["val-000000.tar", "test-000000.tar"]
    manifest_url = store.url(f"{m['prefix']}/manifest.json")
    damaged = "train-000001.tar, val-000000.tar, test-000000.tar"
    assert f"prepare: 3 shard(s) differ from {manifest_url} ({damaged}); rebuilding" in messages
    messages.clear()
    prepare.run(str(synthetic), store, CONFIG, workers=1, log=messages.append)
    assert messages[-1] == (
        f"prepare: {store.url(m['prefix'])} is up to date (same dataset and config); skipped "
        "(6 shards match the manifest's sizes and sha256)"
    )


def test_a_shard_that_cannot_be_made_as_recorded_says_to_delete_the_prefix(synthetic, tmp_path):
    store = LocalStore(tmp_path)
    m = prepare.run(str(synthetic), store, CONFIG, workers=1, log=lambda s: None)
    m["splits"]["val"]["shards"][0]["sha256"] = "0" * 64  # as if the images changed since
    write_json(store, f"{m['prefix']}/manifest.json", m)
    with pytest.raises(DamagedArtifact) as caught:
        prepare.run(str(synthetic), store, CONFIG, workers=1, log=lambda s: None)
    assert str(caught.value) == (
        f"{store.url(m['prefix'] + '/shards/val-000000.tar')} is damaged and rebuilding it gives other bytes than its "
        f"manifest records (the images or OpenCV changed since): delete {store.url(m['prefix'])} and run "
        "`cxrstudy prepare` again"
    )


def test_a_damaged_manifest_is_prepared_again(synthetic, tmp_path):
    store = LocalStore(tmp_path)
    m = prepare.run(str(synthetic), store, CONFIG, workers=1, log=lambda s: None)
    store.path(f"{m['prefix']}/manifest.json").write_text('{"splits": ')
    messages = []
    again = prepare.run(str(synthetic), store, CONFIG, workers=1, log=messages.append)
    assert f"prepare: {store.url(m['prefix'] + '/manifest.json')} is damaged; preparing again" in messages
    assert {k: v for k, v in again.items() if k != "created"} == {k: v for k, v in m.items() if k != "created"}
