"""Benchmark: what the cluster's control path costs at scale (issue 15), side by side in one run.

1. ``status`` of a study of ``--runs`` runs (default 500) on a loopback SeaweedFS S3 server. Each run
   has the files a real one has (checkpoints, metrics, predictions) besides its state records; a
   third succeeded, some running, some failed, the rest queued. Measured in this process:
   - per-run reads: what ``status`` did before (``run_state`` on the store: a HEAD and a GET per
     record per run);
   - a snapshot, cold: one listing of the study's folder and the records read in parallel;
   - a snapshot with the client's copies on disk: a second ``cxrstudy status`` (one listing);
   - a poll of ``wait`` after one run moved (one listing, one read);
   and the whole ``cxrstudy status`` command (a process: import, connect, listing), cold and warm.
2. Enqueueing ``--enqueue`` train jobs (default 1,000) on a real Redis broker.
3. The delay from enqueue to task start on an idle Celery worker (``cxrstudy.ping``), median and
   95th percentile of ``--pings`` probes sent one at a time, ``--gap`` seconds apart: each job runs
   in a fresh pool child (``worker_max_tasks_per_child=1``), so a worker is idle again once the pool
   has started the next child, a second or two after a job ends.

4. Prepare of the real NIH sample (``../shared/data/nih-sample``, 130 images at 1024 px) into
   SeaweedFS: fanned out over ``--cpu-workers`` Celery CPU workers (submit to manifest), against
   the single-process ``cxrstudy prepare`` with as many processes, on the same images and config.

Figures are appended to bench/results.md.

    .venv/bin/python bench/cluster_bench.py
    .venv/bin/python bench/cluster_bench.py --runs 500 --enqueue 1000 --pings 50
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.client_bench import BUCKET, _ports, start_weed, tree_env, wait_for_bucket  # noqa: E402
from bench.results import append_results  # noqa: E402

SID = "bench-cluster-1"
EXTRA_FILES = ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.jsonl", "fence.json")


def start_redis(data: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if not binary:
        raise SystemExit("needs Debian's redis-server: bash scripts/bootstrap.sh --test")
    (port,) = _ports(1)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(data)],
        stdout=open(data / "redis.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    import redis

    client, deadline = redis.Redis(port=port), time.monotonic() + 20
    while True:
        try:
            client.ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server did not start; see {data / 'redis.log'}") from None
            time.sleep(0.1)


def write_study(store, runs: int):
    """A study of ``runs`` runs with every file a run has; returns its jobs."""
    from concurrent.futures import ThreadPoolExecutor

    from jobs.spec.study import expand, parse_study
    from jobs.store.records import write_error, write_json, write_result, write_study

    archs = ("densenet121", "efficientnet_b2", "resnet50")
    seeds = {a: list(range(1, runs // len(archs) + 1 + (i < runs % len(archs)))) for i, a in enumerate(archs)}
    study = parse_study({"name": "bench", "dataset": "/data/nih", "runs": seeds})
    jobs = expand(study, SID, "datasets/nih/bench")
    write_study(store, study.spec(), SID, "datasets/nih/bench", jobs)
    now = time.time()

    def one(item):
        i, job = item
        if i % 3 == 0 or i % 3 == 1:
            for name in EXTRA_FILES:
                store.put_bytes(f"{job.keys.prefix}/{name}", b"x" * 256)
        if i % 3 == 0:
            split = {"images": 1000, "loss": 0.05, "avg_auroc": 0.8, "avg_f1": 0.3, "auroc": {}, "f1": {}}
            result = {"status": "succeeded", "job_id": job.job_id, "architecture": job.architecture}
            result |= {"seed": job.seed, "best_epoch": 9, "epochs_run": 10, "val": split, "test": split}
            for split_name in ("val", "test"):
                store.put_bytes(job.keys.predictions(split_name), b"image,label\n" * 20)
            write_result(store, job, result)
        elif i % 3 == 1:
            progress = {"state": "running", "epoch": 4, "step": 120, "steps": 700, "val_auroc": 0.71}
            progress |= {"worker": "gpu-0@bench", "started": now - 600, "updated": now + 3600}
            write_json(store, job.keys.progress, progress)
        elif i % 5 == 2:
            write_error(store, job, "CUDA out of memory", final=True, attempts=2, max_attempts=2)

    with ThreadPoolExecutor(16) as ex:
        list(ex.map(one, enumerate(jobs)))
    return jobs


def timed(fn, repeat: int) -> float:
    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def bench_status(store, jobs, repeat: int, cache_dir: Path, s3: dict, broker: str) -> dict:
    from jobs.store import layout
    from jobs.store.records import report_covers, run_state, study_jobs, study_snapshot, study_states, write_json
    from jobs.store.snapshot import Snapshot
    from orchestrator.status import report_state

    def per_run():
        _, states = study_states(store, SID)
        report_state(store, SID, states)

    def snapshot(cache=None):
        view = study_snapshot(store, SID, cache)
        _, states = study_states(view, SID)
        report_state(view, SID, states)

    out = {"objects": sum(1 for _ in store.list(layout.study_folder(SID)))}
    out["per_run"] = timed(per_run, repeat)
    out["cold"] = timed(snapshot, repeat)
    cache = cache_dir / "status.json"
    snapshot(cache)
    out["cached"] = timed(lambda: snapshot(cache), repeat)

    view = Snapshot(store, layout.study_folder(SID))
    view.refresh()
    study_states(view, SID)
    moving = next(j for j in study_jobs(study_states(view, SID)[0]) if run_state(view, j).state == "running")
    polls = []
    for i in range(repeat):
        write_json(store, moving.keys.progress, {"state": "running", "epoch": 5, "step": i, "updated": time.time()})
        before = dict(view.requests)
        t0 = time.perf_counter()
        view.refresh()
        _, states = study_states(view, SID)
        report_covers(view, SID, states)
        polls.append(time.perf_counter() - t0)
        out["poll_requests"] = {k: view.requests[k] - before[k] for k in before}
    out["poll"] = statistics.median(polls)

    env = tree_env(ROOT, {**s3, "CXRSTUDY_CACHE_DIR": str(cache_dir / "cli")})
    cmd = [sys.executable, "-m", "orchestrator.cli", "status", SID, "--store", store.uri, "--broker", broker]

    def cli():
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or f"{len(jobs)} runs" not in proc.stdout.splitlines()[0]:
            raise SystemExit(f"status failed:\n{proc.stdout[:500]}\n{proc.stderr}")

    def cli_cold():
        shutil.rmtree(cache_dir / "cli", ignore_errors=True)
        cli()

    out["cli_cold"] = timed(cli_cold, repeat)
    out["cli_warm"] = timed(cli, repeat)
    return out


def bench_enqueue(broker: str, store_uri: str, n: int, repeat: int) -> float:
    import redis

    from worker.app import make_app
    from worker.settings import Settings
    from worker.tasks import enqueue_train

    app = make_app(Settings(broker_url=broker, store=store_uri))
    ids = [f"job-{i:05d}" for i in range(n)]
    r = redis.Redis.from_url(broker)
    walls = []
    for _ in range(repeat):
        r.delete("gpu")
        t0 = time.perf_counter()
        enqueue_train(app, "bench-enqueue", ids)
        walls.append(time.perf_counter() - t0)
        if r.llen("gpu") != n:
            raise SystemExit(f"enqueued {r.llen('gpu')} messages, not {n}")
    r.delete("gpu")
    return statistics.median(walls)


def bench_latency(broker: str, store_uri: str, s3: dict, pings: int, tmp: Path, gap: float) -> list[float]:
    from worker.app import make_app
    from worker.settings import Settings

    env = tree_env(ROOT, {**s3, "CXRSTUDY_BROKER_URL": broker, "CXRSTUDY_STORE": store_uri})
    log = tmp / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "worker", "--queues", "gpu", "--name", "bench@%h"],
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=ROOT,
    )
    app = make_app(Settings(broker_url=broker, store=store_uri))
    pattern = re.compile(r"ping: started ([0-9.]+) ms after it was sent")
    try:
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not start; see {log}")
            time.sleep(0.2)
        delays: list[float] = []
        for _ in range(pings):
            app.send_task("cxrstudy.ping", kwargs={"sent": time.time()}, queue="gpu")
            deadline = time.monotonic() + 30
            while len(delays) < pings and time.monotonic() < deadline:
                found = [float(x) for x in pattern.findall(log.read_text(errors="replace"))]
                if len(found) > len(delays):
                    delays = found
                    break
                time.sleep(0.05)
            time.sleep(gap)  # idle again: the pool has started its next child (one job per child)
        if len(delays) < pings:
            raise SystemExit(f"only {len(delays)} of {pings} pings ran; see {log}")
        return delays
    finally:
        os.killpg(worker.pid, 9)
        worker.wait()


NIH_SAMPLE = ROOT.parent / "shared" / "data" / "nih-sample"


def bench_prepare(broker: str, s3: dict, tmp: Path, workers: int, shard_size: int) -> dict:
    """Wall time of the fanned-out prepare (submit -> manifest) and of the single-process one."""
    from jobs import prepare
    from jobs.spec.configs import PrepConfig
    from jobs.store import layout, open_store

    study = tmp / "prep.yaml"
    study.write_text(
        f"name: prep\ndataset: {NIH_SAMPLE}\npreprocessing: {{image_size: 256, shard_size: {shard_size}}}\n"
        "training: {epochs: 1}\nruns:\n  test_resnet: [1]\n"
    )
    store_uri = f"s3://{BUCKET}/fanout"
    env = tree_env(ROOT, {**s3, "CXRSTUDY_BROKER_URL": broker, "CXRSTUDY_STORE": store_uri})
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "worker", "--queues", "cpu", "--name", f"cpu{i}@%h"],
            env=env,
            stdout=open(tmp / f"cpu{i}.log", "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
        for i in range(workers)
    ]
    try:
        for i in range(workers):
            while "ready." not in (tmp / f"cpu{i}.log").read_text(errors="replace"):
                time.sleep(0.2)
        store = open_store(store_uri)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "submit", str(study)], env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise SystemExit(f"submit failed: {proc.stderr}")
        sid = proc.stdout.strip().splitlines()[-1]
        prefix = json.loads(store.get_text(f"studies/{sid}/study.json"))["data_prefix"]
        while not store.exists(layout.manifest_key(prefix)):
            time.sleep(0.1)
        fanned = time.perf_counter() - t0
    finally:
        for p in procs:
            os.killpg(p.pid, 9)
            p.wait()
    config = PrepConfig(image_size=256, shard_size=shard_size)
    single_store = open_store(f"s3://{BUCKET}/single")
    t0 = time.perf_counter()
    manifest = prepare.run(str(NIH_SAMPLE), single_store, config, workers=workers, log=lambda m: None)
    single = time.perf_counter() - t0
    same = all(
        store.get_bytes(layout.shard_key(prefix, e["name"]))
        == single_store.get_bytes(layout.shard_key(manifest["prefix"], e["name"]))
        for split in manifest["splits"].values()
        for e in split["shards"]
    )
    shards = sum(len(v["shards"]) for v in manifest["splits"].values())
    return {"fanned": fanned, "single": single, "shards": shards, "same": same}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--enqueue", type=int, default=1000)
    parser.add_argument("--pings", type=int, default=40)
    parser.add_argument("--gap", type=float, default=2.0, help="seconds between probes (the worker is idle again)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpu-workers", type=int, default=2, help="CPU workers of the fanned-out prepare")
    parser.add_argument("--shard-size", type=int, default=16, help="images per shard in the prepare benchmark")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/results.md")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cxrstudy-cluster-bench-"))
    procs = []
    try:
        (tmp / "weed").mkdir()
        (tmp / "redis").mkdir()
        weed, s3 = start_weed(tmp / "weed")
        procs.append(weed)
        redis_proc, broker = start_redis(tmp / "redis")
        procs.append(redis_proc)
        wait_for_bucket(weed, s3, tmp / "weed.log")
        os.environ.update(s3)
        from jobs.store import open_store

        store = open_store(f"s3://{BUCKET}/cluster")
        t0 = time.perf_counter()
        jobs = write_study(store, args.runs)
        print(f"wrote a {len(jobs)}-run study in {time.perf_counter() - t0:.1f} s")
        st = bench_status(store, jobs, args.repeat, tmp / "cache", s3, broker)
        print(st)
        enqueue = bench_enqueue(broker, store.uri, args.enqueue, args.repeat)
        print(f"enqueue {args.enqueue}: {enqueue:.3f} s")
        delays = bench_latency(broker, store.uri, s3, args.pings, tmp, args.gap)
        prep = bench_prepare(broker, s3, tmp, args.cpu_workers, args.shard_size)
        print(prep)
    finally:
        for p in procs:
            os.killpg(p.pid, 15)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
        shutil.rmtree(tmp, ignore_errors=True)

    med = statistics.median(delays)
    p95 = sorted(delays)[max(0, int(round(0.95 * len(delays))) - 1)]
    req = st["poll_requests"]
    lines = [
        f"`status` of a {args.runs}-run study on loopback SeaweedFS ({st['objects']:,} objects under the study; "
        f"median of {args.repeat}, in process): per-run reads (the old path) {st['per_run']:.2f} s; "
        f"one listing + parallel reads {st['cold']:.2f} s ({st['per_run'] / st['cold']:.1f}x); "
        f"with the client's copies {st['cached']:.2f} s ({st['per_run'] / st['cached']:.1f}x); "
        f"a `wait` poll after one run moved {st['poll']:.3f} s ({req['list']} listing, {req['get']} read)",
        f"`cxrstudy status` of the same study, whole process: {st['cli_cold']:.2f} s with no copies, "
        f"{st['cli_warm']:.2f} s with them (target: under 1 s)",
        f"enqueueing {args.enqueue:,} train jobs on Redis: {enqueue:.2f} s (target: under 2 s)",
        f"enqueue -> start of a task on an idle worker (Redis, {len(delays)} probes): median {med:.0f} ms, "
        f"p95 {p95:.0f} ms (target: median under 100 ms)",
        f"prepare of the NIH sample (130 images, 1024 -> 256 px, {prep['shards']} shards of {args.shard_size}) into "
        f"SeaweedFS: fanned out over {args.cpu_workers} Celery CPU workers {prep['fanned']:.1f} s (submit to "
        f"manifest), single process with {args.cpu_workers} processes {prep['single']:.1f} s "
        f"({prep['single'] / prep['fanned']:.2f}x); shards byte-identical: {'yes' if prep['same'] else 'NO'}",
    ]
    print("\n".join(lines))
    if not args.no_record:
        append_results(lines, "cluster control path")
    return 0


if __name__ == "__main__":
    sys.exit(main())
