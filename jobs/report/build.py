"""A study's report from every run's files in the store, under ``studies/<id>/report/``:

    report.md                     per architecture (per arm: an architecture with a variant, in a study with
                                  variants) the reference's four sections, then mean +/- std, then the
                                  part beyond the reference (:mod:`jobs.report.beyond_reference`)
    runs.csv                      one row per run: status, loss, Avg AUROC/F1, per-class AUROC and F1
    <arch>_overall.csv            Seed, Loss, Avg AUROC, Avg F1, Avg Brier, Avg ECE
    <arch>_calibration.csv        per seed and the ensemble: Brier and ECE per class and on average
    <arch>_per_class_auroc.csv    Class x seeds
    <arch>_best_seed.csv          Class, Best Seed, Highest AUROC
    <arch>_ensemble.csv           per class: seeds' mean and std, the seed ensemble's AUROC, CI and F1
    <arch>_bootstrap_ci.csv       per seed and class: AUROC and its bootstrap 95% interval
    architectures.csv             mean and std over seeds per architecture (no variants)
    delong.csv                    paired DeLong tests between the architectures' seed ensembles (no variants)
    arms.csv, effects.csv         with variants: mean and std per arm, and the variant effects
                                  (:mod:`jobs.report.effects`)
    baselines.csv, baselines_delong.csv   external baselines, when the study has any
    compare_delong.csv            the pairs asked for with ``cxrstudy report --compare``
    compute.csv                   per run: attempts, wall and GPU seconds, versions, GPU, determinism
    report.json                   everything above, structured (NaN as null)
    figures/*.png                 seed spread and reliability per architecture, ROC curves, Avg AUROC per seed,
                                  the variant effects

<arch> is the architecture's timm name, or the arm's name (``densenet121@plain-focal``) with variants.

Runs that have not succeeded are listed in the report with their state (from
:func:`jobs.store.records.run_state`, the one place a run's state is decided), not dropped silently;
a run whose result.json cannot be read is one of them (failed, its error naming the file). A
succeeded run's result.json that lacks a field the report needs, or a predictions file that is
cut short, stops the report with a :class:`DamagedArtifact` naming the key and what to do.
Building again rewrites the same files: it is idempotent, and report.md is written last.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from jobs.data.labels import CLASSES
from jobs.errors import DamagedArtifact
from jobs.report import beyond_reference
from jobs.report.compute import compute_section
from jobs.report.options import ReportOptions, load_options
from jobs.report.reference import (
    MEAN_STD_COLUMNS,
    SeedRun,
    architecture_section,
    best_seeds,
    cross_architecture_section,
    has_calibration,
    mean_std_numbers,
)
from jobs.report.seeds import RunPredictions
from jobs.report.tables import LOSS_NAMES, csv_text, display_name, markdown_table
from jobs.scoring.calibration import Calibration
from jobs.scoring.metrics import json_number
from jobs.scoring.predictions import Predictions, read_predictions
from jobs.store import Store, layout
from jobs.store.records import SUCCEEDED, TERMINAL, RunState, damaged, missing_fields, read_json, study_states

NOT_FINISHED = "not finished"  # report.json's status of a run that has not ended
# What the report reads from a succeeded run's result.json (the trainer writes these and more); the
# validation AUROCs only when the run's predictions are read too.
REPORT_FIELDS = (
    "seed",
    "best_epoch",
    *(f"test.{f}" for f in ("images", "loss", "avg_auroc", "avg_f1")),
    *(f"test.{m}.{c}" for m in ("auroc", "f1") for c in CLASSES),
)
VAL_FIELDS = tuple(f"val.auroc.{c}" for c in CLASSES)


@dataclass
class Report:
    """What a report is made of before it is written: markdown sections, CSV texts, PNGs, report.json."""

    study_id: str
    sections: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    pngs: dict[str, bytes] = field(default_factory=dict)
    structured: dict = field(default_factory=dict)


def reported_status(state: RunState) -> str:
    """A run's status in report.json and runs.csv: its state once it has ended."""
    return state.state if state.state in TERMINAL else NOT_FINISHED


def nan_if_none(x) -> float:
    """A metric read from a result.json: null (no value) as NaN."""
    return math.nan if x is None else float(x)


def rerun(store: Store, state: RunState, key: str) -> str:
    """What to do about a damaged file (``key``) of a succeeded run: make its result again by running it again."""
    result = state.job.keys.result
    target = "it" if key == result else store.url(result)
    return f"delete {target} and `cxrstudy resume {state.job.study_id}` runs the run again"


def check_result(store: Store, state: RunState, fields: tuple[str, ...] = REPORT_FIELDS) -> None:
    """A :class:`DamagedArtifact` naming a succeeded run's result.json when it lacks one of ``fields``
    or holds something other than a number where the report reads one."""
    key = state.job.keys.result
    if missing := missing_fields(state.detail, fields):
        more = f" (and {len(missing) - 1} more fields)" if len(missing) > 1 else ""
        raise DamagedArtifact(damaged(store, key, f"it has no {missing[0]!r}{more}", rerun(store, state, key)))
    try:
        seed_run(state.detail)
        int(state.detail["best_epoch"])
    except (TypeError, ValueError) as exc:
        raise DamagedArtifact(
            damaged(store, key, f"a field is not a number ({exc})", rerun(store, state, key))
        ) from None


def seed_run(result: dict, calibration: Calibration | None = None) -> SeedRun:
    """A run's test metrics from its result.json, with its calibration when its predictions were read."""
    t = result["test"]
    nan = nan_if_none
    return SeedRun(
        result["seed"],
        nan(t["loss"]),
        nan(t["avg_auroc"]),
        nan(t["avg_f1"]),
        np.array([nan(t["auroc"][c]) for c in CLASSES]),
        *((calibration.avg_brier, calibration.avg_ece) if calibration else ()),
    )


SPLIT_NAMES = {
    "official": "NIH's official split: test_list.txt, validation carved from train_val_list.txt by patient",
    "random": "a patient-wise random split of NIH's images ({train:g}% / {val:g}% / {test:g}%), the CheXNet "
    "reimplementations' protocol, not comparable with the official split's numbers",
}


def prepared_config(store: Store, data_prefix: str) -> dict:
    """The preprocessing a run's data was prepared with (its manifest's ``config``); {} when the manifest
    cannot be read (the report then names the defaults: CLAHE, the official split)."""
    try:
        config = read_json(store, layout.manifest_key(data_prefix)) or {}
    except DamagedArtifact:
        return {}
    return config.get("config") if isinstance(config.get("config"), dict) else {}


def architecture_title(arch: str, runs: list[RunState], prep: dict, show_size: bool = False) -> tuple[str, str]:
    """The section's title and introduction, in the words of the reference write-ups, from the actual
    config: "CLAHE" only when CLAHE was on, the loss's name, the split protocol; with variants, the
    variant's name, and the input size when the arms differ in it (``show_size``)."""
    loss_name = runs[0].job.training.loss.name
    loss = LOSS_NAMES.get(loss_name, loss_name)
    test_images = next(s.detail["test"]["images"] for s in runs if s.state == SUCCEEDED)
    clahe = prep.get("clahe", True)
    size = f" at {prep.get('image_size', '?')} px" if show_size else ""
    variant = runs[0].job.variant
    arm = f" [variant {variant}]" if variant is not None else ""
    title = f"{display_name(arch)}{' (CLAHE)' if clahe else ''} with {loss}{size}{arm} — Random Seed Impact"
    fractions = prep.get("split_fractions") or {"train": 0.7, "val": 0.1, "test": 0.2}
    percent = {k: round(100 * float(v), 4) for k, v in fractions.items()}
    protocol = SPLIT_NAMES.get(prep.get("split", "official"), SPLIT_NAMES["official"]).format(**percent)
    intro = (
        f"This experiment evaluates the effect of different random seeds on the performance of the "
        f"{'CLAHE-enhanced ' if clahe else ''}{display_name(arch)} model (timm `{arch}`) trained with {loss}. All "
        f"runs use the same architecture, preprocessing, and training protocol, varying only the random seed. "
        f"Metrics are on the test split ({test_images:,} images; {protocol}); F1 uses per-class thresholds "
        f"chosen on validation."
    )
    if variant is not None:
        intro += f" This arm is the study's variant `{variant}`; the cross-arm tables below compare the arms."
    return title, intro


def seed_tables(arch: str, done: list[SeedRun]) -> tuple[dict[str, str], dict]:
    """The reference's three tables of one architecture as CSV files, and their report.json part."""
    done = sorted(done, key=lambda r: r.seed)
    best = best_seeds(done)
    calibrated = has_calibration(done)
    files = {
        f"{arch}_overall.csv": csv_text(
            [
                ["Seed", "Loss", "Avg AUROC", "Avg F1", *(["Avg Brier", "Avg ECE"] if calibrated else [])],
                *(
                    [r.seed, r.loss, r.avg_auroc, r.avg_f1, *([r.avg_brier, r.avg_ece] if calibrated else [])]
                    for r in done
                ),
            ]
        ),
        f"{arch}_per_class_auroc.csv": csv_text(
            [
                ["Class", *(f"Seed {r.seed}" for r in done)],
                *([c, *(r.auroc[k] for r in done)] for k, c in enumerate(CLASSES)),
            ]
        ),
        f"{arch}_best_seed.csv": csv_text(
            [
                ["Class", "Best Seed", "Highest AUROC"],
                *([c, "/".join(map(str, s)), v] for c, (s, v) in zip(CLASSES, best)),
            ]
        ),
    }
    structured = {
        "seeds": [r.seed for r in done],
        "overall": [
            {
                "seed": r.seed,
                "loss": r.loss,
                "avg_auroc": r.avg_auroc,
                "avg_f1": r.avg_f1,
                "avg_brier": r.avg_brier,
                "avg_ece": r.avg_ece,
            }
            for r in done
        ],
        "per_class_auroc": {c: {str(r.seed): r.auroc[k] for r in done} for k, c in enumerate(CLASSES)},
        "best_seed": {c: {"seeds": s, "auroc": v} for c, (s, v) in zip(CLASSES, best)},
    }
    return files, structured


def architectures_csv(cross: list[tuple[str, list[SeedRun]]]) -> str:
    rows = [["Architecture", "Seeds", *MEAN_STD_COLUMNS]]
    rows += [[name, len(done), *mean_std_numbers(done)] for name, done in cross]
    return csv_text(rows)


def run_predictions(store: Store, finished: list[RunState]) -> list[RunPredictions] | None:
    """Each finished run's stored validation and test predictions; None when any run lacks them."""
    keys = [s.job.keys for s in finished]
    if not all(store.exists(k.predictions(split)) for k in keys for split in ("val", "test")):
        return None
    runs = []
    for s in finished:
        check_result(store, s, VAL_FIELDS)
        val, test = (stored_predictions(store, s, split) for split in ("val", "test"))
        runs.append(
            RunPredictions(
                s.detail["seed"], np.array([nan_if_none(s.detail["val"]["auroc"][c]) for c in CLASSES]), val, test
            )
        )
    return runs


def stored_predictions(store: Store, state: RunState, split: str) -> Predictions:
    """A succeeded run's predictions on ``split``, with as many rows as its result.json counts images."""
    key = state.job.keys.predictions(split)
    predictions = read_predictions(store, key, rerun(store, state, key))
    images = (state.detail.get(split) or {}).get("images")
    if isinstance(images, int) and len(predictions.names) != images:
        what = f"{len(predictions.names):,} rows where its result.json counts {images:,} {split} images (cut short?)"
        raise DamagedArtifact(damaged(store, key, what, rerun(store, state, key)))
    return predictions


def incomplete_section(states: list[RunState]) -> str | None:
    """The table of runs without a test result, with their state and error; None when every run has one."""
    incomplete = [s for s in states if s.state != SUCCEEDED]
    if not incomplete:
        return None
    rows = [
        [
            display_name(s.job.arm),
            str(s.job.seed),
            f"`{s.job.job_id}`",
            reported_status(s),
            (s.detail.get("error") or "").replace("|", "/")[:200],
        ]
        for s in incomplete
    ]
    return "\n\n".join(
        [
            "# Runs Without a Result",
            f"{len(incomplete)} of {len(states)} runs have no test result; the tables above leave them out.",
            markdown_table(["Architecture", "Seed", "Job", "Status", "Error"], rows),
        ]
    )


def runs_csv(states: list[RunState]) -> str:
    """One row per run; a ``variant`` column after the architecture only in a study with variants."""
    variants = any(s.job.variant is not None for s in states)
    header = [
        "architecture",
        *(["variant"] if variants else []),
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
    for s in states:
        job = s.job
        arm = [job.architecture, *([job.variant] if variants else [])]
        if s.state != SUCCEEDED:
            rows.append([*arm, job.seed, job.job_id, reported_status(s)])
            continue
        r, t = s.detail, s.detail["test"]
        rows.append(
            [
                *arm,
                job.seed,
                job.job_id,
                SUCCEEDED,
                r["best_epoch"],
                t["loss"],
                t["avg_auroc"],
                t["avg_f1"],
                *(t["auroc"][c] for c in CLASSES),
                *(t["f1"][c] for c in CLASSES),
            ]
        )
    return csv_text(rows)


def json_safe(value):
    """``value`` for report.json: NaN and infinite floats as None (JSON has neither), numpy numbers as Python's."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (float, np.floating)):
        return json_number(value, None)
    if isinstance(value, np.integer):
        return int(value)
    return value


def build(study_id: str, store: Store, log: Callable[[str], None] = print, options: ReportOptions | None = None) -> str:
    """Write the study's report; returns the URL of report.md. ``options`` default to those kept with the
    study (``cxrstudy report`` sets them)."""
    options = options or load_options(store, study_id)
    doc, states = study_states(store, study_id)
    report = Report(study_id, structured={"study_id": study_id, "architectures": {}})
    groups: dict[str, list[RunState]] = {}
    for s in states:  # by arm: the architecture, with its variant in a study with variants
        groups.setdefault(s.job.arm, []).append(s)
    preps = {arm: prepared_config(store, members[0].job.data_prefix) for arm, members in groups.items()}
    show_size = len({p["image_size"] for p in preps.values() if "image_size" in p}) > 1
    variants = any(s.job.variant is not None for s in states)

    cross, beyond_inputs, arms = [], [], {}
    for arm, members in groups.items():
        finished = [s for s in members if s.state == SUCCEEDED]
        if not finished:
            continue
        for s in finished:
            check_result(store, s)
        predictions = run_predictions(store, finished)
        calibrations = {r.seed: r.calibration for r in predictions or ()}
        done = [seed_run(s.detail, calibrations.get(s.detail["seed"])) for s in finished]
        job = members[0].job
        title, intro = architecture_title(job.architecture, members, preps[arm], show_size)
        report.sections.append(architecture_section(title, done, intro))
        cross.append((display_name(arm), done))
        files, report.structured["architectures"][arm] = seed_tables(arm, done)
        report.files.update(files)
        if predictions is not None:
            beyond_inputs.append((arm, predictions))
        if variants:
            arms[arm] = (job.architecture, job.variant, done)
    if not cross:
        report.sections.insert(0, f"# Study {study_id}\n\nNo run has finished yet.")
    elif not (variants and beyond_inputs):  # with variants, the effects section has the cross-arm table
        report.sections.append(cross_architecture_section(cross))
        report.files["architectures.csv"] = architectures_csv(cross)
    if beyond_inputs:
        text, tables, report.pngs = beyond_reference.beyond_reference(
            study_id, store, beyond_inputs, options, report.structured, log, arms if variants else None
        )
        report.sections.append(text)
        report.files.update({name: csv_text(rows) for name, rows in tables.items()})
    text, rows, report.structured["compute"] = compute_section(
        store, doc.get("submitted"), states, lambda s: display_name(s.job.arm)
    )
    report.sections.append(text)
    report.files["compute.csv"] = csv_text(rows)
    if (section := incomplete_section(states)) is not None:
        report.sections.append(section)
    report.structured["runs"] = [
        {
            "job_id": s.job.job_id,
            "architecture": s.job.architecture,
            **({"variant": s.job.variant} if s.job.variant is not None else {}),
            "seed": s.job.seed,
            "status": reported_status(s),
            "result": s.detail if s.ended else None,
        }
        for s in states
    ]
    report.files["runs.csv"] = runs_csv(states)
    report.files["report.json"] = json.dumps(json_safe(report.structured), indent=2, allow_nan=False)
    header = f"<!-- cxrstudy report of study {doc['study_id']} ({doc['spec']['name']}) -->\n\n"
    url = write(store, report, header + "\n\n".join(report.sections) + "\n")
    done_count = sum(s.state == SUCCEEDED for s in states)
    log(f"aggregate: {done_count}/{len(states)} runs reported -> {url}")
    return url


def write(store: Store, report: Report, markdown: str) -> str:
    """Every file of the report, report.md last; returns report.md's URL."""
    sid = report.study_id
    for name, text in report.files.items():
        store.put_text(layout.report_key(sid, name), text)
    for name, data in report.pngs.items():
        store.put_bytes(layout.report_key(sid, f"figures/{name}"), data)
    store.put_text(layout.report_markdown_key(sid), markdown)
    return store.url(layout.report_markdown_key(sid))
