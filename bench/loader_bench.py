"""Benchmark: the data path, per core, from the naive per-epoch path to the run's loader.

On the real NIH images of ``--dataset`` (default: the 130-image sample beside the repository),
side by side in one process with OpenCV and torch on one thread each:

- **naive**: what a loader without prepared shards does each epoch: read the 1024 px PNG, decode,
  CLAHE at native resolution, INTER_AREA resize to ``--image-size``;
- **decode only**, per member: the PNG as prepare wrote it before format 3 (adaptive filters, read by
  libpng) against format 3 (unfiltered rows, one inflate by ISA-L), and ``.npy``;
- **eval stream** (read, check, decode) and **train stream** (plus shuffle buffer and augmentation)
  over the shards, for ``png`` and ``npy`` shards;
- **the run's loader** (:class:`jobs.data.loader.RunLoader`, training passes of batch ``--batch``)
  with 0..N worker processes; its worker start-up (to the first batch of the first pass) is timed
  apart, since a run pays it once.

Each path repeats whole passes for ``--seconds``, in three windows; a rate is images per second in
the best window. "Per core" divides by the worker processes (the main process, which collects their
batches, is not counted, so on a machine with fewer cores than workers + 1 the figure drops). The
figures are appended to bench/results.md.

    .venv/bin/python bench/loader_bench.py
    .venv/bin/python bench/loader_bench.py --workers 0,1,2,4 --seconds 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import append_results  # noqa: E402
from jobs.data.clahe import decode_gray, preprocess  # noqa: E402
from jobs.data.loader import RunLoader, ShardStream, SplitBatches  # noqa: E402
from jobs.data.nih import SPLITS, read_nih  # noqa: E402
from jobs.data.sharding import prepare  # noqa: E402
from jobs.data.shards import decode_pixels, encode_pixels  # noqa: E402
from jobs.spec.configs import AugmentConfig, PrepConfig  # noqa: E402
from jobs.store import LocalStore, open_store  # noqa: E402

DEFAULT_DATASET = ROOT.parent / "shared" / "data" / "nih-sample"


def rate(one_pass: Callable[[], int], seconds: float, windows: int = 3) -> float:
    """Images per second: the best of ``windows`` windows, each of whole passes (a pass returns its
    image count) lasting at least ``seconds / windows``; the best, since this machine's noise only slows."""
    best = 0.0
    for _ in range(windows):
        images, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / windows:
            images += one_pass()
        best = max(best, images / elapsed)
    return best


def naive_pass(source, records, size: int) -> Callable[[], int]:
    def one() -> int:
        for r in records:
            preprocess(decode_gray(source.get_bytes(r.key), r.key), size)
        return len(records)

    return one


def decode_pass(payloads: list[bytes], decode: Callable[[bytes], np.ndarray]) -> Callable[[], int]:
    def one() -> int:
        for data in payloads:
            decode(data)
        return len(payloads)

    return one


def stream_pass(stream: ShardStream) -> Callable[[], int]:
    def one() -> int:
        stream.epoch += 1  # a new order and new augmentations each pass, as epochs have
        return sum(1 for _ in stream.arrays())

    return one


def loader_pass(loader: RunLoader) -> Callable[[], int]:
    epoch = [0]

    def one() -> int:
        epoch[0] += 1
        return sum(len(names) for _, _, names in loader.batches("train", epoch[0], train=True))

    return one


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default=str(DEFAULT_DATASET), help="an NIH-format folder (default: the sample)")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--shard-size", type=int, default=16, help="small, so that several workers have shards")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", default="0,1,2", help="DataLoader worker counts to measure")
    ap.add_argument("--seconds", type=float, default=6.0, help="minimum time per path")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to bench/results.md")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    workers = [int(w) for w in args.workers.split(",")]

    source = open_store(args.dataset)
    dataset = read_nih(source, val_fraction=0.2)
    records = [r for split in SPLITS for r in dataset.splits[split]]
    size, rows = args.image_size, []
    print(f"{len(records)} images from {args.dataset}, at {size} px; each path runs >= {args.seconds:.0f} s")
    naive = rate(naive_pass(source, records, size), args.seconds)

    def row(path: str, images_per_s: float, cores: int = 1) -> None:
        per_core = images_per_s / cores
        rows.append((path, images_per_s, per_core, per_core / naive))
        print(f"  {path:58s} {images_per_s:8,.0f} img/s  {per_core:7,.0f}/core  {per_core / naive:5.1f}x")

    row("naive: decode 1024 px PNG + CLAHE + resize", naive)
    pixels = [preprocess(decode_gray(source.get_bytes(r.key), r.key), size) for r in records]
    libpng = [cv2.imencode(".png", p)[1].tobytes() for p in pixels]  # what prepare wrote before format 3
    row("decode only: png, adaptive filters, libpng (format 2)", rate(decode_pass(libpng, _imdecode), args.seconds))
    for encoding in ("png", "npy"):
        payloads = [encode_pixels(p, encoding) for p in pixels]
        label = f"decode only: {encoding}" + (", unfiltered, one inflate (format 3)" if encoding == "png" else "")
        row(label, rate(decode_pass(payloads, lambda d, e=encoding: decode_pixels(d, e)), args.seconds))

    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(tmp)
        for encoding in ("png", "npy"):
            config = PrepConfig(image_size=size, shard_size=args.shard_size, val_fraction=0.2, encoding=encoding)
            m = prepare(args.dataset, store, config, workers=1, log=lambda s: None)
            shards = [entry for split in SPLITS for entry in m["splits"][split]["shards"]]  # every image
            plain = ShardStream(store.uri, m["prefix"], shards, encoding)
            row(f"{encoding} shards, eval stream (read, check, decode)", rate(stream_pass(plain), args.seconds))
            train = ShardStream(store.uri, m["prefix"], shards, encoding, shuffle=True, augment=AugmentConfig())
            row(f"{encoding} shards, train stream (+ shuffle, augment)", rate(stream_pass(train), args.seconds))
            for n in workers:
                batches = SplitBatches(
                    store.uri,
                    m["prefix"],
                    {split: shards for split in SPLITS},
                    encoding,
                    seed=0,
                    batch_size=args.batch,
                    augment=AugmentConfig(),
                )
                with RunLoader(batches, n) as loader:
                    start = time.perf_counter()
                    next(loader.batches("train", 0, train=True))
                    first = time.perf_counter() - start
                    images_per_s = rate(loader_pass(loader), args.seconds)
                path = f"{encoding} shards, run loader, batch {args.batch}, {n} workers"
                row(f"{path} (first batch {first:.2f} s)", images_per_s, max(n, 1))

    header = f"Loader per core, {len(records)} real NIH images at {size} px (bench/loader_bench.py)"
    lines = [f"{path}: {r:,.0f} img/s, {c:,.0f} img/s per core, {x:.1f}x naive" for path, r, c, x in rows]
    if not args.no_append:
        append_results(lines, header)


def _imdecode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)


if __name__ == "__main__":
    main()
