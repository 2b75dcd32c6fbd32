"""Stream prepared shards from the store into training batches.

Shards are read as streams (an S3 object is never downloaded whole first), decoded, augmented and
batched. Everything random is fixed by ``(seed, epoch)``: the shard order, the shuffle buffer and
each augmentation. A run resumed at epoch k therefore sees exactly the batches it would have seen
without the interruption. With DataLoader workers, shards are dealt out round-robin and each
worker draws from its own generator, so the order is still a function of the seed alone.

A run reads through one :class:`RunLoader`: its worker processes start once, at the run's first
batch, and then serve every pass (each epoch's training, BatchNorm recalibration, validation, test).
Which split, epoch and mode a pass reads is told to the workers through shared memory before the
pass starts (:class:`SplitBatches`); workers batch their own samples, so a batch crosses the process
boundary as three objects, not ``batch_size`` of each.

Each shard is checked against its manifest entry as it streams (:func:`jobs.data.shards.read_shard`):
a damaged one raises :class:`jobs.errors.DamagedArtifact` before the split is read whole, and
the run's loader (:class:`RunLoader`, as :func:`make_loader`'s) re-raises it from a worker process
with its one-line message.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from jobs.data.nih import SPLITS
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
        out = cv2.flip(out, 1)
    gain = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    return exposure(out, gain, rng.uniform(-cfg.brightness, cfg.brightness) * 255)


def exposure(img: np.ndarray, gain: float, shift: float) -> np.ndarray:
    """Contrast ``gain`` around the image's mean, then ``shift`` grey levels, clipped to uint8:
    ``clip((img - mean) * gain + mean + shift)`` in float32, applied per grey level as a lookup
    table (each pixel gets the value the formula gives it, at a fifth of the cost)."""
    mean = cv2.sumElems(img)[0] / img.size  # img.mean() exactly (an exact sum over the count), 10x faster
    table = np.clip((np.arange(256, dtype=np.float32) - mean) * gain + mean + shift, 0, 255).astype(np.uint8)
    return cv2.LUT(img, table)


class ShardStream(IterableDataset):
    """``(image uint8 [1,H,W], labels float32 [14], image name, patient id)`` from a split's shards.

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

    def arrays(self) -> Iterator[tuple[np.ndarray, tuple[int, ...], str, int]]:
        """``(pixels uint8 [H,W], labels, image name, patient id)`` of this process's share of the shards, in order."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = np.random.default_rng([self.seed, self.epoch, worker])
        samples = self._samples(worker, workers)
        if self.shuffle:
            samples = _shuffled(samples, rng, self.buffer_size)
        augmenting = self.augment is not None and self.augment.enabled
        for s in samples:
            yield (augment(s.pixels, rng, self.augment) if augmenting else s.pixels), s.labels, s.image, s.patient

    def __iter__(self):
        for pixels, labels, image, patient in self.arrays():
            yield (
                torch.from_numpy(np.ascontiguousarray(pixels))[None],
                torch.tensor(labels, dtype=torch.float32),
                image,
                patient,
            )


def batched(samples: Iterable, batch_size: int, drop_last: bool) -> Iterator:
    """``(images uint8 [B,1,H,W], labels float32 [B,14], names, patients)`` from :meth:`ShardStream.arrays`:
    the batches DataLoader's collation makes of that stream's tensors (patients as a list of ints), built
    with one copy per batch."""
    pixels, labels, names, patients = [], [], [], []
    for p, y, name, patient in samples:
        pixels.append(p)
        labels.append(y)
        names.append(name)
        patients.append(patient)
        if len(names) == batch_size:
            yield _collated(pixels, labels, names, patients)
            pixels, labels, names, patients = [], [], [], []
    if names and not drop_last:
        yield _collated(pixels, labels, names, patients)


def _collated(pixels: list, labels: list, names: list, patients: list) -> tuple:
    shape = (len(pixels), 1, *pixels[0].shape)
    if get_worker_info() is None:
        images = torch.from_numpy(np.stack(pixels).reshape(shape))
    else:  # stacked straight into shared memory, which the queue then hands over without a copy
        images = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(math.prod(shape))).view(shape)
        np.stack(pixels, out=images.numpy()[:, 0])
    return images, torch.from_numpy(np.asarray(labels, dtype=np.float32)), names, patients


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


class SplitBatches(IterableDataset):
    """The batches of one pass over a split: whichever pass :meth:`set_pass` named last.

    The pass (split, epoch, train) lives in a shared-memory tensor, so worker processes started once
    read the pass the run asks for next. Training passes shuffle, augment and drop the last partial
    batch of each worker (as DataLoader's ``drop_last`` does); evaluation passes read in shard order.

    Args:
        store_uri, prefix, encoding: as :class:`ShardStream`.
        splits: each split's shard entries from the manifest.
        seed: the run's seed (with the epoch, it fixes order and augmentation).
        batch_size: images per batch.
        augment: the training passes' augmentation (None: none).
        buffer_size: the training passes' shuffle buffer.
    """

    def __init__(
        self,
        store_uri: str,
        prefix: str,
        splits: dict[str, list[dict]],
        encoding: str,
        *,
        seed: int,
        batch_size: int,
        augment: AugmentConfig | None = None,
        buffer_size: int = 1000,
    ):
        self.store_uri, self.prefix, self.splits, self.encoding = store_uri, prefix, splits, encoding
        self.seed, self.batch_size, self.augment, self.buffer_size = seed, batch_size, augment, buffer_size
        # split index, epoch, train, generation (counts passes: a worker still serving an older one stops)
        self._pass = torch.zeros(4, dtype=torch.int64).share_memory_()

    def set_pass(self, split: str, epoch: int = 0, train: bool = False) -> None:
        generation = int(self._pass[3]) + 1
        self._pass.copy_(torch.tensor([SPLITS.index(split), epoch, int(train), generation]))

    def stream(self) -> ShardStream:
        """The sample stream of the pass set last."""
        split, epoch, train, _ = self._pass.tolist()
        return ShardStream(
            self.store_uri,
            self.prefix,
            self.splits[SPLITS[split]],
            self.encoding,
            seed=self.seed,
            epoch=epoch,
            shuffle=bool(train),
            augment=self.augment if train else None,
            buffer_size=self.buffer_size,
        )

    def __iter__(self):
        if get_worker_info() is not None:
            cv2.setNumThreads(1)  # a worker is one core of the pipeline; OpenCV's threads would oversubscribe
        generation = int(self._pass[3])
        stream = self.stream()
        for batch in batched(stream.arrays(), self.batch_size, drop_last=stream.shuffle):
            if int(self._pass[3]) != generation:
                return  # the run moved on (a pass left unfinished): stop filling the prefetch queue with it
            yield batch


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


class RunLoader:
    """One run's batches, every pass through the same worker processes (started at the first batch).

    ``batches(split, epoch, train)`` starts a pass; a pass left unfinished (BatchNorm recalibration
    reads a few batches) is dropped when the next one starts. :meth:`close` stops the workers.

    Args:
        dataset: what the passes read.
        num_workers: worker processes (0: in this process).
        pin_memory: page-locked batches, for asynchronous copies to a GPU.
        prefetch: batches each worker keeps ready.
    """

    def __init__(self, dataset: SplitBatches, num_workers: int = 0, pin_memory: bool = False, prefetch: int = 4):
        self.dataset = dataset
        self.loader = _Loader(
            dataset,
            batch_size=None,  # the dataset batches
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
            prefetch_factor=prefetch if num_workers else None,
            multiprocessing_context="spawn" if num_workers else None,
            generator=_unused_generator(),
        )

    def batches(self, split: str, epoch: int = 0, train: bool = False) -> Iterator:
        self.dataset.set_pass(split, epoch, train)
        return iter(self.loader)

    def close(self) -> None:
        iterator, self.loader._iterator = getattr(self.loader, "_iterator", None), None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    def __enter__(self) -> RunLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_loader(
    stream: ShardStream, batch_size: int, num_workers: int = 0, drop_last: bool = False, pin_memory: bool = False
) -> DataLoader:
    """A one-pass DataLoader over ``stream`` (tests and benches; a run uses :class:`RunLoader`)."""
    return _Loader(
        stream,
        batch_size=batch_size,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        multiprocessing_context="spawn" if num_workers else None,
        generator=_unused_generator(),
    )


def _unused_generator() -> torch.Generator:
    """A generator of the loader's own for the seed each new DataLoader iterator draws (which only
    torch's per-worker seeding uses; the streams draw from ``(seed, epoch, worker)``). Drawn from the
    global one, it would shift the model's dropout by one draw per new iterator: a persistent loader
    draws once a run, a one-pass loader once a pass, a resumed run once more than an uninterrupted one."""
    return torch.Generator().manual_seed(0)
