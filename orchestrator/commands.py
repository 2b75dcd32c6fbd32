"""What each ``cxrstudy`` command does, given its parsed arguments (the parser is :mod:`orchestrator.cli`).

Imports are inside the commands: a client command loads only what it uses (never torch, timm or
OpenCV), and a command that needs the training stack says so in one line when it is missing.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
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
    print(store.get_text(layout.report_markdown_key(sid)))
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
    from orchestrator import cluster, kube

    core, apps = kube.load_clients(args.context)
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
