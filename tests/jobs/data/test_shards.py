"""Shard members: pixels encoded and decoded exactly, and an encoder failure is an error, not empty bytes."""

import cv2
import numpy as np
import pytest

from jobs.data import shards
from jobs.errors import DatasetError


@pytest.mark.parametrize("encoding", ["png", "npy"])
def test_pixels_round_trip_exactly(encoding):
    pixels = np.random.default_rng(0).integers(0, 256, size=(17, 23), dtype=np.uint8)
    assert np.array_equal(shards.decode_pixels(shards.encode_pixels(pixels, encoding), encoding), pixels)


def test_a_failed_png_encoding_raises(monkeypatch):
    monkeypatch.setattr(cv2, "imencode", lambda ext, img: (False, np.zeros(0, np.uint8)))
    with pytest.raises(DatasetError, match=r"could not encode a \(4, 4\) uint8 image as PNG"):
        shards.encode_pixels(np.zeros((4, 4), np.uint8), "png")
