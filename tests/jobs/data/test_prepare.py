import json
import shutil
import tarfile
from dataclasses import replace

import cv2
import numpy as np
import pytest

from jobs import prepare
from jobs.data.clahe import decode_gray, preprocess
from jobs.data.shards import read_shard
from jobs.errors import DatasetError
from jobs.spec.configs import PrepConfig
from jobs.store import LocalStore
from tests.conftest import TINY_PREP, plain_resize

quiet = dict(log=lambda m: None)


def test_clahe_output_equals_opencv_on_a_real_image(nih_sample):
    path = nih_sample / "images" / "00000100_000.png"
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert gray.shape == (1024, 1024)
    reference = cv2.resize(
        cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(gray), (64, 64), interpolation=cv2.INTER_AREA
    )
    ours = preprocess(decode_gray(path.read_bytes(), str(path)), 64, 2.0, 8)
    assert ours.dtype == np.uint8 and ours.tobytes() == reference.tobytes()
    assert not np.array_equal(ours, cv2.resize(gray, (64, 64), interpolation=cv2.INTER_AREA))  # CLAHE did act


def test_rgba_pngs_read_as_8bit_gray(nih_sample):
    rgba = [p for p in sorted((nih_sample / "images").iterdir()) if cv2.imread(str(p), cv2.IMREAD_UNCHANGED).ndim == 3]
    assert len(rgba) == 3
    for p in rgba:
        raw = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        gray = decode_gray(p.read_bytes(), str(p))
        assert gray.ndim == 2 and gray.dtype == np.uint8
        assert np.array_equal(gray, cv2.cvtColor(raw, cv2.COLOR_BGRA2GRAY))


def test_prepare_real_sample_shards_match_opencv(nih_sample, tmp_path):
    store = LocalStore(tmp_path)
    messages = []
    m = prepare.run(str(nih_sample), store, PrepConfig(image_size=64, shard_size=40), workers=2, log=messages.append)
    assert m["missing"]["total"] == 111_990
    assert any("111,990 of 112,120 listed images are missing" in line for line in messages)
    assert [m["splits"][s]["images"] for s in ("train", "val", "test")] == [89, 11, 30]
    assert [s["count"] for s in m["splits"]["train"]["shards"]] == [40, 40, 9]
    with store.open(f"{m['prefix']}/shards/test-000000.tar") as fh:
        samples = list(read_shard(fh, "png", "test shard", m["splits"]["test"]["shards"][0]))
    assert len(samples) == 30
    s = samples[0]
    gray = cv2.imread(str(nih_sample / "images" / s.image), cv2.IMREAD_GRAYSCALE)
    expected = cv2.resize(cv2.createCLAHE(2.0, (8, 8)).apply(gray), (64, 64), interpolation=cv2.INTER_AREA)
    assert s.pixels.tobytes() == expected.tobytes()


def test_without_clahe_a_real_images_shard_is_opencvs_plain_resize_under_its_own_prefix(nih_sample, tmp_path):
    store = LocalStore(tmp_path)
    with_clahe = prepare.run(str(nih_sample), store, PrepConfig(image_size=64, shard_size=40), workers=1, **quiet)
    plain = prepare.run(
        str(nih_sample), store, PrepConfig(image_size=64, shard_size=40, clahe=False), workers=1, **quiet
    )
    assert plain["prefix"] != with_clahe["prefix"] and plain["config"]["clahe"] is False
    # The same split, so the two arms of a CLAHE ablation are scored on the same images.
    for split in ("train", "val", "test"):
        assert plain["splits"][split]["images"] == with_clahe["splits"][split]["images"]
    with store.open(f"{plain['prefix']}/shards/test-000000.tar") as fh:
        samples = list(read_shard(fh, "png", "test shard", plain["splits"]["test"]["shards"][0]))
    assert len(samples) == 30
    for s in samples:
        assert s.pixels.tobytes() == plain_resize(nih_sample / "images" / s.image, 64).tobytes(), s.image


def test_manifest_counts_and_webdataset_member_names(prepared):
    store, m = prepared
    assert m["prefix"].startswith("datasets/nih/") and m["prep_hash"] == m["prefix"].rsplit("/", 1)[1]
    total = 0
    for info in m["splits"].values():
        total += info["images"]
        assert sum(s["count"] for s in info["shards"]) == info["images"]
        assert set(info["prevalence"]) == set(m["classes"])
    with tarfile.open(store.path(f"{m['prefix']}/shards/train-000000.tar")) as tar:
        names = tar.getnames()
        first = json.loads(tar.extractfile(names[1]).read())
    assert names[0].endswith(".png") and names[1] == names[0].replace(".png", ".json")
    assert set(first) == {"image", "patient", "labels"} and len(first["labels"]) == 14
    assert total == 400


def test_same_inputs_skip_and_a_new_config_gets_a_new_hash(synthetic, prepared):
    store, m = prepared
    shard = store.path(f"{m['prefix']}/shards/train-000000.tar")
    before = shard.stat().st_mtime_ns
    again = prepare.run(str(synthetic), store, TINY_PREP, workers=1, **quiet)
    assert again["prefix"] == m["prefix"] and shard.stat().st_mtime_ns == before
    other = prepare.run(str(synthetic), store, replace(TINY_PREP, clip_limit=3.0), workers=1, **quiet)
    assert other["prefix"] != m["prefix"]


def test_parallel_prepare_is_byte_identical(synthetic, tmp_path):
    a, b = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    ma = prepare.run(str(synthetic), a, PrepConfig(image_size=32, shard_size=100), workers=1, **quiet)
    prepare.run(str(synthetic), b, PrepConfig(image_size=32, shard_size=100), workers=2, **quiet)
    for split in ("train", "val", "test"):
        for shard in ma["splits"][split]["shards"]:
            key = f"{ma['prefix']}/shards/{shard['name']}"
            assert a.get_bytes(key) == b.get_bytes(key)


def test_corrupt_png_names_the_file_and_leaves_no_manifest(synthetic, tmp_path):
    root = tmp_path / "nih"
    shutil.copytree(synthetic, root)
    victim = (root / "test_list.txt").read_text().split()[0]
    (root / "images" / victim).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    store = LocalStore(tmp_path / "store")
    with pytest.raises(DatasetError, match=rf"{victim}: not a readable image"):
        prepare.run(str(root), store, PrepConfig(image_size=32), workers=1, **quiet)
    assert not [o for o in store.list("datasets/") if o.key.endswith("manifest.json")]


def test_npy_encoding_round_trips(synthetic, tmp_path):
    store = LocalStore(tmp_path)
    m = prepare.run(str(synthetic), store, PrepConfig(image_size=32, encoding="npy"), workers=1, **quiet)
    with store.open(f"{m['prefix']}/shards/val-000000.tar") as fh:
        sample = next(read_shard(fh, "npy", "val", m["splits"]["val"]["shards"][0]))
    gray = cv2.imread(str(synthetic / "images" / sample.image), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(sample.pixels, preprocess(gray, 32))
