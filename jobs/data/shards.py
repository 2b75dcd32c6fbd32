"""Tar shards in WebDataset's layout: one ``<key>.<ext>`` member per field, grouped by key.

Each sample is ``<image stem>.png`` (or ``.npy``: raw uint8, 10x faster to decode, larger) and
``<image stem>.json`` (``{"image", "patient", "labels"}``). Members carry fixed metadata (mtime 0,
uid 0) so the same inputs give byte-identical shards. A shard is built in memory and written as one
object, and it is read back as a stream, member by member.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import cv2
import numpy as np

from jobs.errors import DatasetError


@dataclass
class Sample:
    image: str
    patient: int
    labels: tuple[int, ...]
    pixels: np.ndarray  # uint8, H x W


def encode_pixels(pixels: np.ndarray, encoding: str) -> bytes:
    if encoding == "png":
        ok, buf = cv2.imencode(".png", pixels)
        if not ok:
            raise DatasetError(f"could not encode a {pixels.shape} {pixels.dtype} image as PNG")
        return buf.tobytes()
    out = io.BytesIO()
    np.save(out, pixels, allow_pickle=False)
    return out.getvalue()


def decode_pixels(data: bytes, encoding: str) -> np.ndarray:
    if encoding == "png":
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    return np.load(io.BytesIO(data), allow_pickle=False)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def build_shard(samples: list[tuple[dict, bytes]], encoding: str) -> bytes:
    """The bytes of one tar shard: ``(meta, encoded pixels)`` pairs, in order.

    ``meta`` is ``{"image", "patient", "labels"}``; the pixels are already encoded (in the prepare
    workers) with :func:`encode_pixels`.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for meta, payload in samples:
            stem = meta["image"].rsplit(".", 1)[0]
            _add(tar, f"{stem}.{encoding}", payload)
            _add(tar, f"{stem}.json", json.dumps(meta, separators=(",", ":")).encode())
    return buf.getvalue()


def read_shard(stream: BinaryIO, encoding: str, where: str) -> Iterator[Sample]:
    """Samples of a shard, read from a stream without seeking (S3 bodies included)."""
    pending: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                stem, _, ext = member.name.partition(".")
                pending.setdefault(stem, {})[ext] = tar.extractfile(member).read()
                fields = pending[stem]
                if encoding in fields and "json" in fields:
                    del pending[stem]
                    meta = json.loads(fields["json"])
                    yield Sample(
                        meta["image"], meta["patient"], tuple(meta["labels"]), decode_pixels(fields[encoding], encoding)
                    )
    except tarfile.TarError as exc:
        raise DatasetError(
            f"{where}: damaged shard ({exc}); delete the dataset's prep folder and re-run prepare"
        ) from None
    if pending:
        raise DatasetError(f"{where}: {len(pending)} incomplete sample(s), e.g. {next(iter(pending))}")
