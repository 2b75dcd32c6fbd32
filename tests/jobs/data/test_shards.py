"""Shard members: pixels encoded and decoded exactly, an encoder failure is an error, not empty bytes,
and a damaged shard (cut short, a byte flipped) raises DamagedArtifact naming it, never a short read."""

import io
import random

import cv2
import numpy as np
import pytest

from jobs.data import shards
from jobs.data.manifest import shard_entry
from jobs.errors import DamagedArtifact, DatasetError

WHERE = "/store/datasets/nih/0123456789abcdef/shards/test-000000.tar"
REMEDY = "run `cxrstudy prepare` again for this dataset, which rebuilds damaged shards, then resume the study"


@pytest.mark.parametrize("encoding", ["png", "npy"])
def test_pixels_round_trip_exactly(encoding):
    pixels = np.random.default_rng(0).integers(0, 256, size=(17, 23), dtype=np.uint8)
    assert np.array_equal(shards.decode_pixels(shards.encode_pixels(pixels, encoding), encoding), pixels)


def test_png_members_are_unfiltered_and_read_without_libpng_and_other_pngs_still_read(monkeypatch):
    pixels = np.random.default_rng(1).integers(0, 256, size=(19, 31), dtype=np.uint8)
    data = shards.encode_pixels(pixels, "png")
    assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE), pixels)  # a valid PNG
    assert np.array_equal(shards._unfiltered_png(data), pixels)  # every row has filter type 0
    smooth = np.add.outer(np.arange(19), np.arange(31)).astype(np.uint8)
    others = {
        "adaptive filters": cv2.imencode(".png", smooth)[1].tobytes(),
        "16-bit": cv2.imencode(".png", smooth.astype(np.uint16) * 257)[1].tobytes(),
        "colour": cv2.imencode(".png", np.dstack([smooth] * 3))[1].tobytes(),
    }
    assert shards._unfiltered_png(others["adaptive filters"]) is None
    for name, other in others.items():
        expected = cv2.imdecode(np.frombuffer(other, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(shards.decode_pixels(other, "png"), expected), name
    assert shards.decode_pixels(b"not a png", "png") is None
    # A header that promises fewer pixels than the data inflates to, or none at all: not read by the fast path.
    small = bytearray(data)
    small[16:24] = (3).to_bytes(4, "big") + (2).to_bytes(4, "big")
    empty = bytearray(data)
    empty[16:20] = (0).to_bytes(4, "big")
    assert shards._unfiltered_png(bytes(small)) is None and shards._unfiltered_png(bytes(empty)) is None


def test_a_failed_png_encoding_raises(monkeypatch):
    monkeypatch.setattr(cv2, "imencode", lambda ext, img, params=None: (False, np.zeros(0, np.uint8)))
    with pytest.raises(DatasetError, match=r"could not encode a \(4, 4\) uint8 image as PNG"):
        shards.encode_pixels(np.zeros((4, 4), np.uint8), "png")


def _tiny_shard(encoding: str):
    """Four 6x6 samples: every member fits one 512-byte block, so a sample is 2,048 bytes of tar."""
    rng = np.random.default_rng(0)
    samples = [
        (
            {"image": f"{i:08d}_000.png", "patient": i, "labels": rng.integers(0, 2, 14).tolist()},
            rng.integers(0, 256, (6, 6), dtype=np.uint8),
        )
        for i in range(4)
    ]
    data = shards.build_shard([(meta, shards.encode_pixels(px, encoding)) for meta, px in samples], encoding)
    return samples, data, shard_entry("test-000000.tar", 4, data)


def _read(data: bytes, encoding: str, entry: dict) -> tuple[list, str | None]:
    """The samples a read yielded, and the DamagedArtifact's message (None when it read to the end)."""
    got = []
    try:
        for sample in shards.read_shard(io.BytesIO(data), encoding, WHERE, entry):
            got.append(sample)
    except DamagedArtifact as exc:
        return got, str(exc)
    return got, None


def _same(got, samples) -> bool:
    return [(s.image, s.patient, list(s.labels)) for s in got] == [
        (m["image"], m["patient"], m["labels"]) for m, _ in samples
    ] and all(np.array_equal(s.pixels, px) for s, (_, px) in zip(got, samples))


@pytest.mark.parametrize("encoding", ["png", "npy"])
def test_a_cut_or_flipped_shard_raises_damaged_and_an_intact_one_reads_whole(encoding):
    samples, data, entry = _tiny_shard(encoding)
    got, error = _read(data, encoding, entry)
    assert error is None and _same(got, samples)
    rng = random.Random(20171)
    cuts = rng.sample(range(len(data)), 250)
    flips = [(pos, 1 << rng.randrange(8)) for pos in rng.sample(range(len(data)), 100)]
    damaged = [data[:cut] for cut in cuts] + [data[:p] + bytes([data[p] ^ bit]) + data[p + 1 :] for p, bit in flips]
    for bad in damaged:
        got, error = _read(bad, encoding, entry)
        assert error is not None, f"{len(bad)} bytes read without an error"
        assert error.startswith(f"shard {WHERE} is damaged (") and error.endswith(f"): {REMEDY}"), error
        assert "\n" not in error
        assert len(got) < len(samples)  # the last sample waits for the count, size and sha256
    for cut in cuts:  # a cut shard yields a true prefix of its samples before the error
        got, _ = _read(data[:cut], encoding, entry)
        assert _same(got, samples[: len(got)])


def test_a_shard_cut_between_samples_says_how_much_was_read():
    # tarfile takes an empty block after a whole member for the end of the archive: a silent short read
    _, data, entry = _tiny_shard("png")
    got, error = _read(data[:4096], "png", entry)
    assert [s.image for s in got] == ["00000000_000.png"]
    assert error == f"shard {WHERE} is damaged (2 of 4 samples, 4,096 of 10,240 bytes, sha256 mismatch): {REMEDY}"


def test_a_tar_that_stops_parsing_raises_damaged_not_a_tarfile_error():
    _, data, entry = _tiny_shard("png")
    got, error = _read(data[:3000], "png", entry)
    assert len(got) == 0
    assert error == f"shard {WHERE} is damaged (1 of 4 samples read, then unexpected end of data): {REMEDY}"


def test_a_manifest_entry_without_size_and_digest_still_counts_samples():
    _, data, entry = _tiny_shard("png")
    old = {"name": entry["name"], "count": 4}  # cxrstudy-shards/1
    assert len(_read(data, "png", old)[0]) == 4
    assert _read(data[:4096], "png", old)[1] == f"shard {WHERE} is damaged (2 of 4 samples): {REMEDY}"


class _Dropping(io.BytesIO):
    """A store body that hands out 1 KiB at a time and drops the connection after 4 KiB."""

    def read(self, n=-1):
        if self.tell() >= 4096:
            raise ConnectionResetError("connection reset by peer")
        return super().read(1024 if n < 0 else min(n, 1024))


def test_a_failing_store_read_is_not_a_damaged_shard():
    _, data, entry = _tiny_shard("png")
    with pytest.raises(ConnectionResetError, match="connection reset by peer"):
        list(shards.read_shard(_Dropping(data), "png", WHERE, entry))
