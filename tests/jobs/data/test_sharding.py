"""prepare on a prepared prefix: shards that differ from the manifest are rebuilt, the rest left alone."""

import numpy as np
import pytest

from jobs import prepare
from jobs.data.nih import NihDataset, Record
from jobs.data.sharding import plan_shards
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


def _patient_ordered_dataset() -> NihDataset:
    """60 patients of 10 films each, listed by patient as NIH lists them; the first 30 patients have
    Atelectasis on every film, the others none: a shard cut in list order holds one kind or the other."""
    rng = np.random.default_rng(0)
    records = []
    for patient in range(60):
        for film in range(10):
            labels = [int(patient < 30), int(rng.random() < 0.2)] + [0] * 12
            records.append(
                Record(f"{patient:08d}_{film:03d}.png", f"images/{patient}_{film}.png", patient, tuple(labels))
            )
    splits = {"train": records, "val": records[:100], "test": records[100:200]}
    return NihDataset("mem://", "Data_Entry_2017.csv", splits, {}, {}, 0)


def test_shards_are_cut_from_each_split_shuffled_by_the_split_seed_so_their_prevalence_is_the_splits():
    dataset = _patient_ordered_dataset()
    config = PrepConfig(shard_size=50)
    planned = [p for p in plan_shards(dataset, config) if p.split == "train"]
    assert [p.name for p in planned] == [f"train-{i:06d}.tar" for i in range(12)]
    assert sorted(r.image for p in planned for r in p.records) == sorted(r.image for r in dataset.splits["train"])
    everything = np.array([r.labels[:2] for r in dataset.splits["train"]], dtype=float)
    split_prevalence, n, total = everything.mean(axis=0), 50, len(everything)
    # The standard deviation of a shard's prevalence: 50 records drawn without replacement from 600.
    sd = np.sqrt(split_prevalence * (1 - split_prevalence) / n * (total - n) / (total - 1))
    for p in planned:
        prevalence = np.array([r.labels[:2] for r in p.records], dtype=float).mean(axis=0)
        assert (np.abs(prevalence - split_prevalence) <= 4 * sd).all(), (p.name, prevalence, split_prevalence)
    again = plan_shards(dataset, config)
    other = plan_shards(dataset, PrepConfig(shard_size=50, split_seed=1))
    assert [r.image for r in again[0].records] == [r.image for r in planned[0].records]
    assert [r.image for r in other[0].records] != [r.image for r in planned[0].records]
