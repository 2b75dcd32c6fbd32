"""Bad input, through the command line: damaged files in the store, and predictions that are no probabilities.

Each case runs ``cxrstudy`` in a sandbox with a store (``store/``) holding two finished studies whose
files are written here directly, then damages one file. A command that cannot go on exits 2 with one
line naming the file and what to do, no traceback, nothing changed outside the store and the broker
folder; ``status`` and ``list`` go on and show every other run and study, the damaged one marked.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from jobs.data.labels import CLASSES
from jobs.scoring.predictions import PROB_COLUMNS, predictions_csv
from jobs.spec.study import expand, parse_study
from jobs.store import LocalStore, layout
from jobs.store.records import write_cancelled, write_error, write_json, write_study
from tests.orchestrator.bad_input import assert_rejected, cxrstudy, snapshot

STORE, BROKER = "store", "broker"
ALLOWED = (STORE, BROKER)
RESUME = "; `cxrstudy resume alpha-1` removes it and runs the run again"


@pytest.fixture
def sandbox(tmp_path):
    """Studies ``alpha-1`` and ``beta-1``, densenet121 x seeds 1 and 2 each, finished, with predictions on
    30 test and 20 validation images: (sandbox folder, store, alpha's jobs)."""
    store = LocalStore(tmp_path / STORE)
    rng = np.random.default_rng(0)
    studies = {}
    for name in ("alpha", "beta"):
        spec = parse_study({"name": name, "dataset": "/d", "runs": {"densenet121": [1, 2]}})
        jobs = expand(spec, f"{name}-1", "datasets/d/h")
        write_study(store, spec.spec(), f"{name}-1", "datasets/d/h", jobs)
        studies[name] = jobs
        for job in jobs:
            result = {"status": "succeeded", "seed": job.seed, "best_epoch": 2, "epochs_run": 3}
            for split, n in (("test", 30), ("val", 20)):
                names = [f"{i:08d}_00{'0' if split == 'test' else '1'}.png" for i in range(n)]
                labels = (rng.random((n, 14)) < 0.3).astype(np.uint8)
                labels[0], labels[1] = 1, 0
                store.put_text(
                    job.keys.predictions(split), predictions_csv(names, rng.random((n, 14)), labels, range(n))
                )
                scores = {"images": n, "loss": 0.2, "avg_auroc": 0.5, "avg_f1": 0.3}
                result[split] = {**scores, "auroc": dict.fromkeys(CLASSES, 0.5), "f1": dict.fromkeys(CLASSES, 0.3)}
            write_json(store, job.keys.result, result)
    return tmp_path, store, studies["alpha"]


def truncate(store, key: str) -> None:
    text = store.get_text(key)
    store.put_text(key, text[: len(text) // 2])


def status(sandbox, sid: str = "alpha-1"):
    return cxrstudy("status", sid, "--store", STORE, "--broker", f"local://{sandbox / BROKER}", cwd=sandbox)


# --- status and list go on --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, write",
    [
        ("result.json", None),
        ("cancelled.json", write_cancelled),
        ("error.json", lambda store, job: write_error(store, job, "OSError: x", final=True)),
    ],
)
def test_status_shows_a_run_with_a_damaged_record_as_failed_and_the_other_runs(sandbox, name, write):
    root, store, (job, _) = sandbox
    if write is not None:
        store.delete(job.keys.result)
        write(store, job)
    truncate(store, f"{job.keys.prefix}/{name}")
    proc = status(root)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "study alpha-1: 2 runs: 1 failed, 1 succeeded; queues: gpu 0, cpu 0, running 0"
    assert lines[2].split()[:3] == ["densenet121", "1", "failed"]
    assert lines[3].split() == ["densenet121", "2", "succeeded", "3/20", "0.5000"]
    assert lines[4].startswith(
        f"  densenet121 seed 1: {root / STORE / job.keys.prefix}/{name} is damaged: not valid JSON ("
    )
    assert lines[4].endswith(RESUME)


def test_status_shows_a_damaged_progress_file_on_a_run_that_is_not_ended(sandbox):
    root, store, (job, _) = sandbox
    store.delete(job.keys.result)
    write_json(store, job.keys.progress, {"state": "running", "updated": time.time(), "epoch": 1, "worker": "w"})
    truncate(store, job.keys.progress)
    proc = status(root)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "study alpha-1: 2 runs: 1 queued, 1 succeeded; queues: gpu 0, cpu 0, running 0"
    assert lines[4].startswith(f"  densenet121 seed 1: {root / STORE / job.keys.progress} is damaged: not valid JSON (")
    assert lines[4].endswith("; the run's next heartbeat writes it again")


def test_status_of_a_result_missing_fields_shows_the_row_and_names_the_file(sandbox):
    root, store, (job, _) = sandbox
    result = json.loads(store.get_text(job.keys.result))
    del result["val"], result["epochs_run"]
    write_json(store, job.keys.result, result)
    proc = status(root)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "study alpha-1: 2 runs: 2 succeeded; queues: gpu 0, cpu 0, running 0"
    assert lines[2].split() == ["densenet121", "1", "succeeded", "?/20"]
    assert lines[4] == (
        f"  densenet121 seed 1: {job.keys.result} is damaged: it has no 'epochs_run', 'val.avg_auroc'; "
        "delete it and `cxrstudy resume alpha-1` runs the run again"
    )


def test_list_shows_every_study_and_marks_the_one_whose_study_json_is_damaged(sandbox):
    root, store, _ = sandbox
    truncate(store, layout.study_key("alpha-1"))
    proc = cxrstudy("list", "--store", STORE, cwd=root)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    alpha, beta = proc.stdout.splitlines()
    assert alpha.startswith(f"alpha-1  [damaged] {root / STORE}/studies/alpha-1/study.json is damaged: not valid JSON")
    assert alpha.endswith(
        "; submit the study file again (`cxrstudy submit STUDY.yaml` writes it anew; the runs' files are kept)"
    )
    assert beta.startswith("beta-1  ") and beta.endswith("  2 succeeded")


def test_list_shows_a_study_with_a_damaged_result_with_its_failed_run(sandbox):
    root, store, (job, _) = sandbox
    truncate(store, job.keys.result)
    proc = cxrstudy("list", "--store", STORE, cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert [line.split("  ")[-1] for line in proc.stdout.splitlines()] == ["1 failed, 1 succeeded", "2 succeeded"]


# --- commands that cannot go on: one line -------------------------------------------------------------
@pytest.mark.parametrize("command", ["status", "results", "aggregate", "report"])
def test_a_damaged_study_json_is_one_line_naming_it(sandbox, command):
    root, store, _ = sandbox
    truncate(store, layout.study_key("alpha-1"))
    before = snapshot(root)
    proc = status(root) if command == "status" else cxrstudy(command, "alpha-1", "--store", STORE, cwd=root)
    assert_rejected(
        proc,
        f"{root / STORE}/studies/alpha-1/study.json is damaged: not valid JSON (",
        "; submit the study file again (`cxrstudy submit STUDY.yaml` writes it anew",
        sandbox=root,
        before=before,
        allowed=ALLOWED,
    )


@pytest.mark.parametrize("command", ["aggregate", "report"])
def test_damaged_report_options_are_one_line_naming_them(sandbox, command):
    root, store, _ = sandbox
    store.put_text(layout.options_key("alpha-1"), '{"resamples": 100, "compare": [["densenet121:1", ')
    before = snapshot(root)
    assert_rejected(
        cxrstudy(command, "alpha-1", "--store", STORE, cwd=root),
        f"{root / STORE}/studies/alpha-1/report_options.json is damaged: not valid JSON (",
        "; delete it (the report then uses the defaults) and give `cxrstudy report alpha-1` the --resamples",
        sandbox=root,
        before=before,
        allowed=ALLOWED,
    )


@pytest.mark.parametrize("split", ["test", "val"])
def test_a_truncated_predictions_file_is_one_line_naming_it_and_its_line(sandbox, split):
    root, store, (_, job) = sandbox
    truncate(store, job.keys.predictions(split))
    before = snapshot(root)
    line = assert_rejected(
        cxrstudy("aggregate", "alpha-1", "--store", STORE, cwd=root),
        f"{root / STORE / job.keys.predictions(split)} is damaged: line ",
        " where 30 are expected (the file is cut short or edited); ",
        f"delete {root / STORE / job.keys.result} and `cxrstudy resume alpha-1` runs the run again",
        sandbox=root,
        before=before,
        allowed=ALLOWED,
    )
    assert not store.exists(layout.report_markdown_key("alpha-1")), line


def test_a_result_missing_fields_is_one_line_from_the_aggregate(sandbox):
    root, store, (job, _) = sandbox
    result = json.loads(store.get_text(job.keys.result))
    del result["test"]["loss"]
    write_json(store, job.keys.result, result)
    before = snapshot(root)
    assert_rejected(
        cxrstudy("aggregate", "alpha-1", "--store", STORE, cwd=root),
        f"{root / STORE / job.keys.result} is damaged: it has no 'test.loss'; delete it and `cxrstudy resume alpha-1`",
        sandbox=root,
        before=before,
        allowed=ALLOWED,
    )


def test_the_aggregate_reports_a_run_whose_result_is_truncated_as_failed(sandbox):
    root, store, (job, _) = sandbox
    truncate(store, job.keys.result)
    proc = cxrstudy("aggregate", "alpha-1", "--store", STORE, cwd=root)
    assert proc.returncode == 0, proc.stderr
    report = store.get_text(layout.report_markdown_key("alpha-1"))
    assert f"| failed | {root / STORE / job.keys.result} is damaged: not valid JSON (" in report


# --- predictions that are no probabilities ----------------------------------------------------------
def predictions_file(root, name: str, value: str, row: int = 1, column: int = 3) -> str:
    """A CheXNet-style file of 4 test images of the sandbox's studies, one cell set to ``value``."""
    rows = [["0.25"] * len(CLASSES) for _ in range(4)]
    rows[row][column] = value
    lines = [",".join(["Image Index", *PROB_COLUMNS])]
    lines += [",".join([f"{i:08d}_000.png", *cells]) for i, cells in enumerate(rows)]
    (root / name).write_text("\n".join(lines) + "\n")
    return name


@pytest.mark.parametrize(
    "value, why",
    [
        (
            "1.7",
            "'1.7' is not a probability between 0 and 1 (1 cell is outside [0, 1]; the values run from 0.25 to 1.7)",
        ),
        ("-3", "'-3' is not a probability between 0 and 1 (1 cell is outside [0, 1]; the values run from -3 to 0.25)"),
    ],
)
def test_evaluate_refuses_predictions_that_are_no_probabilities(sandbox, value, why):
    root, _, _ = sandbox
    name = predictions_file(root, "p.csv", value)
    before = snapshot(root)
    assert_rejected(
        cxrstudy("evaluate", name, "--dataset", "no-dataset", "--out", "out", cwd=root),
        f"p.csv, line 3, column 'prob_Edema' (column 5): {why}",
        "must be a probability",
        sandbox=root,
        before=before,
    )


def test_evaluate_refuses_a_0_100_scale(sandbox):
    root, _, _ = sandbox
    lines = [
        ",".join(["Image Index", *PROB_COLUMNS]),
        *(f"{i:08d}_000.png," + ",".join(["37.5"] * 14) for i in range(3)),
    ]
    (root / "pct.csv").write_text("\n".join(lines) + "\n")
    before = snapshot(root)
    assert_rejected(
        cxrstudy("evaluate", "pct.csv", "--dataset", "no-dataset", cwd=root),
        "pct.csv, line 2, column 'prob_Atelectasis' (column 2): '37.5' is not a probability between 0 and 1 "
        "(42 cells are outside [0, 1]; the values run from 37.5 to 37.5)",
        "divide percentages by 100",
        sandbox=root,
        before=before,
    )


@pytest.mark.parametrize("threshold", ["7", "0", "1", "-0.5", "nan"])
def test_evaluate_refuses_a_threshold_outside_0_1(sandbox, threshold):
    root, _, _ = sandbox
    name = predictions_file(root, "p.csv", "0.5")
    before = snapshot(root)
    assert_rejected(
        cxrstudy("evaluate", name, "--dataset", "no-dataset", "--threshold", threshold, cwd=root),
        f"--threshold {float(threshold):g}: the F1 threshold is a probability strictly between 0 and 1",
        sandbox=root,
        before=before,
    )


def test_report_refuses_a_baseline_that_is_no_probabilities_before_writing_anything(sandbox):
    root, _, _ = sandbox
    name = predictions_file(root, "chexnet.csv", "1.7", row=0, column=0)
    before = snapshot(root)
    assert_rejected(
        cxrstudy("report", "alpha-1", "--store", STORE, "--baseline", f"chexnet={name}", cwd=root),
        "chexnet.csv, line 2, column 'prob_Atelectasis' (column 2): '1.7' is not a probability between 0 and 1",
        sandbox=root,
        before=before,
    )
