"""``cxrstudy``: the command line.

Every error a user can cause (a bad study file, a dataset folder without the CSV, an unknown
architecture, an unreachable store) is printed as one line, ``cxrstudy: error: ...``, with exit
status 2 and no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from importlib import resources
from pathlib import Path

from jobs.errors import CxrStudyError


def log(message: str) -> None:
    print(message, flush=True)


def cmd_make_synthetic(args) -> None:
    from jobs.synthetic import make_synthetic

    out = make_synthetic(args.dir, images=args.images, size=args.size, seed=args.seed, progress=log)
    log(f"make-synthetic: wrote an NIH-format dataset of {args.images:,} images ({args.size}px) to {out}")


def cmd_prepare(args) -> None:
    from jobs import prepare
    from jobs.store import open_store

    config = prepare.PrepConfig(
        image_size=args.image_size,
        clip_limit=args.clip_limit,
        tile_grid=args.tile_grid,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        shard_size=args.shard_size,
        encoding=args.encoding,
    )
    manifest = prepare.run(args.dataset, open_store(args.store), config, args.dataset_id, args.workers, log=log)
    counts = ", ".join(f"{s} {v['images']:,}" for s, v in manifest["splits"].items())
    log(f"prepared: {manifest['prefix']} ({counts}; {manifest['missing']['total']:,} listed images missing)")


def _load(args):
    from jobs.study import load_study

    study = load_study(args.study)
    if getattr(args, "dataset", None):
        study = dataclasses.replace(study, dataset=args.dataset)
    return study


def cmd_run(args) -> None:
    from jobs.store import open_store
    from orchestrator.local import run_study

    study = _load(args)
    store = open_store(args.store)
    sid, report = run_study(study, store, log=log)
    log(f"study {sid} done: {report}")
    print(store.get_text(f"studies/{sid}/report/report.md"))


def cmd_aggregate(args) -> None:
    from jobs import aggregate
    from jobs.store import open_store

    aggregate.run(args.study_id, open_store(args.store), log=log)


def cmd_demo(args) -> None:
    import yaml

    from jobs.store import LocalStore
    from jobs.study import parse_study
    from jobs.synthetic import make_synthetic
    from orchestrator.local import run_study

    out = Path(args.out).resolve()
    data = Path(args.dataset).resolve() if args.dataset else out / "data"
    started = time.monotonic()
    if not args.dataset and not (data / "Data_Entry_2017.csv").exists():
        log(f"demo: generating a synthetic NIH-format dataset ({args.images:,} images) in {data}")
        make_synthetic(data, images=args.images, size=128, seed=0, progress=log)
    text = resources.files("orchestrator").joinpath("demo-study.yaml").read_text()
    study = dataclasses.replace(parse_study(yaml.safe_load(text), "demo-study.yaml"), dataset=str(data))
    store = LocalStore(out / "store")
    sid, _ = run_study(study, store, log=log)
    report_dir = out / "report"
    if report_dir.exists():
        shutil.rmtree(report_dir)
    shutil.copytree(store.path(f"studies/{sid}/report"), report_dir)
    print()
    print((report_dir / "report.md").read_text())
    log(
        f"demo: finished in {time.monotonic() - started:.0f}s; report at {report_dir / 'report.md'}, "
        f"runs under {store.path(f'studies/{sid}')}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrstudy", description="Seed studies of chest X-ray classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="generate a small synthetic dataset and run a 2 x 2 study on this machine")
    p.add_argument("--out", default="cxrstudy-demo", help="output folder (default: ./cxrstudy-demo)")
    p.add_argument("--images", type=int, default=2000, help="synthetic images to generate (default 2000)")
    p.add_argument("--dataset", help="use this NIH-format folder instead of generating one")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run a study file in this process (prepare, every run, aggregate)")
    p.add_argument("study", help="study file (YAML)")
    p.add_argument("--store", required=True, help="where results go: a directory or s3://bucket/prefix")
    p.add_argument("--dataset", help="override the study file's dataset location")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("prepare", help="CLAHE + resize an NIH-format dataset into tar shards in the store")
    p.add_argument("--dataset", required=True, help="NIH-format folder or s3://bucket/prefix")
    p.add_argument("--store", required=True, help="a directory or s3://bucket/prefix")
    p.add_argument("--dataset-id", help="name under datasets/ (default: the dataset folder's name)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--clip-limit", type=float, default=2.0)
    p.add_argument("--tile-grid", type=int, default=8)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=20171)
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--encoding", choices=("png", "npy"), default="png")
    p.add_argument("--workers", type=int, help="processes (default: all CPU cores)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("make-synthetic", help="write a synthetic NIH-format dataset with a learnable signal")
    p.add_argument("dir")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_synthetic)

    p = sub.add_parser("aggregate", help="(re)write a study's report from the runs in the store")
    p.add_argument("study_id")
    p.add_argument("--store", required=True)
    p.set_defaults(func=cmd_aggregate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CxrStudyError as exc:
        print(f"cxrstudy: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cxrstudy: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
