"""The aggregate job: every run of a study -> the comparison tables, under ``studies/<id>/report/``.

    report.md                  per architecture the reference's four sections, then mean +/- std
    runs.csv                   one row per run: status, loss, Avg AUROC/F1, per-class AUROC and F1
    <arch>_overall.csv         Seed, Loss, Avg AUROC, Avg F1
    <arch>_per_class_auroc.csv Class x seeds
    <arch>_best_seed.csv       Class, Best Seed, Highest AUROC
    architectures.csv          mean and std over seeds per architecture
    report.json                everything above, structured

Runs without ``result.json`` (failed, or not finished) are listed in the report, not dropped
silently. Running the job again rewrites the same files: it is idempotent, and report.md is
written last.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable

import numpy as np

from jobs import analysis, beyond
from jobs.comparison import ReportOptions, load_options
from jobs.errors import CxrStudyError
from jobs.labels import CLASSES
from jobs.predictions import read_predictions
from jobs.report import (
    LOSS_NAMES,
    SeedRun,
    architecture_section,
    best_seeds,
    cross_architecture_section,
    display_name,
    markdown_table,
)
from jobs.store import Store, open_store
from jobs.study import JobSpec


def _nan(x) -> float:
    return float("nan") if x is None else float(x)


def _csv(rows: list[list]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def collect(store: Store, study_id: str) -> tuple[dict, list[tuple[JobSpec, dict | None]]]:
    """study.json and, per job, its result.json (None when there is none), in study order."""
    key = f"studies/{study_id}/study.json"
    if not store.exists(key):
        raise CxrStudyError(f"{store.url(key)} not found: no study {study_id!r} in this store")
    study = json.loads(store.get_text(key))
    out = []
    for entry in study["jobs"]:
        job = JobSpec.from_json(entry, key)
        for name in ("result.json", "error.json", "cancelled.json"):
            if store.exists(f"{job.prefix}/{name}"):
                out.append((job, json.loads(store.get_text(f"{job.prefix}/{name}"))))
                break
        else:
            out.append((job, None))
    return study, out


def seed_run(result: dict) -> SeedRun:
    t = result["test"]
    return SeedRun(
        result["seed"],
        _nan(t["loss"]),
        _nan(t["avg_auroc"]),
        _nan(t["avg_f1"]),
        np.array([_nan(t["auroc"][c]) for c in CLASSES]),
    )


def run(study_id: str, store: Store, log: Callable[[str], None] = print, options: ReportOptions | None = None) -> str:
    """Write the study's report; returns the URL of report.md. ``options`` default to those kept
    with the study (``cxrstudy report`` sets them)."""
    options = options or load_options(store, study_id)
    study, runs = collect(store, study_id)
    prefix = f"studies/{study_id}/report"
    groups: dict[str, list[tuple[JobSpec, dict | None]]] = {}
    for job, result in runs:
        groups.setdefault(job.architecture, []).append((job, result))

    sections, cross, files, structured = [], [], {}, {"study_id": study_id, "architectures": {}}
    beyond_inputs: list[tuple[str, list[analysis.RunPredictions]]] = []
    for arch, members in groups.items():
        done = [seed_run(r) for _, r in members if r and r.get("status") == "succeeded"]
        if not done:
            continue
        loss = LOSS_NAMES.get(members[0][0].training.loss.name, members[0][0].training.loss.name)
        title = f"{display_name(arch)} (CLAHE) with {loss} — Random Seed Impact"
        test_images = next(r["test"]["images"] for _, r in members if r and r.get("status") == "succeeded")
        intro = (
            f"This experiment evaluates the effect of different random seeds on the performance of the "
            f"CLAHE-enhanced {display_name(arch)} model (timm `{arch}`) trained with {loss}. All runs use the "
            f"same architecture, preprocessing, and training protocol, varying only the random seed. "
            f"Metrics are on the test split ({test_images:,} images); F1 uses per-class thresholds chosen "
            f"on validation."
        )
        sections.append(architecture_section(title, done, intro))
        cross.append((display_name(arch), done))
        finished = [(j, r) for j, r in members if r and r.get("status") == "succeeded"]
        if all(store.exists(f"{j.prefix}/predictions_{s}.csv") for j, _ in finished for s in ("val", "test")):
            beyond_inputs.append(
                (
                    arch,
                    [
                        analysis.RunPredictions(
                            r["seed"],
                            np.array([_nan(r["val"]["auroc"][c]) for c in CLASSES]),
                            read_predictions(store, f"{j.prefix}/predictions_val.csv"),
                            read_predictions(store, f"{j.prefix}/predictions_test.csv"),
                        )
                        for j, r in finished
                    ],
                )
            )
        done.sort(key=lambda r: r.seed)
        files[f"{arch}_overall.csv"] = _csv(
            [["Seed", "Loss", "Avg AUROC", "Avg F1"], *([r.seed, r.loss, r.avg_auroc, r.avg_f1] for r in done)]
        )
        files[f"{arch}_per_class_auroc.csv"] = _csv(
            [
                ["Class", *(f"Seed {r.seed}" for r in done)],
                *([c, *(r.auroc[k] for r in done)] for k, c in enumerate(CLASSES)),
            ]
        )
        best = best_seeds(done)
        files[f"{arch}_best_seed.csv"] = _csv(
            [
                ["Class", "Best Seed", "Highest AUROC"],
                *([c, "/".join(map(str, s)), v] for c, (s, v) in zip(CLASSES, best)),
            ]
        )
        structured["architectures"][arch] = {
            "seeds": [r.seed for r in done],
            "overall": [{"seed": r.seed, "loss": r.loss, "avg_auroc": r.avg_auroc, "avg_f1": r.avg_f1} for r in done],
            "per_class_auroc": {c: {str(r.seed): r.auroc[k] for r in done} for k, c in enumerate(CLASSES)},
            "best_seed": {c: {"seeds": s, "auroc": v} for c, (s, v) in zip(CLASSES, best)},
        }

    if cross:
        sections.append(cross_architecture_section(cross))
        rows = [
            [
                "Architecture",
                "Seeds",
                "Loss mean",
                "Loss std",
                "Avg AUROC mean",
                "Avg AUROC std",
                "Avg F1 mean",
                "Avg F1 std",
            ]
        ]
        for name, done in cross:
            cols = [np.array([getattr(r, f) for r in done]) for f in ("loss", "avg_auroc", "avg_f1")]
            rows.append([name, len(done), *(v for c in cols for v in (c.mean(), c.std(ddof=1) if len(c) > 1 else ""))])
        files["architectures.csv"] = _csv(rows)

    pngs: dict[str, bytes] = {}
    if beyond_inputs:
        text, tables, pngs = beyond.beyond_reference(study_id, store, beyond_inputs, options, structured, log)
        sections.append(text)
        files.update({name: _csv(rows) for name, rows in tables.items()})

    incomplete = [(job, r) for job, r in runs if not r or r.get("status") != "succeeded"]
    if incomplete:
        rows = [
            [
                display_name(j.architecture),
                str(j.seed),
                f"`{j.job_id}`",
                (r or {}).get("status", "not finished"),
                ((r or {}).get("error") or "").replace("|", "/")[:200],
            ]
            for j, r in incomplete
        ]
        sections.append(
            "\n\n".join(
                [
                    "# Runs Without a Result",
                    f"{len(incomplete)} of {len(runs)} runs have no test result; the tables above leave them out.",
                    markdown_table(["Architecture", "Seed", "Job", "Status", "Error"], rows),
                ]
            )
        )
    if not cross:
        sections.insert(0, f"# Study {study_id}\n\nNo run has finished yet.")
    structured["runs"] = [
        {
            "job_id": j.job_id,
            "architecture": j.architecture,
            "seed": j.seed,
            "status": (r or {}).get("status", "not finished"),
            "result": r,
        }
        for j, r in runs
    ]
    files["runs.csv"] = _runs_csv(runs)
    files["report.json"] = json.dumps(structured, indent=2, default=float).replace("NaN", "null")

    for name, text in files.items():
        store.put_text(f"{prefix}/{name}", text)
    for name, data in pngs.items():
        store.put_bytes(f"{prefix}/figures/{name}", data)
    header = f"<!-- cxrstudy report of study {study['study_id']} ({study['spec']['name']}) -->\n\n"
    store.put_text(f"{prefix}/report.md", header + "\n\n".join(sections) + "\n")
    done_count = len(runs) - len(incomplete)
    log(f"aggregate: {done_count}/{len(runs)} runs reported -> {store.url(prefix + '/report.md')}")
    return store.url(f"{prefix}/report.md")


def _runs_csv(runs: list[tuple[JobSpec, dict | None]]) -> str:
    header = [
        "architecture",
        "seed",
        "job_id",
        "status",
        "best_epoch",
        "loss",
        "avg_auroc",
        "avg_f1",
        *(f"auroc_{c}" for c in CLASSES),
        *(f"f1_{c}" for c in CLASSES),
    ]
    rows = [header]
    for job, r in runs:
        if r and r.get("status") == "succeeded":
            t = r["test"]
            rows.append(
                [
                    job.architecture,
                    job.seed,
                    job.job_id,
                    "succeeded",
                    r["best_epoch"],
                    t["loss"],
                    t["avg_auroc"],
                    t["avg_f1"],
                    *(t["auroc"][c] for c in CLASSES),
                    *(t["f1"][c] for c in CLASSES),
                ]
            )
        else:
            rows.append([job.architecture, job.seed, job.job_id, (r or {}).get("status", "not finished")])
    return _csv(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.aggregate", description="Write a study's report.")
    parser.add_argument("study_id")
    parser.add_argument("--store", required=True)
    parser.add_argument("--resamples", type=int, help="bootstrap resamples (default: the study's, else 1000)")
    args = parser.parse_args(argv)
    try:
        store = open_store(args.store)
        options = load_options(store, args.study_id)
        if args.resamples:
            options.resamples = args.resamples
        run(args.study_id, store, options=options)
    except CxrStudyError as exc:
        print(f"jobs.aggregate: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
