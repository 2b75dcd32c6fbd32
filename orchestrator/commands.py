"""What each ``cxrstudy`` command does, given its parsed arguments (the parser is :mod:`orchestrator.cli`).

Imports are inside the commands: a client command loads only what it uses (never torch, timm or
OpenCV), and a command that needs the training stack says so in one line when it is missing.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from importlib import resources
from pathlib import Path

from jobs.errors import ConfigError, CxrStudyError

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


def check_writable(path: str | os.PathLike, what: str) -> None:
    """A one-line error, before anything is written, when the folder ``path`` (there or not yet) cannot
    be created or written: a file in its way, a read-only file system, no permission. Creates nothing."""
    target = Path(path).expanduser().absolute()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        problem = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):  # EROFS or permissions (root passes the latter)
        problem = f"{existing} is not writable"
    else:
        return
    raise CxrStudyError(f"{what} {path}: {problem}; pick a folder you can write to")


def not_succeeded(store, sid: str, states: list, total: int) -> int:
    """0 when ``states`` (the runs that did not succeed) is empty; else 1, after one line on stderr
    naming those runs and where their error.json is."""
    if not states:
        return 0
    named = [
        f"{s.job.arm} seed {s.job.seed} "
        + (f"failed, see {store.url(s.job.keys.error)}" if s.state == "failed" else s.state)
        for s in states[:5]
    ]
    more = f" and {len(states) - 5} more" if len(states) > 5 else ""
    print(
        f"cxrstudy: error: study {sid}: {len(states)} of {total} runs did not succeed: {'; '.join(named)}{more}",
        file=sys.stderr,
        flush=True,
    )
    return 1


def _ended_badly(settings, sid: str) -> int:
    """:func:`not_succeeded` for a study on the workers, from its runs' states in the store."""
    from jobs.store import open_store
    from jobs.store.records import study_snapshot, study_states

    store = open_store(settings.store)
    _, states = study_states(study_snapshot(store, sid), sid, settings.stale_after)
    return not_succeeded(store, sid, [s for s in states if s.state != "succeeded"], len(states))


def cmd_make_synthetic(args) -> None:
    needs_training_stack("make-synthetic")
    check_writable(args.dir, "make-synthetic")
    from jobs.data.synthetic import make_synthetic

    out = make_synthetic(args.dir, images=args.images, size=args.size, seed=args.seed, progress=log)
    log(f"make-synthetic: wrote an NIH-format dataset of {args.images:,} images ({args.size}px) to {out}")


def cmd_prepare(args) -> None:
    needs_training_stack("prepare")
    from jobs import prepare
    from jobs.spec.configs import prep_from_flags
    from jobs.spec.study import check_option_name
    from jobs.store import open_store

    check_option_name(args.dataset_id, "--dataset-id")  # a name under datasets/, never a path out of the store
    config = prep_from_flags(
        image_size=args.image_size,
        clip_limit=args.clip_limit,
        tile_grid=args.tile_grid,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        shard_size=args.shard_size,
        encoding=args.encoding,
        clahe=not args.no_clahe,
        split=args.split,
        split_fractions=split_fractions_flag(args.split_fractions),
    )
    manifest = prepare.run(args.dataset, open_store(args.store), config, args.dataset_id, args.workers, log=log)
    counts = ", ".join(f"{s} {v['images']:,}" for s, v in manifest["splits"].items())
    log(f"prepared: {manifest['prefix']} ({counts}; {manifest['missing']['total']:,} listed images missing)")


def split_fractions_flag(text: str | None):
    """``--split-fractions 0.7,0.1,0.2`` as :class:`SplitFractions` (None: the default)."""
    from jobs.spec.configs import SplitFractions

    if text is None:
        return SplitFractions()
    try:
        train, val, test = (float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--split-fractions {text}: give three fractions, TRAIN,VAL,TEST, e.g. 0.7,0.1,0.2") from None
    return SplitFractions(train, val, test)


def _load(args):
    from jobs.spec.study import load_study_file

    study = load_study_file(args.study)
    if getattr(args, "dataset", None):
        study = dataclasses.replace(study, dataset=args.dataset)
    return study


def cmd_run(args) -> int:
    needs_training_stack("run")
    from jobs.store import layout, open_store
    from orchestrator.local import run_study

    study = _load(args)
    store = open_store(args.store)
    sid, report, failed = run_study(study, store, log=log)
    log(f"study {sid} done: {report}")
    print(store.get_text(layout.report_markdown_key(sid)))
    return not_succeeded(store, sid, failed, sum(len(g.seeds) for g in study.runs))


def cmd_aggregate(args) -> None:
    from jobs import aggregate
    from jobs.store import open_store

    aggregate.run(args.study_id, open_store(args.store), log=log)


def _settings(args, **extra):
    from worker.settings import Settings

    return Settings.from_env(broker_url=getattr(args, "broker", None), store=getattr(args, "store", None), **extra)


def cmd_submit(args) -> int:
    from orchestrator import distributed

    settings = _settings(args)
    sid = distributed.submit(_load(args), settings, log=log)
    print(sid, flush=True)
    if not args.wait:
        return 0
    distributed.wait(sid, settings, log=log, compact=True)  # a line per run per state or epoch change
    print(distributed.status(sid, settings))
    print(distributed.results(sid, settings, None))
    return _ended_badly(settings, sid)


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

    if args.out:
        check_writable(args.out, "--out")
    print(distributed.results(args.study_id, _settings(args), args.out))
    if args.out:
        log(f"results: report files written to {Path(args.out).resolve()}")


def cmd_report(args) -> None:
    from jobs.store import open_store
    from orchestrator import distributed, reporting

    settings = _settings(args).need("store")
    if args.out:
        check_writable(args.out, "--out")
    reporting.report(
        args.study_id,
        open_store(settings.store),
        baselines=args.baseline or [],
        compare=args.compare or [],
        resamples=args.resamples,
        log=log,
        bootstrap_unit=args.bootstrap_unit,
    )
    print(distributed.results(args.study_id, settings, args.out))
    if args.out:
        log(f"report: report files written to {Path(args.out).resolve()}")


def cmd_evaluate(args) -> None:
    from jobs.report.baselines import evaluate, evaluation_markdown

    if args.out:
        check_writable(args.out, "--out")
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


def cmd_demo(args) -> int:
    needs_training_stack("demo")
    check_writable(args.out, "--out")
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
    return _ended_badly(settings, sid)


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
