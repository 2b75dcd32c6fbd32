"""The command line as a user runs it: one-line errors, and a whole study end to end."""

import csv
import io
import json
import shutil
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from jobs.data.labels import CLASSES
from jobs.data.nih import split_labels
from jobs.report.figures import AVG_AUROC_SIZE, RELIABILITY_SIZE, ROC_GRID_SIZE, SEED_SPREAD_SIZE
from jobs.store import open_store
from tests.jobs.report.test_aggregate import sections


def cxrstudy(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=900,
    )


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cxrstudy: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_architecture_in_a_study_file(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("name: x\ndataset: /nowhere\nruns: {efficientnet_b22: [1]}\n")
    proc = cxrstudy("run", study, "--store", tmp_path / "store")
    assert_one_line_error(proc, str(study), "runs.efficientnet_b22: unknown architecture", "efficientnet_b2")


def test_malformed_study_file(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("name: x\nruns: [\n")
    assert_one_line_error(cxrstudy("run", study, "--store", tmp_path), str(study), "not valid YAML")
    assert_one_line_error(cxrstudy("run", tmp_path / "absent.yaml", "--store", tmp_path), "cannot read the study file")


def test_dataset_folder_without_the_csv(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    proc = cxrstudy("prepare", "--dataset", tmp_path / "data", "--store", tmp_path / "store")
    assert_one_line_error(proc, str(tmp_path / "data"), "Data_Entry_2017.csv", "point --dataset at the folder")


def test_corrupt_png(synthetic, tmp_path):
    root = tmp_path / "nih"
    shutil.copytree(synthetic, root)
    victim = sorted((root / "images").iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:100])
    proc = cxrstudy("prepare", "--dataset", root, "--store", tmp_path / "store", "--image-size", "32")
    assert_one_line_error(proc, victim.name, "not a readable image")
    assert not list((tmp_path / "store").rglob("manifest.json"))


def test_make_synthetic_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    assert_one_line_error(cxrstudy("make-synthetic", tmp_path / "x", "--images", "60"), "is not empty")


@pytest.mark.slow
def test_evaluate_scores_a_predictions_file_on_the_real_split(nih_sample, tmp_path):
    names, labels = split_labels(open_store(nih_sample), "test")
    rng = np.random.default_rng(0)
    probs = (labels[:400] * 0.3 + rng.random((400, 14))) / 1.3  # probabilities: in [0, 1]
    lines = ["Image Index," + ",".join(f"prob_{c}" for c in CLASSES)]
    lines += [f"{n}," + ",".join(f"{v:.6f}" for v in p) for n, p in zip(names[:400], probs)]
    (tmp_path / "chexnet.csv").write_text("\n".join(lines) + "\n")
    proc = cxrstudy("evaluate", tmp_path / "chexnet.csv", "--dataset", nih_sample, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert f"Scored on 400 of {len(names):,} test images; {len(names) - 400:,} images of the split are missing" in (
        proc.stdout
    )
    from sklearn.metrics import roc_auc_score

    k = CLASSES.index("Effusion")
    expected = roc_auc_score(labels[:400, k], probs[:, k].round(6))
    assert any(line.startswith("| Effusion ") and f"| {expected:.4f} |" in line for line in proc.stdout.splitlines())
    assert json.loads((tmp_path / "out" / "evaluation.json").read_text())["scored"] == 400
    (tmp_path / "bad.csv").write_text("Image Index,prob_Atelectasis\n")
    assert_one_line_error(
        cxrstudy("evaluate", tmp_path / "bad.csv", "--dataset", nih_sample), "bad.csv", "probability columns"
    )


def test_run_a_small_study_end_to_end_then_again(synthetic, tmp_path):
    # An external baseline that knows the labels of all but the last 5 test images (which it lacks).
    names, labels = split_labels(open_store(synthetic), "test")
    probs = (labels * 0.5 + np.random.default_rng(0).random(labels.shape) * 0.6) / 1.1  # in [0, 1]
    lines = ["Image Index," + ",".join(f"prob_{c}" for c in CLASSES)]
    lines += [f"{n}," + ",".join(f"{v:.4f}" for v in p) for n, p in zip(names[:-5], probs)]
    (tmp_path / "oracle.csv").write_text("\n".join(lines) + "\n")
    study = tmp_path / "study.yaml"
    study.write_text(
        textwrap.dedent(f"""\
        name: cli-e2e
        dataset: {synthetic}
        preprocessing: {{image_size: 48, shard_size: 100}}
        training: {{epochs: 2, batch_size: 16, lr: 3.0e-3, warmup_epochs: 0.2, patience: 0}}
        runs:
          test_resnet: [1, 2]
          test_efficientnet: [1]
        baselines: {{oracle: oracle.csv}}
        report: {{bootstrap_unit: image, resamples: 300}}
        """)
    )
    store = tmp_path / "store"
    proc = cxrstudy("run", study, "--store", store)
    assert proc.returncode == 0, proc.stderr
    assert "# Cross-Architecture Comparison" in proc.stdout
    (study_dir,) = (store / "studies").iterdir()
    report = (study_dir / "report" / "report.md").read_text()
    tables = sections(report)
    overall = tables[
        ("test_resnet (CLAHE) with Focal Loss — Random Seed Impact", "Overall Metrics Comparison (per seed)")
    ]
    results = {
        json.loads(p.read_text())["seed"]: json.loads(p.read_text())
        for p in study_dir.glob("jobs/test_resnet-*/result.json")
    }
    assert [row[0] for row in overall[1:]] == ["1", "2"]
    assert overall[0] == ["Seed", "Loss", "Avg AUROC", "Avg F1", "Avg Brier", "Avg ECE"]
    for seed, loss, avg_auroc, avg_f1, avg_brier, avg_ece in overall[1:]:
        t = results[int(seed)]["test"]
        assert (loss, avg_auroc, avg_f1) == (f"{t['loss']:.4f}", f"{t['avg_auroc']:.4f}", f"{t['avg_f1']:.4f}")
        # The report's calibration (from the predictions) is the trainer's (from the model's outputs).
        assert (avg_brier, avg_ece) == (f"{t['avg_brier']:.4f}", f"{t['avg_ece']:.4f}")
    per_class = tables[
        ("test_resnet (CLAHE) with Focal Loss — Random Seed Impact", "Per-Class AUROC Comparison (per seed)")
    ]
    for row in per_class[1:]:
        assert row[1:] == [f"{results[s]['test']['auroc'][row[0]]:.4f}" for s in (1, 2)]

    # The baseline is in the comparison tables, scored on the test images it has.
    n_test = results[1]["test"]["images"]
    assert f"| oracle ({n_test - 5} images)" in report
    assert f"- **oracle**: scored on {n_test - 5} of {n_test} test images (5 missing from the file" in report
    assert "**Warning:** oracle" not in report  # every row is a test image: made under this study's split
    assert (study_dir / "report" / "figures" / "roc_curves.png").stat().st_size > 10_000
    # The study file's report settings; each run's predictions name every image's patient.
    (predictions,) = study_dir.glob("jobs/test_efficientnet-*/predictions_test.csv")
    rows = list(csv.DictReader(io.StringIO(predictions.read_text())))
    assert len(rows) == n_test and all(r["Patient ID"] == str(int(r["Image Index"][:8])) for r in rows)
    patients = len({r["Patient ID"] for r in rows})
    assert f"(300 resamples of the {n_test} test images of {patients} patients, percentile method)" in report

    again = cxrstudy("run", study, "--store", store)
    assert again.returncode == 0 and again.stdout.count("result.json exists; skipped") == 3
    assert "is up to date (same dataset and config); skipped" in again.stdout

    proc = cxrstudy(
        "report",
        study_dir.name,
        "--store",
        store,
        "--compare",
        "test_resnet:1",
        "oracle",
        "--bootstrap-unit",
        "patient",
    )
    assert proc.returncode == 0, proc.stderr
    assert f"### test_resnet seed 1 vs oracle ({n_test - 5} test images)" in proc.stdout
    assert f"(300 resamples of the {patients} test patients, each drawn patient with all of their images" in proc.stdout


@pytest.mark.slow
def test_demo_learns_on_the_cpu(tmp_path):
    """The README's first command: both architectures learn from scratch on the synthetic data."""
    proc = cxrstudy("demo", "--out", tmp_path / "demo")
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "demo" / "report" / "report.md").read_text()
    assert f"report at {tmp_path / 'demo' / 'report' / 'report.md'}" in proc.stdout + proc.stderr
    assert "# Cross-Architecture Comparison" in proc.stdout
    tables = sections(report)
    floors = {"DenseNet-121": 0.80, "EfficientNet-B2": 0.70}
    for arch, floor in floors.items():
        title = f"{arch} (CLAHE) with Focal Loss — Random Seed Impact"
        assert {name for (t, name) in tables if t == title} == {
            "Overall Metrics Comparison (per seed)",
            "Per-Class AUROC Comparison (per seed)",
            "Best Seed per Class",
        }
        overall = tables[(title, "Overall Metrics Comparison (per seed)")]
        assert [row[0] for row in overall[1:]] == ["12", "22"]
        for seed, _loss, avg_auroc, *_ in overall[1:]:
            assert float(avg_auroc) >= floor, f"{arch} seed {seed}: test Avg AUROC {avg_auroc} < {floor}"
        per_class = tables[(title, "Per-Class AUROC Comparison (per seed)")]
        assert len(per_class) == 1 + 14
    assert report.count("## Summary") == 2
    # Beyond the reference: intervals, ensembles and the DeLong comparison of the two architectures.
    assert "# Beyond the Reference: Uncertainty, Seed Ensembles and Significance" in report
    for arch in floors:
        assert f"## {arch}: Seed Spread, Bootstrap Intervals and the Seed Ensemble" in report
    assert "### DenseNet-121 vs EfficientNet-B2 (" in report
    assert "# Variant Effects" not in report and "# Across Arms" not in report  # a study without variants
    figures = ["roc_curves", "avg_auroc_seeds"]
    figures += [
        f"{arch}_{kind}" for arch in ("densenet121", "efficientnet_b2") for kind in ("seed_spread", "reliability")
    ]
    for figure in figures:
        assert f"](figures/{figure}.png)" in report
        png = (tmp_path / "demo" / "report" / "figures" / f"{figure}.png").read_bytes()
        height, width = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).shape[:2]
        assert (width, height) in {SEED_SPREAD_SIZE, ROC_GRID_SIZE, AVG_AUROC_SIZE, RELIABILITY_SIZE}
    # Calibration: the table per architecture, the class averages in the overall table.
    for arch in floors:
        assert f"## {arch}: Calibration" in report
        calibration = tables[
            ("Beyond the Reference: Uncertainty, Seed Ensembles and Significance", f"{arch}: Calibration")
        ]
        assert calibration[0] == ["Class", "Brier (seeds)", "Brier (ensemble)", "ECE (seeds)", "ECE (ensemble)"]
        assert len(calibration) == 1 + 14 + 1
        overall = tables[
            (f"{arch} (CLAHE) with Focal Loss — Random Seed Impact", "Overall Metrics Comparison (per seed)")
        ]
        assert overall[0][-2:] == ["Avg Brier", "Avg ECE"] and all(0 < float(r[-2]) < 0.25 for r in overall[1:])
    # Intervals by patient, and compute: every run recorded what it ran on and for how long.
    assert "resamples of the" in report and "test patients, each drawn patient with all of their images" in report
    assert "DeLong's variances are clustered by patient (Obuchowski 1997)" in report  # the tests share the unit
    assert "# Compute and Provenance" in report and "- Wall time from submission (" in report
    import torch  # the version the runs recorded is the installed one

    records = sorted((tmp_path / "demo" / "store" / "studies").glob("*/jobs/*/provenance.json"))
    assert len(records) == 4
    for path in records:
        record = json.loads(path.read_text())
        assert record["environment"]["torch"] == torch.__version__ and record["status"] == "succeeded"
        assert record["wall_seconds"] > 0 and len(record["attempts"]) == 1
    compute = tables[("Compute and Provenance", None)]
    assert ["torch", f"`{torch.__version__}`"] in compute and ["**Study**", "4"] in [r[:2] for r in compute]
