"""Benchmark: the train step alone against the full data path, on the CPU or a CUDA GPU.

For each architecture x input size x batch size, with the trainer's own step
(:meth:`jobs.training.trainer.Trainer.step`: bf16 autocast and channels-last on CUDA, focal loss in
float32, AdamW, the schedule):

- **pure step**: images/s on one real batch already on the device (uint8, as the loader delivers it);
- **full path**: images/s of training steps fed by the run's loader (:class:`jobs.data.loader.RunLoader`)
  from shards in a local store, with ``--workers`` worker processes, shuffling and augmenting;
- their ratio (the fraction of the step rate the loader sustains), and the peak device memory.

Warm-up steps (worker start-up, cuDNN autotuning, compilation) are not timed; each measure is
bracketed by device synchronisations. ``--compile`` adds rows with the model under
``torch.compile``. The data is a synthetic NIH-format set generated at the input size and prepared
into PNG shards once per size. The figures are appended to bench/results.md.

    .venv/bin/python bench/train_bench.py                                   # CPU: a short grid
    .venv/bin/python bench/train_bench.py --device cuda --workers 8 --compile   # the full grid on a GPU
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import append_results  # noqa: E402
from jobs.data.sharding import prepare  # noqa: E402
from jobs.data.synthetic import make_synthetic  # noqa: E402
from jobs.spec.configs import PrepConfig, TrainConfig  # noqa: E402
from jobs.spec.runs import JobSpec  # noqa: E402
from jobs.store import LocalStore  # noqa: E402
from jobs.training.trainer import Trainer  # noqa: E402

TRAIN_FRACTION = 0.6  # of a synthetic set's images that land in its train split, at least


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_trainer(store, manifest, arch: str, batch: int, workers: int, device, compile_model: bool) -> Trainer:
    cfg = TrainConfig(batch_size=batch, num_workers=workers, lr=1e-4, epochs=1, in_chans=1)
    job = JobSpec("bench", f"{arch}-bench", arch, 0, cfg, manifest["prefix"])
    trainer = Trainer(job, store, device, log=lambda s: None)
    if compile_model:
        trainer.model = torch.compile(trainer.model)
    return trainer


def pure_step(trainer: Trainer, warmup: int, steps: int) -> float:
    """Images/s of the step on one real batch (the loader's first) already on the device."""
    device = trainer.device
    images, labels, _ = next(trainer.batches("train", 0, train=True))  # starts the loader's workers
    images, labels = images.to(device), labels.to(device)
    trainer.model.train()
    for _ in range(warmup):
        trainer.step(images, labels)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(images, labels)
    synchronize(device)
    return len(images) * steps / (time.perf_counter() - start)


def full_path(trainer: Trainer, batch: int, warmup: int, steps: int) -> float:
    """Images/s of steps fed by the run's loader: a new training pass (the workers already started),
    its first ``warmup`` batches untimed (the shuffle buffer fills, the prefetch queue runs)."""
    trainer.model.train()
    start, timed, i = None, 0, -1
    for i, (images, labels, _) in enumerate(trainer.batches("train", 1, train=True)):
        if i == warmup:
            synchronize(trainer.device)
            start = time.perf_counter()
        if i == warmup + steps:
            break
        trainer.step(images, labels)
        timed += i >= warmup
    synchronize(trainer.device)
    if start is None or timed < steps:
        raise SystemExit(f"the train split gave {i + 1} batches, fewer than {warmup + steps}: raise --images")
    return batch * steps / (time.perf_counter() - start)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        where = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    else:
        where = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return f"{where}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--archs", default="densenet121,efficientnet_b2")
    ap.add_argument("--sizes", default=None, help="input sizes (default 224,256 on CUDA, 224 on the CPU)")
    ap.add_argument("--batches", default=None, help="batch sizes (default 32,64,128 on CUDA, 32 on the CPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 50 on CUDA, 5 on the CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 on CUDA, 6 on the CPU)")
    ap.add_argument("--workers", type=int, default=2, help="loader worker processes of the full path")
    ap.add_argument("--compile", action="store_true", help="also measure the model under torch.compile")
    ap.add_argument("--dir", default=None, help="keep the synthetic data and shards here (default: a temp folder)")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to bench/results.md")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sizes = [int(s) for s in (args.sizes or ("224,256" if cuda else "224")).split(",")]
    batches = [int(b) for b in (args.batches or ("32,64,128" if cuda else "32")).split(",")]
    steps = args.steps or (50 if cuda else 5)
    warmup = args.warmup or (10 if cuda else 6)
    archs = args.archs.split(",")
    print(f"{device_name(device)}; {args.workers} loader workers; {warmup} warm-up + {steps} timed steps")

    # Every worker must have warmup + steps whole batches of its own in one pass.
    per_pass = (warmup + steps + 1) * max(batches) * max(args.workers, 1)
    images = max(200, math.ceil(per_pass / TRAIN_FRACTION))
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = LocalStore(Path(tmp) / "store")
        for size in sizes:
            data = Path(tmp) / f"nih-{size}"
            print(f"generating {images:,} synthetic images at {size} px and preparing them ...")
            make_synthetic(data, images=images, size=size, seed=0)
            config = PrepConfig(image_size=size, shard_size=256, val_fraction=0.05)
            manifest = prepare(str(data), store, config, log=lambda s: None)
            for arch in archs:
                for batch in batches:
                    for compiled in (False, True) if args.compile else (False,):
                        grid = (arch, size, batch, args.workers, device, compiled)
                        rows.append(measure(store, manifest, *grid, warmup, steps))

    title = f"Train step vs full path on {device_name(device)} (bench/train_bench.py)"
    lines = [
        f"{arch} {size} px batch {batch}{' compiled' if compiled else ''}: pure step {pure:,.1f} img/s, full path "
        f"{full:,.1f} img/s with {args.workers} workers ({full / pure:.0%} of the step), peak memory {memory}"
        for arch, size, batch, compiled, pure, full, memory in rows
    ]
    if not args.no_append:
        append_results(lines, title)


def measure(store, manifest, arch, size, batch, workers, device, compiled, warmup, steps) -> tuple:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with make_trainer(store, manifest, arch, batch, workers, device, compiled) as trainer:
        pure = pure_step(trainer, warmup, steps)
        full = full_path(trainer, batch, warmup, steps)
    memory = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else "n/a (CPU)"
    label = f"{arch} {size} px batch {batch}{' compiled' if compiled else ''}"
    print(f"  {label:40s} pure {pure:9,.1f} img/s  full {full:9,.1f} img/s  ({full / pure:4.0%})  peak {memory}")
    return arch, size, batch, compiled, pure, full, memory


if __name__ == "__main__":
    main()
