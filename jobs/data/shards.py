"""Tar shards in WebDataset's layout: one ``<key>.<ext>`` member per field, grouped by key.

Each sample is ``<image stem>.png`` (or ``.npy``: raw uint8, fastest to decode, largest) and
``<image stem>.json`` (``{"image", "patient", "labels"}``). PNGs are written with every row unfiltered
(:data:`PNG_PARAMS`) so that reading one is a single inflate (:func:`decode_pixels`, ISA-L's):
0.18 ms for a 256 px CLAHE image where libpng takes 0.50 ms on an adaptively filtered one, for shards
about a third larger (53 against 40 KiB an image); any other PNG is still read, by OpenCV.
Members carry fixed metadata (mtime 0, uid 0) so the same inputs give byte-identical shards. A shard
is built in memory (``tarfile``) and written as one object, and it is read back as a stream, member
by member, by a USTAR reader of its own (:func:`_members`, a fifth of ``tarfile``'s cost), checked
against its manifest entry (see :func:`read_shard`).
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import cv2
import numpy as np

from jobs.errors import DamagedArtifact, DatasetError

try:  # ISA-L inflates 1.7x faster than zlib: a third of the time a training image costs to read
    from isal.isal_zlib import decompressobj as _inflater
    from isal.isal_zlib import error as _InflateError
except ImportError:  # pragma: no cover - the train extra installs isal
    from zlib import decompressobj as _inflater
    from zlib import error as _InflateError


@dataclass
class Sample:
    image: str
    patient: int
    labels: tuple[int, ...]
    pixels: np.ndarray  # uint8, H x W


# Every row unfiltered (PNG filter type 0), fastest zlib level: what decode_pixels inflates without libpng.
PNG_PARAMS = [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE, cv2.IMWRITE_PNG_COMPRESSION, 1]
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode_pixels(pixels: np.ndarray, encoding: str) -> bytes:
    if encoding == "png":
        ok, buf = cv2.imencode(".png", pixels, PNG_PARAMS)
        if not ok:
            raise DatasetError(f"could not encode a {pixels.shape} {pixels.dtype} image as PNG")
        return buf.tobytes()
    out = io.BytesIO()
    np.save(out, pixels, allow_pickle=False)
    return out.getvalue()


def decode_pixels(data: bytes, encoding: str) -> np.ndarray | None:
    """The uint8 H x W pixels of one member (None when a PNG cannot be read); may be a read-only view."""
    if encoding == "png":
        unfiltered = _unfiltered_png(data)
        if unfiltered is not None:
            return unfiltered
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    return np.load(io.BytesIO(data), allow_pickle=False)


def _unfiltered_png(data: bytes) -> np.ndarray | None:
    """The pixels of an 8-bit grayscale, non-interlaced PNG whose rows are all unfiltered (what
    :func:`encode_pixels` writes), from its inflated IDAT data; None for any other PNG. Chunk CRCs are
    not checked: the shard's sha256 already covers every byte."""
    if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 33:
        return None
    width, height, depth, color, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    if depth != 8 or color != 0 or interlace != 0 or not width or not height:
        return None
    parts, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IDAT":
            parts.append(data[pos + 8 : pos + 8 + length])
        elif kind == b"IEND":
            break
        pos += 12 + length
    expected = height * (width + 1)
    try:  # never more than one byte past what the header promises, whatever the data says
        raw = _inflater().decompress(b"".join(parts), expected + 1)
    except _InflateError:
        return None
    if len(raw) != expected:
        return None
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, width + 1)
    return None if rows[:, 0].any() else rows[:, 1:]


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


class _Counted(io.RawIOBase):
    """A read-only raw stream that hashes and counts the bytes read through it (read through a
    buffer: :func:`read_shard` takes 64 KiB from the store at a time, whatever the tar's blocks).

    ``error`` keeps an exception of the underlying stream (S3 timed out): that is the store failing,
    which another attempt may get past, not the shard being damaged.
    """

    def __init__(self, stream: BinaryIO):
        super().__init__()
        self.stream, self.sha256, self.size, self.error = stream, hashlib.sha256(), 0, None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self.stream.read(len(buffer))
        except Exception as exc:
            self.error = exc
            raise
        buffer[: len(data)] = data
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


_BLOCK = 512


def _exactly(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise ValueError("unexpected end of data")
    return data


def _members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of each member of a USTAR stream, in order, without seeking: the tars
    :func:`build_shard` writes (regular files, short names). It stops at the end-of-archive block
    (or the end of the stream at a block boundary); a header whose checksum is wrong, a member that
    is not a regular file, or data cut short raises ValueError. A fifth of the cost of ``tarfile``."""
    while True:
        header = stream.read(_BLOCK)
        if not header or header == bytes(_BLOCK):
            return
        if len(header) != _BLOCK:
            raise ValueError("unexpected end of data")
        try:
            checksum, size = int(header[148:156].strip(b" \0"), 8), int(header[124:136].strip(b" \0") or b"0", 8)
        except ValueError:
            raise ValueError("a tar header's checksum or size is not a number") from None
        if checksum != sum(header) - sum(header[148:156]) + 8 * 32:  # the checksum field counts as spaces
            raise ValueError("a tar header's checksum does not match")
        if header[156:157] not in (b"0", b"\0"):
            raise ValueError(f"a tar member of type {header[156:157]!r}, not a file")
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        data = _exactly(stream, size)
        _exactly(stream, -size % _BLOCK)
        yield name, data


def damaged(where: str, detail: str) -> DamagedArtifact:
    """The one-line error of a shard that is not what its manifest entry records."""
    return DamagedArtifact(
        f"shard {where} is damaged ({detail}): run `cxrstudy prepare` again for this dataset, which rebuilds "
        "damaged shards, then resume the study"
    )


def _parse(stream: BinaryIO, encoding: str, drain: bool) -> Iterator[Sample]:
    """The samples of a tar stream, in order; any malformed member or tar block raises."""
    pending: dict[str, dict[str, bytes]] = {}
    for name, data in _members(stream):
        stem, _, ext = name.partition(".")
        pending.setdefault(stem, {})[ext] = data
        fields = pending[stem]
        if encoding in fields and "json" in fields:
            del pending[stem]
            meta = json.loads(fields["json"])
            pixels = decode_pixels(fields[encoding], encoding)
            if pixels is None or pixels.ndim != 2:
                raise ValueError(f"{stem}.{encoding} is not a readable image")
            yield Sample(meta["image"], int(meta["patient"]), tuple(meta["labels"]), pixels)
    if pending:
        raise ValueError(f"{len(pending)} incomplete sample(s), e.g. {next(iter(pending))}")
    if drain:  # the tar's trailing zero blocks, and anything appended after it
        while stream.read(1 << 16):
            pass


def read_shard(stream: BinaryIO, encoding: str, where: str, expected: dict) -> Iterator[Sample]:
    """Samples of a shard, read from a stream without seeking (S3 bodies included), checked as they come.

    ``expected`` is the shard's manifest entry: its bytes are hashed and its samples counted while
    they stream, and the last sample is held back until the count, size and sha256 (what the entry
    records) match, so a damaged shard raises :class:`DamagedArtifact` naming ``where`` before it is
    read whole; a tar that stops parsing raises the same, never a short shard in silence.
    """
    counted, n = _Counted(stream), expected["count"]
    samples = _parse(io.BufferedReader(counted, 1 << 16), encoding, drain="size" in expected)
    count, held = 0, None
    while True:
        try:
            sample = next(samples, None)
        except Exception as exc:
            if counted.error is not None:
                raise
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise damaged(where, f"{count} of {n} samples read, then {reason}") from None
        if sample is None:
            break
        if held is not None:
            yield held
        held, count = sample, count + 1
    problems = [f"{count} of {n} samples"]
    if "size" in expected and counted.size != expected["size"]:
        problems.append(f"{counted.size:,} of {expected['size']:,} bytes")
    if "sha256" in expected and counted.sha256.hexdigest() != expected["sha256"]:
        problems.append("sha256 mismatch")
    if count != n or len(problems) > 1:
        raise damaged(where, ", ".join(problems))
    if held is not None:
        yield held
