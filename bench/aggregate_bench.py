"""Benchmark: the aggregate job on a study of NIH's size.

A synthetic study of ``--runs`` finished runs (two architectures, half the seeds each), each with
per-image predictions on NIH's test split (25,596 images of 2,797 patients, with NIH's real number
of test images per patient: :data:`TEST_IMAGES_PER_PATIENT`) and a validation split (8,650 images),
14 classes, then ``aggregate.run`` in a fresh process (as a worker runs it, patient-level bootstrap,
the report's default): its wall time and peak memory (max RSS). Side by side in the same process, on
one run's test predictions: the compiled bootstrap against the plain-numpy reference, as a ratio
(timings on shared machines are noisy; the ratio is what carries), and the patient-level interval
against the image-level one.

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
# NIH's test split, images per patient -> patients with that many (Data_Entry_2017_v2020.csv and
# test_list.txt: 25,596 images of 2,797 patients; half the patients have one film, one has 184).
TEST_IMAGES_PER_PATIENT = {
    1: 1373, 2: 255, 3: 104, 4: 87, 5: 79, 6: 62, 7: 51, 8: 49, 9: 45, 10: 36, 11: 32, 12: 47, 13: 33, 14: 32,
    15: 28, 16: 33, 17: 20, 18: 17, 19: 17, 20: 19, 21: 21, 22: 11, 23: 20, 24: 19, 25: 17, 26: 13, 27: 9, 28: 6,
    29: 9, 30: 15, 31: 7, 32: 10, 33: 10, 34: 13, 35: 13, 36: 3, 37: 6, 38: 7, 39: 6, 40: 7, 41: 7, 42: 9, 43: 2,
    44: 4, 45: 3, 46: 7, 47: 4, 48: 2, 49: 5, 50: 4, 51: 5, 52: 2, 54: 5, 55: 7, 56: 6, 57: 1, 58: 2, 59: 2, 60: 3,
    61: 6, 62: 6, 63: 1, 64: 3, 65: 3, 66: 6, 67: 3, 68: 4, 69: 5, 71: 2, 73: 1, 74: 1, 76: 1, 77: 2, 79: 1, 80: 1,
    81: 2, 83: 1, 84: 2, 86: 3, 87: 1, 89: 1, 90: 2, 91: 1, 99: 1, 102: 1, 108: 2, 111: 1, 114: 1, 116: 2, 117: 1,
    119: 1, 130: 1, 137: 1, 143: 1, 157: 1, 158: 1, 173: 1, 184: 1,
}  # fmt: skip


def patients_of(n: int, rng: np.random.Generator) -> np.ndarray:
    """Each of ``n`` images' patient: NIH's test split's images-per-patient distribution (scaled to
    ``n`` images when it is another size), the images of a patient at random places."""
    sizes = np.repeat(list(TEST_IMAGES_PER_PATIENT), list(TEST_IMAGES_PER_PATIENT.values()))
    if sizes.sum() != n:
        sizes = np.maximum(1, np.round(sizes * n / sizes.sum())).astype(int)
        while sizes.sum() > n:  # trim the largest until the total fits
            sizes[np.argmax(sizes)] -= 1
        sizes = np.append(sizes, np.ones(n - sizes.sum(), dtype=int))
    return rng.permutation(np.repeat(np.arange(len(sizes)), sizes))


def make_study(root: Path, runs: int, n_test: int, n_val: int) -> str:
    """A study of ``runs`` finished runs with realistic predictions (seeds share an image effect)."""
    stamp = root / "bench.json"
    params = {"runs": runs, "test": n_test, "val": n_val, "patients": "nih-test, shared findings"}
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
        patients = patients_of(n, rng)
        # A patient's films share findings: 70% of each image's labels are its patient's (the prevalence holds).
        own = rng.random((n, 14)) < PREVALENCE
        shared = (rng.random((patients.max() + 1, 14)) < PREVALENCE)[patients]
        labels = np.where(rng.random((n, 14)) < 0.7, shared, own).astype(np.uint8)
        # What every seed finds hard or easy about an image, half of it shared by the patient's films.
        image_effect = np.sqrt(0.5) * (rng.normal(size=(n, 14)) + rng.normal(size=(patients.max() + 1, 14))[patients])
        split[name] = ([f"{name[0]}{i:08d}.png" for i in range(n)], labels, image_effect, patients)
    for i, job in enumerate(jobs, start=1):
        r = np.random.default_rng(1000 + i)
        result = {
            "status": "succeeded",
            "job_id": job.job_id,
            "architecture": job.architecture,
            "seed": job.seed,
            "best_epoch": 10,
        }
        for name, (names, labels, effect, patients) in split.items():
            logit = -3.0 + 1.6 * labels + 0.7 * effect + 0.6 * r.normal(size=labels.shape)
            probs = 1.0 / (1.0 + np.exp(-logit))
            store.put_text(job.keys.predictions(name), predictions_csv(names, probs, labels, patients))
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


def side_by_side(root: Path, resamples: int) -> dict[str, float]:
    """On one run's test predictions: seconds of the compiled bootstrap and of the numpy reference (both by
    patient), of drawing the patient and the image resamples, and the Avg AUROC interval's width by each."""
    from jobs.scoring.bootstrap import (
        bootstrap_auroc,
        bootstrap_auroc_reference,
        interval,
        resample_counts,
        row_nanmean,
    )
    from jobs.scoring.predictions import read_predictions

    store = LocalStore(root)
    key = next(k.key for k in store.list("studies/bench-1/jobs") if k.key.endswith("predictions_test.csv"))
    preds = read_predictions(store, key)
    n = len(preds.names)
    t0 = time.perf_counter()
    by_patient = resample_counts(n, resamples, clusters=preds.patients)
    t1 = time.perf_counter()
    by_image = resample_counts(n, resamples)
    t2 = time.perf_counter()
    bootstrap_auroc(preds.labels[:50], preds.probs[:50], by_image[:, :50])  # compile outside the timing
    t3 = time.perf_counter()
    fast = bootstrap_auroc(preds.labels, preds.probs, by_patient)
    t4 = time.perf_counter()
    slow = bootstrap_auroc_reference(preds.labels, preds.probs, by_patient)
    t5 = time.perf_counter()
    assert np.allclose(fast, slow, atol=1e-12, equal_nan=True)
    widths = [
        np.subtract(*interval(row_nanmean(b))[::-1])
        for b in (fast, bootstrap_auroc(preds.labels, preds.probs, by_image))
    ]
    delong = delong_side_by_side(store, preds)
    return {
        **delong,
        "patients": len(np.unique(preds.patients)),
        "draw_patient": t1 - t0,
        "draw_image": t2 - t1,
        "fast": t4 - t3,
        "slow": t5 - t4,
        "width_patient": widths[0],
        "width_image": widths[1],
    }


def delong_side_by_side(store: LocalStore, preds) -> dict[str, float]:
    """Two runs' paired DeLong test of every class, clustered by patient and with images independent:
    seconds of each, and the median ratio of the difference's standard errors (clustered / independent)."""
    from jobs.scoring.delong import delong_covariance
    from jobs.scoring.predictions import read_predictions

    keys = sorted(k.key for k in store.list("studies/bench-1/jobs") if k.key.endswith("predictions_test.csv"))
    other = read_predictions(store, keys[1])
    assert other.names == preds.names
    se = {}
    for unit, clusters in (("image", None), ("patient", preds.patients)):
        started = time.perf_counter()
        variances = []
        for k in range(len(CLASSES)):
            _, cov = delong_covariance(preds.labels[:, k], np.vstack([preds.probs[:, k], other.probs[:, k]]), clusters)
            variances.append(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
        se[unit] = (time.perf_counter() - started, np.sqrt(variances))
    return {
        "delong_image": se["image"][0],
        "delong_patient": se["patient"][0],
        "delong_se_ratio": float(np.median(se["patient"][1] / se["image"][1])),
    }


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
    t = side_by_side(root, args.resamples)

    lines = [
        f"aggregate: {args.runs} runs x {args.test_images:,} test images of {t['patients']:,} patients x 14 classes, "
        f"{args.resamples:,} resamples by patient: {wall:.1f} s wall, peak RSS {peak_mib:,.0f} MiB",
        f"bootstrap of one run (14 classes, by patient): compiled {t['fast']:.3f} s, numpy reference "
        f"{t['slow']:.2f} s: {t['slow'] / t['fast']:.0f}x; drawing the resamples by patient {t['draw_patient']:.3f} s, "
        f"by image {t['draw_image']:.3f} s",
        f"Avg AUROC 95% interval of one run (a patient's films share 70% of findings, half the image effect): "
        f"{t['width_patient']:.4f} wide by "
        f"patient, {t['width_image']:.4f} by image ({t['width_patient'] / t['width_image']:.2f}x)",
        f"paired DeLong tests of two runs, 14 classes: clustered by patient {t['delong_patient']:.3f} s, images "
        f"independent {t['delong_image']:.3f} s; the difference's standard error clustered is "
        f"{t['delong_se_ratio']:.2f}x the independent one (median over classes)",
    ]
    print("\n".join(lines))
    if not args.no_record:
        append_results(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
