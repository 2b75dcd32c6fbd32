"""``cxrstudy``: the command line.

Every error a user can cause (a bad study file, a dataset folder without the CSV, an unknown
architecture, an unreachable store) is printed as one line, ``cxrstudy: error: ...``, with exit
status 2 and no traceback. A study command whose runs did not all succeed (``run``, ``demo``,
``submit --wait``) exits 1 after the report, with one line naming those runs and their error.json.
"""

from __future__ import annotations

import argparse
import os
import sys

from jobs.errors import CxrStudyError
from orchestrator import commands


def _queue_options(p) -> None:
    p.add_argument("--broker", help="broker URL: redis://[:password@]host:6379/0 (default: $CXRSTUDY_BROKER_URL)")
    p.add_argument("--store", help="a directory or s3://bucket/prefix (default: $CXRSTUDY_STORE)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrstudy", description="Seed studies of chest X-ray classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_study_commands(sub)
    _add_report_commands(sub)
    _add_control_commands(sub)
    _add_local_commands(sub)
    return parser


def _add_demo(sub) -> None:
    """The parsers of the embedded demo."""
    p = sub.add_parser("demo", help="generate a small synthetic dataset and run a 2 x 2 study on this machine")
    p.add_argument("--out", default="cxrstudy-demo", help="output folder (default: ./cxrstudy-demo)")
    p.add_argument("--images", type=int, default=2000, help="synthetic images to generate (default 2000)")
    p.add_argument("--dataset", help="use this NIH-format folder instead of generating one")
    p.add_argument("--workers", type=int, default=1, help="worker processes to start (default 1)")
    p.set_defaults(func=commands.cmd_demo)


def _add_study_commands(sub) -> None:
    """The parsers of submit a study and follow it."""
    p = sub.add_parser("submit", help="validate a study file and enqueue its jobs for the workers")
    p.add_argument("study", help="study file (YAML); - reads it from standard input")
    _queue_options(p)
    p.add_argument("--dataset", help="override the study file's dataset location (a folder or s3:// URI)")
    p.add_argument("--wait", action="store_true", help="show progress until the report exists, then print it")
    p.set_defaults(func=commands.cmd_submit)

    p = sub.add_parser("status", help="one row per run: state, epoch, validation AUROC, worker, elapsed")
    p.add_argument("study_id")
    _queue_options(p)
    p.add_argument("--watch", action="store_true", help="refresh until interrupted")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes with --watch")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=commands.cmd_status)

    p = sub.add_parser("results", help="print a study's report; --out downloads the report files")
    p.add_argument("study_id")
    p.add_argument("--store", help="a directory or s3://bucket/prefix (default: $CXRSTUDY_STORE)")
    p.add_argument("--out", help="folder for report.md, the CSVs and report.json")
    p.set_defaults(func=commands.cmd_results)


def _add_report_commands(sub) -> None:
    """The parsers of reports and evaluations."""
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
        help="a paired DeLong test per class between two scorers: an architecture or, with variants, an arm "
        "ARCH@VARIANT (its seed ensemble), ARCH:SEED or ARCH@VARIANT:SEED (one run) or a baseline's name; repeatable",
    )
    p.add_argument("--resamples", type=int, help="bootstrap resamples for the 95%% intervals (default 1000)")
    p.add_argument(
        "--bootstrap-unit",
        choices=("patient", "image"),
        help="what a bootstrap resample draws: patients with all their test images (default) or single images",
    )
    p.add_argument("--out", help="also download report.md, the CSVs, report.json and figures/ into this folder")
    p.set_defaults(func=commands.cmd_report)

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
    p.set_defaults(func=commands.cmd_evaluate)


def _add_control_commands(sub) -> None:
    """The parsers of cancel, resume, list; the cluster."""
    p = sub.add_parser("cancel", help="stop a study: running runs within one epoch, queued runs never start")
    p.add_argument("study_id")
    _queue_options(p)
    p.set_defaults(func=commands.cmd_cancel)

    p = sub.add_parser("resume", help="enqueue again every run of a study without result.json")
    p.add_argument("study_id")
    _queue_options(p)
    p.set_defaults(func=commands.cmd_resume)

    p = sub.add_parser("list", help="the studies in the store")
    p.add_argument("--store", help="a directory or s3://bucket/prefix (default: $CXRSTUDY_STORE)")
    p.set_defaults(func=commands.cmd_list)

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
        c.set_defaults(func=commands.cmd_cluster)
        if name == "status":
            c.add_argument("--broker", help="broker URL for the queue depths (default: $CXRSTUDY_BROKER_URL)")
        else:
            c.add_argument("--gpu-workers", type=int, required=True, help="replicas of the GPU worker Deployment")


def _add_local_commands(sub) -> None:
    """The parsers of workers and the jobs run in this process."""
    p = sub.add_parser("worker", help="start a Celery worker (concurrency 1: one per GPU)")
    _queue_options(p)
    p.add_argument("--queues", default="gpu", help="comma-separated: gpu (train), cpu (prepare, aggregate)")
    p.add_argument("--name", help="worker node name (default: celery@hostname)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=commands.cmd_worker)

    p = sub.add_parser("run", help="run a study file in this process (prepare, every run, aggregate)")
    p.add_argument("study", help="study file (YAML)")
    p.add_argument("--store", required=True, help="where results go: a directory or s3://bucket/prefix")
    p.add_argument("--dataset", help="override the study file's dataset location")
    p.set_defaults(func=commands.cmd_run)

    p = sub.add_parser("prepare", help="CLAHE + resize an NIH-format dataset into tar shards in the store")
    p.add_argument("--dataset", required=True, help="NIH-format folder or s3://bucket/prefix")
    p.add_argument("--store", required=True, help="a directory or s3://bucket/prefix")
    p.add_argument("--dataset-id", help="name under datasets/ (default: the dataset folder's name)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--clip-limit", type=float, default=2.0)
    p.add_argument("--tile-grid", type=int, default=8)
    p.add_argument("--no-clahe", action="store_true", help="store the plain INTER_AREA resize, without CLAHE")
    p.add_argument(
        "--split",
        choices=("official", "random"),
        default="official",
        help="official: NIH's test_list.txt; random: a patient-wise random split by --split-fractions",
    )
    p.add_argument(
        "--split-fractions",
        metavar="TRAIN,VAL,TEST",
        help="with --split random, the image fractions of train, val and test (default 0.7,0.1,0.2)",
    )
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=20171)
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--encoding", choices=("png", "npy"), default="png")
    p.add_argument("--workers", type=int, help="processes (default: all CPU cores)")
    p.set_defaults(func=commands.cmd_prepare)

    p = sub.add_parser("make-synthetic", help="write a synthetic NIH-format dataset with a learnable signal")
    p.add_argument("dir")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=commands.cmd_make_synthetic)

    p = sub.add_parser("aggregate", help="(re)write a study's report from the runs in the store")
    p.add_argument("study_id")
    p.add_argument("--store", required=True)
    p.set_defaults(func=commands.cmd_aggregate)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args) or 0
    except CxrStudyError as exc:
        print(f"cxrstudy: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cxrstudy: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
