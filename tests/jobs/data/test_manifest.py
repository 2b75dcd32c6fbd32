"""The manifest: every shard's count, size and sha256; the format in the prep hash; a damaged manifest named."""

import hashlib
import tarfile

import pytest

from jobs.data import manifest
from jobs.data.nih import read_nih
from jobs.errors import DamagedArtifact
from jobs.store import LocalStore, open_store
from tests.conftest import TINY_PREP


def test_every_shard_entry_is_its_count_size_and_sha256(prepared):
    store, m = prepared
    assert m["format"] == "cxrstudy-shards/3"
    for split, info in m["splits"].items():
        for entry in info["shards"]:
            path = store.path(f"{m['prefix']}/shards/{entry['name']}")
            data = path.read_bytes()
            with tarfile.open(path) as tar:
                samples = sum(name.endswith(".json") for name in tar.getnames())
            assert entry == {
                "name": entry["name"],
                "count": samples,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }, (split, entry["name"])
    first = m["splits"]["train"]["shards"][0]
    assert first["name"] == "train-000000.tar" and first["count"] == 64 and first["size"] % 10240 == 0


def test_shard_entry_of_known_bytes():
    assert manifest.shard_entry("val-000002.tar", 3, b"abc") == {
        "name": "val-000002.tar",
        "count": 3,
        "size": 3,
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    }


def test_a_new_format_is_a_new_prep_hash(synthetic, monkeypatch):
    dataset = read_nih(open_store(str(synthetic)), TINY_PREP.val_fraction, TINY_PREP.split_seed, log=lambda m: None)
    current = manifest.prep_hash(dataset, TINY_PREP)
    monkeypatch.setattr(manifest, "MANIFEST_FORMAT", "cxrstudy-shards/1")
    assert manifest.prep_hash(dataset, TINY_PREP) != current  # shards of format 1 are never mixed in


@pytest.mark.parametrize("text", ['{"splits": {', "[1, 2]", "\udcff"])
def test_a_damaged_manifest_names_its_key(tmp_path, text):
    store = LocalStore(tmp_path)
    store.path("datasets/d/h").mkdir(parents=True)
    store.path("datasets/d/h/manifest.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(DamagedArtifact) as caught:
        manifest.load_manifest(store, "datasets/d/h")
    assert str(caught.value) == (
        f"{store.url('datasets/d/h/manifest.json')} is damaged (not a manifest): run `cxrstudy prepare` again "
        "for this dataset, which rebuilds it"
    )


@pytest.mark.parametrize(
    "uri, expected", [(".", "dataset"), ("..", "dataset"), ("/data/..", "dataset"), ("/data/nih v2/", "nih-v2")]
)
def test_a_dataset_id_from_the_location_is_never_a_step_out_of_datasets(uri, expected):
    assert manifest.dataset_id_for(uri) == expected


def test_plan_all_reads_the_dataset_once_per_split_setting_and_gives_each_config_plans_prefix(synthetic):
    from dataclasses import replace

    plain, small = replace(TINY_PREP, clahe=False), replace(TINY_PREP, image_size=32)
    other_split = replace(TINY_PREP, split_seed=7)
    logged = []
    prefixes = manifest.plan_all(str(synthetic), [TINY_PREP, plain, small, other_split], log=logged.append)
    assert sum(" images found under " in m for m in logged) == 2  # the three that share a split share a read
    for config in (TINY_PREP, plain, small, other_split):
        assert prefixes[config] == manifest.plan(str(synthetic), config, log=lambda m: None)[1]
    assert len(set(prefixes.values())) == 4
