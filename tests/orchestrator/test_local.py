"""`cxrstudy run` in this process: a run that fails is recorded, the others go on, and the command exits 1."""

from __future__ import annotations

import csv
import io
import json
import textwrap

import numpy as np
import pytest
from scipy.stats import ttest_rel
from sklearn.metrics import roc_auc_score

from jobs import train
from jobs.data.labels import CLASSES
from jobs.data.shards import read_shard
from jobs.errors import DamagedArtifact
from jobs.scoring.predictions import read_predictions
from jobs.store import LocalStore, layout
from jobs.store.records import study_ids
from orchestrator import cli
from tests.conftest import plain_resize


def test_a_failed_run_is_recorded_the_report_written_and_the_command_exits_1(
    prepared, synthetic, tmp_path, capsys, monkeypatch
):
    store, _ = prepared  # the synthetic set is prepared there already: the study skips prepare
    study = tmp_path / "study.yaml"
    study.write_text(
        textwrap.dedent(f"""\
        name: one-fails
        dataset: {synthetic}
        preprocessing: {{image_size: 48, shard_size: 64}}
        training: {{epochs: 1, batch_size: 16, lr: 3.0e-3, warmup_epochs: 0.2, patience: 0}}
        runs: {{test_resnet: [1, 2]}}
        """)
    )
    real = train.run
    damage = "s/checkpoints/best.pt cannot be read (EOFError); it was set aside as s/best.pt.damaged-x"

    def second_seed_damaged(job, store, log):
        if job.seed == 2:
            raise DamagedArtifact(damage)  # one run's own file: the study goes on without it
        return real(job, store, log=log)

    monkeypatch.setattr(train, "run", second_seed_damaged)

    assert cli.main(["run", str(study), "--store", store.uri]) == 1

    out, err = capsys.readouterr()
    assert "is up to date (same dataset and config); skipped" in out and "# Cross-Architecture Comparison" in out
    (sid,) = [s for s in study_ids(store) if s.startswith("one-fails-")]
    jobs = {j["seed"]: j["job_id"] for j in json.loads(store.get_text(layout.study_key(sid)))["jobs"]}
    failed = layout.job_keys(sid, jobs[2])
    assert err.splitlines() == [
        f"cxrstudy: error: study {sid}: 1 of 2 runs did not succeed: test_resnet seed 2 failed, see "
        f"{store.url(failed.error)}"
    ]
    error = json.loads(store.get_text(failed.error))
    assert (error["error"], error["final"]) == (damage, True)
    assert store.exists(layout.job_keys(sid, jobs[1]).result) and store.exists(layout.report_markdown_key(sid))


def run_variant_study(tmp_path, store, dataset, variants: str, runs: str = "{test_resnet: [1, 2]}") -> str:
    """`cxrstudy run` of a small study with ``variants``; returns its id."""
    study = tmp_path / "variants.yaml"
    study.write_text(
        textwrap.dedent(f"""\
        name: arms
        dataset: {dataset}
        preprocessing: {{image_size: 48, shard_size: 64}}
        training: {{epochs: 1, batch_size: 16, lr: 3.0e-3, warmup_epochs: 0.2, patience: 0}}
        runs: {runs}
        variants: {variants}
        """)
    )
    assert cli.main(["run", str(study), "--store", store.uri]) == 0
    (sid,) = [s for s in study_ids(store) if s.startswith("arms-")]
    return sid


def ensemble_auroc(store, sid: str, jobs: list[dict]) -> np.ndarray:
    """Independently of the report: the seeds' stored test probabilities averaged, and scikit-learn's
    AUROC of each class (NaN where a class has one label only)."""
    runs = [read_predictions(store, layout.job_keys(sid, j["job_id"]).predictions("test"), "") for j in jobs]
    labels, probs = runs[0].labels, np.mean([r.probs for r in runs], axis=0)
    return np.array(
        [
            roc_auc_score(labels[:, k], probs[:, k]) if 0 < labels[:, k].sum() < len(labels) else np.nan
            for k in range(len(CLASSES))
        ]
    )


def report_csv(store, sid: str, name: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(store.get_text(layout.report_key(sid, name)))))


def test_two_loss_variants_share_one_dataset_and_their_effects_are_the_ensembles_auroc_differences(
    prepared, synthetic, tmp_path, capsys
):
    store, manifest = prepared
    sid = run_variant_study(tmp_path, store, synthetic, "{focal: {}, bce: {training: {loss: bce}}}")
    doc = json.loads(store.get_text(layout.study_key(sid)))
    assert list(doc["datasets"]) == [manifest["prefix"]]  # one prepared dataset, prepared before: shared
    assert {j["data_prefix"] for j in doc["jobs"]} == {manifest["prefix"]}
    assert [(j["variant"], j["seed"]) for j in doc["jobs"]] == [("focal", 1), ("focal", 2), ("bce", 1), ("bce", 2)]
    out = capsys.readouterr().out
    assert out.count("is up to date (same dataset and config); skipped") == 1
    for j in doc["jobs"]:  # each run's records name its variant
        keys = layout.job_keys(sid, j["job_id"])
        assert json.loads(store.get_text(keys.result))["variant"] == j["variant"]
        assert json.loads(store.get_text(keys.provenance))["variant"] == j["variant"]

    focal = ensemble_auroc(store, sid, [j for j in doc["jobs"] if j["variant"] == "focal"])
    bce = ensemble_auroc(store, sid, [j for j in doc["jobs"] if j["variant"] == "bce"])
    effects = report_csv(store, sid, "effects.csv")
    report = store.get_text(layout.report_markdown_key(sid))
    assert {(r["Kind"], r["A"], r["B"]) for r in effects} == {("variant", "test_resnet@focal", "test_resnet@bce")}
    rows = {
        r["Class"]: {
            k: (float(v) if k not in ("Kind", "Within", "A", "B", "Class", "p method") and v else v)
            for k, v in r.items()
        }
        for r in effects
    }
    # Across seeds: a paired t-test on the runs' own test Avg AUROC (from result.json), seeds 1 and 2.
    over_seeds = rows.pop("Average over seeds")
    avg = {
        (j["variant"], j["seed"]): json.loads(store.get_text(layout.job_keys(sid, j["job_id"]).result))["test"][
            "avg_auroc"
        ]
        for j in doc["jobs"]
    }
    paired = ttest_rel([avg["focal", 1], avg["focal", 2]], [avg["bce", 1], avg["bce", 2]])
    assert over_seeds["p method"] == "paired-t-seeds" and over_seeds["Images"] == ""
    assert over_seeds["AUROC A"] == pytest.approx((avg["focal", 1] + avg["focal", 2]) / 2, abs=1e-12)
    assert over_seeds["Difference"] == pytest.approx(over_seeds["AUROC A"] - over_seeds["AUROC B"], abs=1e-12)
    assert over_seeds["p"] == pytest.approx(paired.pvalue, abs=1e-12) and over_seeds["p Holm"] == over_seeds["p"]
    ci = paired.confidence_interval()
    assert (over_seeds["CI low"], over_seeds["CI high"]) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert "- **Across seeds** (each arm's runs, paired by seed over seeds 1, 2; t-test with 1 df)" in report
    compared = [c for c in rows if c != "Average"]
    assert len(compared) >= 10  # the synthetic set has two positives and negatives of most classes
    for c in compared:
        k, row = CLASSES.index(c), rows[c]
        assert row["Difference"] == pytest.approx(focal[k] - bce[k], abs=1e-12)
        assert row["CI low"] <= row["Difference"] <= row["CI high"]
        assert 0 < row["p"] <= row["p Holm"] <= 1
    average = rows["Average"]
    assert average["Difference"] == pytest.approx(np.nanmean(focal) - np.nanmean(bce), abs=1e-12)
    assert average["p method"] == "bootstrap-se"

    assert "# Cross-Architecture Comparison" not in report and "# Across Arms (mean ± std over seeds)" in report
    assert "No run has finished yet" not in report and report.count("# Across Arms") == 1
    for variant, loss in (("focal", "Focal Loss"), ("bce", "BCE Loss")):
        assert f"# test_resnet (CLAHE) with {loss} [variant {variant}] — Random Seed Impact" in report
    assert "## test_resnet: focal − bce (" in report and "**Which differences hold.** Holm-Bonferroni over" in report
    assert "![Variant effects: Avg AUROC differences with their 95% intervals](figures/effects.png)" in report
    assert store.exists(layout.report_key(sid, "figures/effects.png"))
    arms = report_csv(store, sid, "arms.csv")
    assert [(a["Arm"], a["Seeds"]) for a in arms] == [("test_resnet@focal", "2"), ("test_resnet@bce", "2")]
    ensembles = [float(a["Ensemble Avg AUROC"]) for a in arms]
    assert ensembles == pytest.approx([np.nanmean(focal), np.nanmean(bce)], abs=1e-12)


def test_two_clahe_variants_prepare_two_datasets_and_the_report_compares_the_arms(nih_sample, tmp_path):
    store = LocalStore(tmp_path / "store")
    sid = run_variant_study(tmp_path, store, nih_sample, "{clahe: {}, plain: {preprocessing: {clahe: false}}}")
    doc = json.loads(store.get_text(layout.study_key(sid)))
    datasets = doc["datasets"]
    assert len(datasets) == 2 and [d.get("clahe", True) for d in datasets.values()] == [True, False]
    manifests = sorted(o.key for o in store.list("datasets/") if o.key.endswith("/manifest.json"))
    assert manifests == sorted(f"{prefix}/manifest.json" for prefix in datasets)
    plain = next(prefix for prefix, d in datasets.items() if d.get("clahe") is False)
    assert {j["data_prefix"] for j in doc["jobs"] if j["variant"] == "plain"} == {plain}
    # The no-CLAHE shard of a real NIH image is OpenCV's INTER_AREA resize of it, byte for byte.
    manifest = json.loads(store.get_text(layout.manifest_key(plain)))
    first = manifest["splits"]["test"]["shards"][0]
    with store.open(layout.shard_key(plain, first["name"])) as fh:
        sample = next(iter(read_shard(fh, "png", "test shard", first)))
    assert sample.pixels.tobytes() == plain_resize(nih_sample / "images" / sample.image, 48).tobytes()

    report = store.get_text(layout.report_markdown_key(sid))
    assert "# test_resnet (CLAHE) with Focal Loss [variant clahe] — Random Seed Impact" in report
    assert "# test_resnet with Focal Loss [variant plain] — Random Seed Impact" in report
    assert "# Variant Effects" in report and "## test_resnet: clahe − plain (" in report
    assert "No run has finished yet" not in report
    effects = report_csv(store, sid, "effects.csv")
    assert {(r["A"], r["B"]) for r in effects} == {("test_resnet@clahe", "test_resnet@plain")}
    assert [r["Class"] for r in effects[-2:]] == ["Average", "Average over seeds"]
    runs = report_csv(store, sid, "runs.csv")
    assert list(runs[0])[:3] == ["architecture", "variant", "seed"]
    assert [r["variant"] for r in runs] == ["clahe", "clahe", "plain", "plain"]
