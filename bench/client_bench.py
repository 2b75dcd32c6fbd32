"""Benchmark: what the client commands cost now that they need no training stack, against a baseline.

Two measurements, each side by side in one run, the current tree against a baseline revision
(default 69ca7da, the commit before the client / [train] split) checked out with ``git worktree``;
both run on this venv's python (PYTHONPATH points at each tree), so both see the same packages:

1. ``import orchestrator.distributed`` (what ``cxrstudy status`` loads) in a fresh process: its
   time, the process's max RSS, and whether torch, timm or cv2 ended up in ``sys.modules``.
2. ``python -m orchestrator.cli status`` of a 30-run study (succeeded, running, failed and queued
   runs) on a loopback SeaweedFS S3 server (``weed mini`` on free ports) with a ``local://``
   broker: wall time of the whole command.

Medians of ``--repeat`` runs, alternating current and baseline. Results are appended to
bench/results.md.

    .venv/bin/python bench/client_bench.py
    .venv/bin/python bench/client_bench.py --baseline 69ca7da --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.results import append_results  # noqa: E402

STACK = ("torch", "torchvision", "timm", "cv2")
BUCKET = "cxrstudy-bench"
S3_KEY, S3_SECRET = "cxrstudy-bench", "cxrstudy-bench-secret"
SID = "bench-status-1"

IMPORT_PROBE = textwrap.dedent(f"""\
    import json, resource, sys, time
    t0 = time.perf_counter()
    import orchestrator.distributed
    seconds = time.perf_counter() - t0
    print(json.dumps({{
        "seconds": seconds,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loaded": [m for m in {STACK!r} if m in sys.modules],
        "file": orchestrator.distributed.__file__,
    }}))
    """)


def tree_env(tree: Path, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "PYTHONPATH": str(tree), **(extra or {})}


def measure_import(tree: Path, probe: Path) -> dict:
    """One fresh process importing orchestrator.distributed from ``tree``."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(probe)], env=tree_env(tree), cwd=probe.parent, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"import probe failed for {tree}:\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not Path(out["file"]).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"the probe imported {out['file']}, not the tree {tree}")
    return {**out, "wall": wall}


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


WEED_PORTS = (
    "s3.port s3.port.grpc master.port master.port.grpc volume.port volume.port.grpc filer.port "
    "filer.port.grpc webdav.port admin.port admin.port.grpc debug.port"
).split()


def weed_command(data: Path, bucket: str) -> tuple[list[str], int]:
    """``weed mini`` over ``data`` with every port of its own (never the tests' 8333), and its S3 port.
    The same command starts it again on the same ports and data (the chaos test restarts it)."""
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    ports = dict(zip(WEED_PORTS, _ports(len(WEED_PORTS))))
    cmd = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-bucket={bucket}"]
    cmd += [f"-{name}={port}" for name, port in ports.items()] + ["-s3.port.iceberg=0", "-s3.port.lance=0"]
    return cmd, ports["s3.port"]


def start_weed(data: Path) -> tuple[subprocess.Popen, dict]:
    """``weed mini`` on ports of its own, started; returns it and the variables a client needs."""
    cmd, s3_port = weed_command(data, BUCKET)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    log = open(data.parent / "weed.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client_env = {
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{s3_port}",
        "AWS_REGION": "us-east-1",
    }
    return proc, client_env


def wait_for_bucket(proc: subprocess.Popen, env: dict, log: Path) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        region_name=env["AWS_REGION"],
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2),
    )
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"weed mini exited with {proc.returncode}; see {log}")
        try:
            client.head_bucket(Bucket=BUCKET)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise SystemExit(f"SeaweedFS did not serve S3 within 90 s; see {log}") from None
            time.sleep(0.5)


def write_status_study(store_uri: str, runs: int) -> None:
    """A study of ``runs`` runs in the store: a third succeeded, some running, some failed, the rest queued."""
    from jobs.spec.study import expand, parse_study
    from jobs.store import open_store
    from jobs.store.records import write_error, write_json, write_result, write_study

    store = open_store(store_uri)
    archs = ("densenet121", "efficientnet_b2", "resnet50")
    seeds = {a: list(range(1, runs // len(archs) + 1 + (i < runs % len(archs)))) for i, a in enumerate(archs)}
    study = parse_study({"name": "bench", "dataset": "/data/nih", "runs": seeds})
    jobs = expand(study, SID, "datasets/nih/bench")
    assert len(jobs) == runs, len(jobs)
    write_study(store, study.spec(), SID, "datasets/nih/bench", jobs)
    now = time.time()
    for i, job in enumerate(jobs):
        if i % 3 == 0:
            split = {"images": 1000, "loss": 0.05, "avg_auroc": 0.8, "avg_f1": 0.3, "auroc": {}, "f1": {}}
            result = {"status": "succeeded", "job_id": job.job_id, "architecture": job.architecture}
            result |= {"seed": job.seed, "best_epoch": 9, "epochs_run": 10, "val": split, "test": split}
            write_result(store, job, result)
        elif i % 3 == 1 and i < runs // 2:
            progress = {"state": "running", "epoch": 4, "step": 120, "steps": 700, "val_auroc": 0.71}
            progress |= {"worker": "gpu-0@bench", "started": now - 600, "updated": now + 3600}
            write_json(store, job.keys.progress, progress)
        elif i % 5 == 2:
            write_error(store, job, "CUDA out of memory", final=True, attempts=2, max_attempts=2)
        # the rest: queued (no file)


def measure_status(tree: Path, cwd: Path, store_uri: str, broker: str, s3: dict) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "orchestrator.cli", "status", SID, "--store", store_uri, "--broker", broker]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=tree_env(tree, s3), cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"status failed for {tree} (cwd {cwd}):\n{proc.stderr}")
    return wall, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="69ca7da", help="revision to compare with (default 69ca7da)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (median reported)")
    parser.add_argument("--runs", type=int, default=30, help="runs of the study that status reads")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/results.md")
    args = parser.parse_args()
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.baseline], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    current_rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    current_label = f"{current_rev}{'+changes' if dirty else ''}"

    tmp = Path(tempfile.mkdtemp(prefix="cxrstudy-client-bench-"))
    baseline = tmp / "baseline"
    weed = None
    try:
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(baseline), rev], cwd=ROOT, check=True, capture_output=True
        )
        trees = {"current": ROOT, "baseline": baseline}

        # 1. The import of orchestrator.distributed, in a fresh process each time.
        probe = tmp / "probe" / "import_probe.py"
        probe.parent.mkdir()
        probe.write_text(IMPORT_PROBE)
        imports = {name: [] for name in trees}
        for _ in range(args.repeat):
            for name, tree in trees.items():
                imports[name].append(measure_import(tree, probe))

        # 2. `cxrstudy status` of a study on a loopback S3 server, with a local:// broker.
        (tmp / "weed").mkdir()
        weed, s3 = start_weed(tmp / "weed")
        wait_for_bucket(weed, s3, tmp / "weed.log")
        os.environ.update(s3)
        store_uri = f"s3://{BUCKET}/status"
        write_status_study(store_uri, args.runs)
        broker = f"local://{tmp / 'broker'}"
        cases = {
            "current": (ROOT, tmp),
            "current, cwd=repo": (ROOT, ROOT),
            "baseline": (baseline, tmp),
        }
        walls = {name: [] for name in cases}
        outputs = {}
        for _ in range(args.repeat):
            for name, (tree, cwd) in cases.items():
                wall, outputs[name] = measure_status(tree, cwd, store_uri, broker, s3)
                walls[name].append(wall)
        for name, text in outputs.items():
            if f"{args.runs} runs" not in text.splitlines()[0]:
                raise SystemExit(f"{name}: unexpected status output:\n{text}")
    finally:
        if weed is not None:
            os.killpg(weed.pid, 15)
            try:
                weed.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(weed.pid, 9)
                weed.wait()
        if baseline.exists():
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)

    med = statistics.median
    imp = {
        name: {
            "seconds": med(r["seconds"] for r in rs),
            "wall": med(r["wall"] for r in rs),
            "rss": med(r["rss_mib"] for r in rs),
            "loaded": sorted({m for r in rs for m in r["loaded"]}),
        }
        for name, rs in imports.items()
    }
    st = {name: med(ws) for name, ws in walls.items()}

    print(f"\n{'':34}{'import s':>10}{'process s':>11}{'max RSS MiB':>13}  training stack loaded")
    for name, label in (("current", current_label), ("baseline", rev)):
        r = imp[name]
        loaded = ", ".join(r["loaded"]) or "none"
        print(f"{name + ' (' + label + ')':34}{r['seconds']:10.2f}{r['wall']:11.2f}{r['rss']:13.0f}  {loaded}")
    print(f"\n`status` of a {args.runs}-run study (loopback SeaweedFS, local:// broker), median of {args.repeat}:")
    for name, wall in st.items():
        print(f"  {name:20} {wall:6.2f} s")

    cur, base = imp["current"], imp["baseline"]

    def loaded(r: dict) -> str:
        return "yes" if "torch" in r["loaded"] else "no"

    lines = [
        f"`cxrstudy status` import (`import orchestrator.distributed`, fresh process, median of {args.repeat}): "
        f"current ({current_label}) {cur['seconds']:.2f} s / {cur['rss']:,.0f} MiB (torch loaded: {loaded(cur)}) "
        f"vs baseline ({rev}) {base['seconds']:.2f} s / {base['rss']:,.0f} MiB (torch loaded: {loaded(base)}): "
        f"{base['seconds'] / cur['seconds']:.1f}x faster, {base['rss'] / cur['rss']:.1f}x less memory",
        f"`cxrstudy status` of a {args.runs}-run study on loopback SeaweedFS (local:// broker, whole process): "
        f"current {st['current']:.2f} s (cwd=repo {st['current, cwd=repo']:.2f} s) vs baseline {st['baseline']:.2f} s: "
        f"{st['baseline'] / st['current']:.1f}x",
    ]
    print("\n" + "\n".join(lines))
    if not args.no_record:
        append_results(lines, "client")
    return 0


if __name__ == "__main__":
    sys.exit(main())
