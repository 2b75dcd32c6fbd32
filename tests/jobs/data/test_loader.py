import re
import shutil

import numpy as np
import pytest
import torch

from jobs import prepare
from jobs.data.loader import RunLoader, ShardStream, SplitBatches, augment, batched, exposure, make_loader
from jobs.errors import DamagedArtifact
from jobs.spec.configs import AugmentConfig, PrepConfig
from jobs.store import LocalStore, open_store


def _stream(store, m, split="train", **kw):
    return ShardStream(store.uri, m["prefix"], m["splits"][split]["shards"], m["config"]["encoding"], **kw)


def _epoch(stream, batch_size=16):
    names, pixels = [], []
    for images, labels, batch_names, _ in make_loader(stream, batch_size):
        assert images.dtype == torch.uint8 and images.shape[1:] == (1, 48, 48) and labels.shape[1] == 14
        names.extend(batch_names)
        pixels.append(images)
    return names, torch.cat(pixels)


def test_order_and_augmentation_are_fixed_by_seed_and_epoch(prepared):
    store, m = prepared
    a = _epoch(_stream(store, m, seed=3, epoch=1, shuffle=True, augment=AugmentConfig(), buffer_size=50))
    b = _epoch(_stream(store, m, seed=3, epoch=1, shuffle=True, augment=AugmentConfig(), buffer_size=50))
    c = _epoch(_stream(store, m, seed=3, epoch=2, shuffle=True, augment=AugmentConfig(), buffer_size=50))
    d = _epoch(_stream(store, m, seed=4, epoch=1, shuffle=True, augment=AugmentConfig(), buffer_size=50))
    assert a[0] == b[0] and torch.equal(a[1], b[1])
    assert a[0] != c[0] and a[0] != d[0]
    assert sorted(a[0]) == sorted(c[0])  # every image once per epoch
    assert len(a[0]) == m["splits"]["train"]["images"]


def test_evaluation_stream_is_in_shard_order_without_augmentation(prepared):
    store, m = prepared
    names, pixels = _epoch(_stream(store, m, split="val"))
    again, pixels2 = _epoch(_stream(store, m, split="val", seed=99))
    assert names == again and torch.equal(pixels, pixels2)


def test_augment_changes_pixels_reproducibly():
    img = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    a = augment(img, np.random.default_rng(0), AugmentConfig())
    b = augment(img, np.random.default_rng(0), AugmentConfig())
    assert np.array_equal(a, b) and not np.array_equal(a, img) and a.dtype == np.uint8


def test_streams_shards_from_s3(synthetic, s3_env):
    store = open_store("s3://cxrstudy-test/loader")
    m = prepare.run(str(synthetic), store, PrepConfig(image_size=48, shard_size=64), workers=1, log=lambda s: None)
    names, _ = _epoch(_stream(store, m, seed=0, shuffle=True))
    assert len(names) == m["splits"]["train"]["images"]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_damaged_shard_fails_the_split_with_one_line_naming_it(prepared, tmp_path, num_workers):
    store, m = prepared
    copy = LocalStore(tmp_path)
    shutil.copytree(store.path(m["prefix"]), copy.path(m["prefix"]))
    key = f"{m['prefix']}/shards/test-000000.tar"
    data = copy.path(key).read_bytes()
    copy.path(key).write_bytes(data[: len(data) // 2])
    count = m["splits"]["test"]["shards"][0]["count"]
    seen = []
    with pytest.raises(DamagedArtifact) as caught:
        for _, _, names, _ in make_loader(_stream(copy, m, split="test"), 8, num_workers=num_workers):
            seen.extend(names)
    message = str(caught.value)
    assert re.fullmatch(
        rf"shard {re.escape(copy.url(key))} is damaged \(\d+ of {count} samples read, then [^\n]+\): run "
        r"`cxrstudy prepare` again for this dataset, which rebuilds damaged shards, then resume the study",
        message,
    ), message
    assert len(seen) < count


def _batches(batches) -> list:
    return [(names, images, labels, [int(p) for p in patients]) for images, labels, names, patients in batches]


def _same_batches(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        list(x[0]) == list(y[0]) and torch.equal(x[1], y[1]) and torch.equal(x[2], y[2]) and x[3] == y[3]
        for x, y in zip(a, b)
    )


def test_a_run_loader_serves_every_pass_from_the_same_worker_processes_as_one_pass_loaders_would(prepared):
    store, m = prepared
    splits = {s: info["shards"] for s, info in m["splits"].items()}
    dataset = SplitBatches(
        store.uri, m["prefix"], splits, m["config"]["encoding"], seed=3, batch_size=16, augment=AugmentConfig()
    )
    dataset.buffer_size = 50

    def one_pass(split, epoch=0, train=False):  # what a run read before: a fresh DataLoader per pass
        stream = _stream(store, m, split, seed=3, epoch=epoch, shuffle=train, buffer_size=50)
        stream.augment = AugmentConfig() if train else None
        return _batches(make_loader(stream, 16, num_workers=2, drop_last=train))

    with RunLoader(dataset, num_workers=2) as loader:
        first = _batches(loader.batches("train", 1, train=True))
        workers = [w.pid for w in loader.loader._iterator._workers]
        next(loader.batches("train", 10_001, train=True))  # a pass left after one batch (BatchNorm recalibration)
        val = _batches(loader.batches("val"))
        second = _batches(loader.batches("train", 2, train=True))
        test = _batches(loader.batches("test"))
        processes = loader.loader._iterator._workers
        assert [w.pid for w in processes] == workers and all(w.is_alive() for w in processes)
    assert not any(w.is_alive() for w in processes)  # closed with the run

    assert _same_batches(first, one_pass("train", 1, train=True))
    assert _same_batches(second, one_pass("train", 2, train=True))
    assert _same_batches(val, one_pass("val")) and _same_batches(test, one_pass("test"))
    assert [n for names, *_ in first for n in names] != [n for names, *_ in second for n in names]
    assert sum(len(names) for names, *_ in test) == m["splits"]["test"]["images"]
    assert all(len(names) == 16 for names, *_ in first)  # each worker drops its last partial batch


def test_batches_are_the_collation_of_the_sample_stream_in_this_process(prepared):
    store, m = prepared
    stream = _stream(store, m, "train", seed=5, epoch=0, shuffle=True, augment=AugmentConfig(), buffer_size=50)
    built = list(batched(stream.arrays(), 16, drop_last=False))
    assert _same_batches(_batches(built), _batches(make_loader(stream, 16)))
    assert [len(names) for _, _, names, _ in built][-1] == (m["splits"]["train"]["images"] % 16 or 16)
    # Each image comes with its patient (the synthetic set names images <patient:08d>_<follow-up>.png, as NIH).
    pairs = [(n, p) for _, _, names, patients in built for n, p in zip(names, patients)]
    assert all(isinstance(p, int) and p == int(n[:8]) for n, p in pairs) and len({p for _, p in pairs}) > 1


@pytest.mark.parametrize("shape", [(300, 257), (224, 224), (61, 97)])
def test_the_exposure_table_gives_each_pixel_the_float32_formulas_value(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(40):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        gain, shift = rng.uniform(0.5, 1.5), rng.uniform(-80, 80)
        mean = float(img.mean())
        expected = np.clip((img.astype(np.float32) - mean) * gain + mean + shift, 0, 255).astype(np.uint8)
        assert np.array_equal(exposure(img, gain, shift), expected)
