"""Benchmark: the aggregate job on a study of NIH's size.

A synthetic study of ``--runs`` finished runs (two architectures, half the seeds each), each with
per-image predictions on NIH's test split (25,596 images) and a validation split (8,650 images),
14 classes, then ``aggregate.run`` in a fresh process (as a worker runs it): its wall time and peak
memory (max RSS). Side by side in the same process, on one run's test predictions: the compiled
bootstrap against the plain-numpy reference, as a ratio (timings on shared machines are noisy;
the ratio is what carries).

    .venv/bin/python bench/aggregate_bench.py                 # 100 runs, 1,000 resamples
    .venv/bin/python bench/aggregate_bench.py --runs 10       # quicker

The study is generated once into ``--dir`` (about 1 GB for 100 runs) and reused while its
parameters are the same. Results are appended to bench/results.md with the machine's core count.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import append_results  # noqa: E402
from jobs.data.labels import CLASSES  # noqa: E402
from jobs.scoring.predictions import predictions_csv  # noqa: E402
from jobs.spec.study import expand, parse_study  # noqa: E402
from jobs.store import LocalStore  # noqa: E402
from jobs.store.records import write_study  # noqa: E402

# NIH's test split prevalence per class (test_list.txt, in CLASSES order), rounded.
PREVALENCE = [0.119, 0.042, 0.073, 0.036, 0.181, 0.043, 0.017, 0.003, 0.236, 0.068, 0.059, 0.045, 0.022, 0.105]


def make_study(root: Path, runs: int, n_test: int, n_val: int) -> str:
    """A study of ``runs`` finished runs with realistic predictions (seeds share an image effect)."""
    stamp = root / "bench.json"
    params = {"runs": runs, "test": n_test, "val": n_val}
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        return "bench-1"
    store = LocalStore(root)
    half = runs // 2
    study = parse_study(
        {
            "name": "bench",
            "dataset": "/data/nih",
            "runs": {"densenet121": list(range(1, half + 1)), "efficientnet_b2": list(range(1, runs - half + 1))},
        }
    )
    jobs = expand(study, "bench-1", "datasets/nih/bench")
    write_study(store, study.spec(), "bench-1", "datasets/nih/bench", jobs)
    rng = np.random.default_rng(0)
    split = {}
    for name, n in (("test", n_test), ("val", n_val)):
        labels = (rng.random((n, 14)) < PREVALENCE).astype(np.uint8)
        image_effect = rng.normal(size=(n, 14))  # what every seed finds hard or easy about an image
        split[name] = ([f"{name[0]}{i:08d}.png" for i in range(n)], labels, image_effect)
    for i, job in enumerate(jobs, start=1):
        r = np.random.default_rng(1000 + i)
        result = {
            "status": "succeeded",
            "job_id": job.job_id,
            "architecture": job.architecture,
            "seed": job.seed,
            "best_epoch": 10,
        }
        for name, (names, labels, effect) in split.items():
            logit = -3.0 + 1.6 * labels + 0.7 * effect + 0.6 * r.normal(size=labels.shape)
            probs = 1.0 / (1.0 + np.exp(-logit))
            store.put_text(job.keys.predictions(name), predictions_csv(names, probs, labels))
            auroc = {c: 0.8 for c in CLASSES}  # the aggregate re-scores from the predictions where it needs to
            result[name] = {
                "images": len(names),
                "loss": 0.05,
                "avg_auroc": 0.8,
                "avg_f1": 0.3,
                "auroc": auroc,
                "f1": dict.fromkeys(CLASSES, 0.3),
            }
        store.put_text(job.keys.result, json.dumps(result))
        print(f"bench: wrote run {i}/{len(jobs)}", end="\r", flush=True)
    print()
    stamp.write_text(json.dumps(params))
    return "bench-1"


def side_by_side(root: Path, resamples: int) -> tuple[float, float]:
    """Seconds of the compiled bootstrap and of the numpy reference on one run's test predictions."""
    from jobs.scoring.bootstrap import bootstrap_auroc, bootstrap_auroc_reference, resample_counts
    from jobs.scoring.predictions import read_predictions

    store = LocalStore(root)
    key = next(k.key for k in store.list("studies/bench-1/jobs") if k.key.endswith("predictions_test.csv"))
    preds = read_predictions(store, key)
    counts = resample_counts(len(preds.names), resamples)
    bootstrap_auroc(preds.labels[:50], preds.probs[:50], counts[:, :50])  # compile outside the timing
    t0 = time.perf_counter()
    fast = bootstrap_auroc(preds.labels, preds.probs, counts)
    t1 = time.perf_counter()
    slow = bootstrap_auroc_reference(preds.labels, preds.probs, counts)
    t2 = time.perf_counter()
    assert np.allclose(fast, slow, atol=1e-12, equal_nan=True)
    return t1 - t0, t2 - t1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--test-images", type=int, default=25596)
    parser.add_argument("--val-images", type=int, default=8650)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--dir", default="/tmp/cxrstudy-bench")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/results.md")
    args = parser.parse_args()
    root = Path(args.dir)
    sid = make_study(root, args.runs, args.test_images, args.val_images)

    t0 = time.perf_counter()
    command = [sys.executable, "-m", "jobs.aggregate", sid, "--store", str(root), "--resamples", str(args.resamples)]
    subprocess.run(command, check=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    fast, slow = side_by_side(root, args.resamples)

    lines = [
        f"aggregate: {args.runs} runs x {args.test_images:,} test images x 14 classes, {args.resamples:,} resamples: "
        f"{wall:.1f} s wall, peak RSS {peak_mib:,.0f} MiB",
        f"bootstrap of one run (14 classes): compiled {fast:.3f} s, numpy reference {slow:.2f} s: {slow / fast:.0f}x",
    ]
    print("\n".join(lines))
    if not args.no_record:
        append_results(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
