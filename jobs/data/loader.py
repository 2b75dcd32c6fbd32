"""Stream prepared shards from the store into training batches.

Shards are read as streams (an S3 object is never downloaded whole first), decoded, augmented and
batched. Everything random is fixed by ``(seed, epoch)``: the shard order, the shuffle buffer and
each augmentation. A run resumed at epoch k therefore sees exactly the batches it would have seen
without the interruption. With DataLoader workers, shards are dealt out round-robin and each
worker draws from its own generator, so the order is still a function of the seed alone.

Each shard is checked against its manifest entry as it streams (:func:`jobs.data.shards.read_shard`):
a damaged one raises :class:`jobs.errors.DamagedArtifact` before the split is read whole, and
:func:`make_loader`'s DataLoader re-raises it from a worker process with its one-line message.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from jobs.data.shards import read_shard
from jobs.errors import CxrStudyError
from jobs.spec.configs import AugmentConfig
from jobs.store import layout, open_store


def augment(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """One random affine warp plus exposure change of a uint8 image, drawn from ``rng``."""
    h, w = img.shape
    angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)
    scale = rng.uniform(cfg.scale_min, cfg.scale_max)
    tx, ty = rng.uniform(-cfg.translate, cfg.translate, size=2) * (w, h)
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    matrix[:, 2] += (tx, ty)
    out = cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if cfg.hflip and rng.random() < 0.5:
        out = out[:, ::-1]
    gain = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    shift = rng.uniform(-cfg.brightness, cfg.brightness) * 255
    mean = float(out.mean())
    return np.clip((out.astype(np.float32) - mean) * gain + mean + shift, 0, 255).astype(np.uint8)


class ShardStream(IterableDataset):
    """``(image uint8 [1,H,W], labels float32 [14], image name)`` from a split's shards.

    Args:
        store_uri: the store holding the shards (a URI, so each worker opens its own client).
        prefix: the prepared dataset's prefix (``datasets/<id>/<hash>``).
        shards: the split's shard entries from the manifest (``{name, count, size, sha256}``).
        encoding: the manifest's pixel encoding.
        seed, epoch: fix the order and the augmentation.
        shuffle: shuffle shard order and samples (through a buffer of ``buffer_size``).
        augment: augmentation settings, or None for evaluation.
    """

    def __init__(
        self,
        store_uri: str,
        prefix: str,
        shards: list[dict],
        encoding: str,
        *,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = False,
        augment: AugmentConfig | None = None,
        buffer_size: int = 1000,
    ):
        self.store_uri, self.prefix, self.shards, self.encoding = store_uri, prefix, shards, encoding
        self.seed, self.epoch, self.shuffle, self.augment, self.buffer_size = seed, epoch, shuffle, augment, buffer_size

    def _samples(self, worker: int, workers: int) -> Iterator:
        store = open_store(self.store_uri)
        shards = list(self.shards)
        if self.shuffle:
            shards = [shards[i] for i in np.random.default_rng([self.seed, self.epoch]).permutation(len(shards))]
        for entry in shards[worker::workers]:
            key = layout.shard_key(self.prefix, entry["name"])
            with store.open(key) as stream:
                yield from read_shard(stream, self.encoding, store.url(key), entry)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = np.random.default_rng([self.seed, self.epoch, worker])
        samples = self._samples(worker, workers)
        if self.shuffle:
            samples = _shuffled(samples, rng, self.buffer_size)
        for s in samples:
            pixels = augment(s.pixels, rng, self.augment) if self.augment and self.augment.enabled else s.pixels
            yield (
                torch.from_numpy(np.ascontiguousarray(pixels))[None],
                torch.tensor(s.labels, dtype=torch.float32),
                s.image,
            )


def _shuffled(items: Iterator, rng: np.random.Generator, size: int) -> Iterator:
    """A shuffle buffer: fill to ``size``, then emit a random element for each new one."""
    buffer = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            i = int(rng.integers(len(buffer)))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    for i in rng.permutation(len(buffer)):
        yield buffer[i]


class _Loader(DataLoader):
    """A DataLoader whose own errors (a damaged shard, a missing key) keep their one-line message.

    From a worker process, DataLoader re-raises an exception as the same type around a message of
    ``Caught X in DataLoader worker process N.`` plus the worker's traceback; this restores the
    original message, the traceback's last line.
    """

    def __iter__(self):
        try:
            yield from super().__iter__()
        except CxrStudyError as exc:
            raise _unwrapped(exc) from None


def _unwrapped(exc: CxrStudyError) -> CxrStudyError:
    kind = type(exc)
    marker = f"{kind.__module__}.{kind.__qualname__}: "
    text = str(exc)
    if not text.startswith("Caught ") or marker not in text:
        return exc
    return kind(text.rsplit(marker, 1)[1].strip())


def make_loader(
    stream: ShardStream, batch_size: int, num_workers: int = 0, drop_last: bool = False, pin_memory: bool = False
) -> DataLoader:
    return _Loader(
        stream,
        batch_size=batch_size,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=False,
        multiprocessing_context="spawn" if num_workers else None,
    )
