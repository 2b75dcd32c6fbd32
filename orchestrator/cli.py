"""``cxrstudy``: the command line.

Every error a user can cause (a bad study file, a dataset folder without the CSV, an unknown
architecture, an unreachable store) is printed as one line, ``cxrstudy: error: ...``, with exit
status 2 and no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from importlib import resources
from pathlib import Path

from jobs.errors import CxrStudyError

# The modules of the training stack: the `train` extra (`pip install 'cxrstudy[train]'`) installs them.
TRAINING_STACK = ("torch", "torchvision", "timm", "cv2")


def log(message: str) -> None:
    print(message, flush=True)


def needs_training_stack(command: str) -> None:
    """A one-line error when a command that trains or preprocesses runs in a client-only install."""
    import importlib.util

    missing = [m for m in TRAINING_STACK if importlib.util.find_spec(m) is None]
    if missing:
        raise CxrStudyError(
            f"`cxrstudy {command}` needs the training stack ({', '.join(missing)} not installed): "
            "pip install 'cxrstudy[train]' (the client commands submit, status, results, ... work without it)"
        )


def cmd_make_synthetic(args) -> None:
    needs_training_stack("make-synthetic")
    from jobs.data.synthetic import make_synthetic

    out = make_synthetic(args.dir, images=args.images, size=args.size, seed=args.seed, progress=log)
    log(f"make-synthetic: wrote an NIH-format dataset of {args.images:,} images ({args.size}px) to {out}")


def cmd_prepare(args) -> None:
    needs_training_stack("prepare")
    from jobs import prepare
    from jobs.spec.configs import PrepConfig
    from jobs.store import open_store

    config = PrepConfig(
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
    from jobs.spec.study import load_study_file

    study = load_study_file(args.study)
    if getattr(args, "dataset", None):
        study = dataclasses.replace(study, dataset=args.dataset)
    return study


def cmd_run(args) -> None:
    needs_training_stack("run")
    from jobs.store import layout, open_store
    from orchestrator.local import run_study

    study = _load(args)
    store = open_store(args.store)
    sid, report, failed = run_study(study, store, log=log)
    log(f"study {sid} done: {report}")
    print(store.get_text(layout.report_key(sid, "report.md")))
    if failed:
        raise CxrStudyError(f"study {sid}: {failed} run(s) failed; the report lists them with their errors")


def cmd_aggregate(args) -> None:
    from jobs import aggregate
    from jobs.store import open_store

    aggregate.run(args.study_id, open_store(args.store), log=log)


def _settings(args, **extra):
    from worker.settings import Settings

    return Settings.from_env(broker_url=getattr(args, "broker", None), store=getattr(args, "store", None), **extra)


def cmd_submit(args) -> None:
    from orchestrator import distributed

    settings = _settings(args)
    sid = distributed.submit(_load(args), settings, log=log)
    print(sid, flush=True)
    if args.wait:
        distributed.wait(sid, settings, log=log, compact=True)  # a line per run per state or epoch change
        print(distributed.status(sid, settings))
        print(distributed.results(sid, settings, None))


def cmd_status(args) -> None:
    from orchestrator import distributed

    settings = _settings(args)
    if not args.watch:
        print(distributed.status(args.study_id, settings, as_json=args.json))
        return
    while True:
        print("\033[2J\033[H" + distributed.status(args.study_id, settings), flush=True)
        time.sleep(args.interval)


def cmd_results(args) -> None:
    from orchestrator import distributed

    print(distributed.results(args.study_id, _settings(args), args.out))
    if args.out:
        log(f"results: report files written to {Path(args.out).resolve()}")


def cmd_report(args) -> None:
    from jobs.store import open_store
    from orchestrator import distributed, reporting

    settings = _settings(args).need("store")
    reporting.report(
        args.study_id,
        open_store(settings.store),
        baselines=args.baseline or [],
        compare=args.compare or [],
        resamples=args.resamples,
        log=log,
    )
    print(distributed.results(args.study_id, settings, args.out))
    if args.out:
        log(f"report: report files written to {Path(args.out).resolve()}")


def cmd_evaluate(args) -> None:
    from jobs.report.baselines import evaluate, evaluation_markdown

    score = evaluate(
        args.predictions,
        args.dataset,
        split=args.split,
        out_dir=args.out,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        threshold=args.threshold,
        log=log,
        name=args.name,
    )
    print(evaluation_markdown(score))


def cmd_cancel(args) -> None:
    from orchestrator import distributed

    log(distributed.cancel(args.study_id, _settings(args)))


def cmd_resume(args) -> None:
    from orchestrator import distributed

    log(distributed.resume(args.study_id, _settings(args)))


def cmd_list(args) -> None:
    from orchestrator import distributed

    print(distributed.list_studies(_settings(args)))


def cmd_worker(args) -> None:
    needs_training_stack("worker")
    from orchestrator import distributed

    settings = _settings(args).need("broker_url", "store")
    distributed.connect(settings)  # fail here, in one line, rather than in Celery's retry loop
    cmd = distributed.worker_command(args.queues, args.name, args.loglevel)
    os.execvpe(cmd[0], cmd, {**os.environ, **settings.env()})  # exec: SIGTERM reaches the worker itself


def cmd_demo(args) -> None:
    needs_training_stack("demo")
    import yaml

    from jobs.data.synthetic import make_synthetic
    from jobs.spec.study import parse_study
    from orchestrator import distributed

    out = Path(args.out).resolve()
    data = Path(args.dataset).resolve() if args.dataset else out / "data"
    started = time.monotonic()
    if not args.dataset and not (data / "Data_Entry_2017.csv").exists():
        log(f"demo: generating a synthetic NIH-format dataset ({args.images:,} images) in {data}")
        make_synthetic(data, images=args.images, size=128, seed=0, progress=log)
    text = resources.files("orchestrator").joinpath("demo-study.yaml").read_text()
    study = dataclasses.replace(parse_study(yaml.safe_load(text), "demo-study.yaml"), dataset=str(data))
    # The embedded default: a broker in a folder (no server), the store in a folder, and worker
    # processes started here. The same study runs on a cluster by changing these two URLs.
    from worker.settings import Settings

    settings = Settings.from_env(
        broker_url=f"local://{out / 'broker'}", store=str(out / "store"), progress_interval=5.0, lease_ttl=30.0
    )
    logs = out / "logs"
    workers = distributed.start_workers(settings, args.workers, "gpu,cpu", logs)
    log(f"demo: started {args.workers} worker process(es) on the gpu and cpu queues (logs in {logs})")
    try:
        sid = distributed.submit(study, settings, log=log)
        distributed.wait(sid, settings, log=log, poll=2.0, compact=True)
    finally:
        distributed.stop_workers(workers)
    report_dir = out / "report"
    if report_dir.exists():
        shutil.rmtree(report_dir)
    print()
    print(distributed.results(sid, settings, str(report_dir)))
    log(
        f"demo: finished in {time.monotonic() - started:.0f}s; report at {report_dir / 'report.md'}, "
        f"runs under {out / 'store' / 'studies' / sid}"
    )


def cmd_cluster(args) -> None:
    from orchestrator import cluster

    core, apps = cluster.load_clients(args.context)
    if args.cluster_command == "scale":
        log(cluster.scale_gpu_workers(apps, args.namespace, args.release, args.gpu_workers))
        return
    depths = None
    try:  # the queue depths need the broker (a port-forward from a laptop); the rest does not
        from worker.coord import open_coord

        settings = _settings(args)
        if settings.broker_url:
            coord = open_coord(settings.broker_url)
            coord.ping()
            depths = coord.queue_depths()
    except CxrStudyError:
        depths = None
    print(cluster.cluster_status(core, apps, args.namespace, args.release, depths))


def _queue_options(p) -> None:
    p.add_argument("--broker", help="broker URL: redis://[:password@]host:6379/0 (default: $CXRSTUDY_BROKER_URL)")
    p.add_argument("--store", help="a directory or s3://bucket/prefix (default: $CXRSTUDY_STORE)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrstudy", description="Seed studies of chest X-ray classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="generate a small synthetic dataset and run a 2 x 2 study on this machine")
    p.add_argument("--out", default="cxrstudy-demo", help="output folder (default: ./cxrstudy-demo)")
    p.add_argument("--images", type=int, default=2000, help="synthetic images to generate (default 2000)")
    p.add_argument("--dataset", help="use this NIH-format folder instead of generating one")
    p.set_defaults(func=cmd_demo)

    p.add_argument("--workers", type=int, default=1, help="worker processes to start (default 1)")

    p = sub.add_parser("submit", help="validate a study file and enqueue its jobs for the workers")
    p.add_argument("study", help="study file (YAML); - reads it from standard input")
    _queue_options(p)
    p.add_argument("--dataset", help="override the study file's dataset location (a folder or s3:// URI)")
    p.add_argument("--wait", action="store_true", help="show progress until the report exists, then print it")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="one row per run: state, epoch, validation AUROC, worker, elapsed")
    p.add_argument("study_id")
    _queue_options(p)
    p.add_argument("--watch", action="store_true", help="refresh until interrupted")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes with --watch")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("results", help="print a study's report; --out downloads the report files")
    p.add_argument("study_id")
    p.add_argument("--store", help="a directory or s3://bucket/prefix (default: $CXRSTUDY_STORE)")
    p.add_argument("--out", help="folder for report.md, the CSVs and report.json")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser(
        "report",
        help="write a study's report again, with external baselines and DeLong tests between chosen scorers",
    )
    p.add_argument("study_id")
    p.add_argument("--store", help="a directory or s3://bucket/prefix (default: $CXRSTUDY_STORE)")
    p.add_argument(
        "--baseline",
        action="append",
        metavar="NAME=PREDICTIONS.csv",
        help="another system's predictions (CheXNet-style CSV: 'Image Index', prob_<Class>), kept with the "
        "study and scored on its test images; repeatable",
    )
    p.add_argument(
        "--compare",
        nargs=2,
        action="append",
        metavar=("A", "B"),
        help="a paired DeLong test per class between two scorers: an architecture (its seed ensemble), "
        "ARCH:SEED (one run) or a baseline's name; repeatable",
    )
    p.add_argument("--resamples", type=int, help="bootstrap resamples for the 95%% intervals (default 1000)")
    p.add_argument("--out", help="also download report.md, the CSVs, report.json and figures/ into this folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "evaluate", help="score another system's predictions CSV on a dataset's split, from its metadata alone"
    )
    p.add_argument("predictions", help="CheXNet-style CSV: 'Image Index' and prob_<Class> per finding")
    p.add_argument("--dataset", required=True, help="NIH-format folder or s3:// prefix (metadata and lists suffice)")
    p.add_argument("--split", default="test", choices=("test", "val", "train"), help="the split to score (test)")
    p.add_argument("--out", help="folder for evaluation.md, evaluation.csv and evaluation.json")
    p.add_argument("--name", help="the name in the tables (default: the file's name)")
    p.add_argument("--threshold", type=float, default=0.5, help="F1 threshold when the file has no validation rows")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation patients' share (as in the study)")
    p.add_argument("--split-seed", type=int, default=20171, help="seed of the validation carving (as in the study)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("cancel", help="stop a study: running runs within one epoch, queued runs never start")
    p.add_argument("study_id")
    _queue_options(p)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("resume", help="enqueue again every run of a study without result.json")
    p.add_argument("study_id")
    _queue_options(p)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("list", help="the studies in the store")
    p.add_argument("--store", help="a directory or s3://bucket/prefix (default: $CXRSTUDY_STORE)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("cluster", help="the deployment on Kubernetes: status, scale the GPU workers")
    csub = p.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    for name, help_text in (
        ("status", "worker pods by queue (phase, node), GPU deployments, allocatable GPUs, queue depths"),
        ("scale", "set the number of GPU workers"),
    ):
        c = csub.add_parser(name, help=help_text)
        c.add_argument(
            "--namespace",
            default=os.environ.get("CXRSTUDY_NAMESPACE", "cxrstudy"),
            help="namespace of the release (default: $CXRSTUDY_NAMESPACE or cxrstudy)",
        )
        c.add_argument(
            "--release",
            default=os.environ.get("CXRSTUDY_RELEASE", "cxrstudy"),
            help="Helm release name (default: $CXRSTUDY_RELEASE or cxrstudy)",
        )
        c.add_argument("--context", help="kubeconfig context (default: in-cluster, else the current context)")
        c.set_defaults(func=cmd_cluster)
        if name == "status":
            c.add_argument("--broker", help="broker URL for the queue depths (default: $CXRSTUDY_BROKER_URL)")
        else:
            c.add_argument("--gpu-workers", type=int, required=True, help="replicas of the GPU worker Deployment")

    p = sub.add_parser("worker", help="start a Celery worker (concurrency 1: one per GPU)")
    _queue_options(p)
    p.add_argument("--queues", default="gpu", help="comma-separated: gpu (train), cpu (prepare, aggregate)")
    p.add_argument("--name", help="worker node name (default: celery@hostname)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)

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
