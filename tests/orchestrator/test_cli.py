"""The command line as a user runs it: one-line errors, and a whole study end to end."""

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.jobs.test_aggregate import sections


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
def test_run_a_small_study_end_to_end_then_again(synthetic, tmp_path):
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
    for seed, loss, avg_auroc, avg_f1 in overall[1:]:
        t = results[int(seed)]["test"]
        assert (loss, avg_auroc, avg_f1) == (f"{t['loss']:.4f}", f"{t['avg_auroc']:.4f}", f"{t['avg_f1']:.4f}")
    per_class = tables[
        ("test_resnet (CLAHE) with Focal Loss — Random Seed Impact", "Per-Class AUROC Comparison (per seed)")
    ]
    for row in per_class[1:]:
        assert row[1:] == [f"{results[s]['test']['auroc'][row[0]]:.4f}" for s in (1, 2)]

    again = cxrstudy("run", study, "--store", store)
    assert again.returncode == 0 and again.stdout.count("result.json exists; skipped") == 3
    assert "is up to date (same dataset and config); skipped" in again.stdout


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
        for seed, _loss, avg_auroc, _f1 in overall[1:]:
            assert float(avg_auroc) >= floor, f"{arch} seed {seed}: test Avg AUROC {avg_auroc} < {floor}"
        per_class = tables[(title, "Per-Class AUROC Comparison (per seed)")]
        assert len(per_class) == 1 + 14
    assert report.count("## Summary") == 2
    # Beyond the reference: intervals, ensembles and the DeLong comparison of the two architectures.
    assert "# Beyond the Reference: Uncertainty, Seed Ensembles and Significance" in report
    for arch in floors:
        assert f"## {arch}: Seed Spread, Bootstrap Intervals and the Seed Ensemble" in report
    assert "### DenseNet-121 vs EfficientNet-B2 (seed ensembles" in report
