"""``cxrstudy report``: baselines and requested comparisons kept with the study, figures in the report."""

import csv
import io
import json

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jobs import aggregate
from jobs.data.labels import CLASSES
from jobs.errors import ConfigError, PredictionsError, StoreError
from jobs.report import figures
from jobs.scoring.predictions import predictions_csv
from jobs.spec.study import expand, parse_study
from jobs.store import LocalStore
from jobs.store.records import write_study
from orchestrator.reporting import report
from tests.orchestrator.test_cli import assert_one_line_error, cxrstudy

HEADER = ["Image Index", *(f"prob_{c}" for c in CLASSES)]


def baseline_csv(names, probs) -> str:
    """Another system's predictions: ``Image Index`` and ``prob_<Class>`` only."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(HEADER)
    for i, name in enumerate(names):
        w.writerow([name, *(f"{v:.6f}" for v in probs[i])])
    return out.getvalue()


@pytest.fixture
def study(tmp_path):
    """2 architectures x 2 seeds, finished, with per-image predictions on 300 test and 150 val images
    (3 images per patient)."""
    store = LocalStore(tmp_path / "store")
    spec = parse_study({"name": "rep", "dataset": "/d", "runs": {"densenet121": [1, 2], "efficientnet_b2": [1, 2]}})
    jobs = expand(spec, "rep-1", "datasets/d/x")
    write_study(store, spec.spec(), "rep-1", "datasets/d/x", jobs)
    rng = np.random.default_rng(0)
    split = {}
    for name, n in (("test", 300), ("val", 150)):
        labels = (rng.random((n, 14)) < 0.2).astype(np.uint8)
        split[name] = ([f"{name}{i:05d}.png" for i in range(n)], labels)
    for i, job in enumerate(jobs):
        r = np.random.default_rng(i)
        result = {"status": "succeeded", "seed": job.seed, "best_epoch": 1}
        for name, (names, labels) in split.items():
            probs = 1 / (1 + np.exp(-(labels * 1.5 - 2 + r.normal(size=labels.shape))))
            store.put_text(
                job.keys.predictions(name), predictions_csv(names, probs, labels, [i // 3 for i in range(len(names))])
            )
            auroc = {c: roc_auc_score(labels[:, k], probs[:, k]) for k, c in enumerate(CLASSES)}
            result[name] = {"images": len(names), "loss": 0.1, "avg_auroc": 0.7, "avg_f1": 0.3, "auroc": auroc}
        result["test"]["f1"] = dict.fromkeys(CLASSES, 0.3)
        store.put_text(job.keys.result, json.dumps(result))
    # A baseline that scored 250 of the 300 test images, 30 validation images, and 5 images of nowhere.
    names, labels = split["test"]
    vnames, vlabels = split["val"]
    rows = names[:250] + vnames[:30] + [f"other{i}.png" for i in range(5)]
    probs = np.vstack([labels[:250] * 0.4 + rng.random((250, 14)), vlabels[:30] * 0.4 + rng.random((30, 14))])
    probs = np.vstack([probs, rng.random((5, 14))]) / 1.4  # probabilities: in [0, 1]
    (tmp_path / "chexnet.csv").write_text(baseline_csv(rows, probs))
    return store, tmp_path, split, probs


def test_report_adds_baselines_comparisons_and_figures_and_keeps_them(study):
    store, tmp_path, split, probs = study
    md = report("rep-1", store, [f"chexnet={tmp_path / 'chexnet.csv'}"], [["densenet121:1", "chexnet"]], 200)
    assert "## Comparison With External Baselines" in md
    assert "| chexnet (250 images)" in md
    assert "scored on 250 of 300 test images (50 missing from the file; 5 rows in neither the study's test" in md
    assert "thresholds from validation (30 images in the file)" in md
    assert "- **Warning:** chexnet's file has predictions for 5 images outside this study's test and validation" in md
    assert "### chexnet vs DenseNet-121 (250 test images)" in md
    assert "### chexnet vs EfficientNet-B2 (250 test images)" in md
    assert "## Requested Comparisons (paired DeLong tests)" in md
    assert "### DenseNet-121 seed 1 vs chexnet (250 test images)" in md
    # The baseline's per-class AUROC is scikit-learn's on the same rows.
    names, labels = split["test"]
    rows = list(csv.DictReader(io.StringIO(store.get_text("studies/rep-1/report/baselines.csv"))))
    for k, c in enumerate(CLASSES):
        got = next(float(r["AUROC"]) for r in rows if r["Class"] == c)
        assert got == pytest.approx(roc_auc_score(labels[:250, k], probs[:250, k]), abs=1e-12)
    info = json.loads(store.get_text("studies/rep-1/report/report.json"))["baselines"]["chexnet"]
    assert (info["images"], info["missing"], info["extra"]) == (250, 50, 5)
    # Every figure the markdown links exists, at its stated size.
    linked = [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert sorted(linked) == sorted(
        [
            "figures/densenet121_seed_spread.png",
            "figures/densenet121_reliability.png",
            "figures/efficientnet_b2_seed_spread.png",
            "figures/efficientnet_b2_reliability.png",
            "figures/roc_curves.png",
            "figures/avg_auroc_seeds.png",
        ]
    )
    sizes = {"roc_curves.png": figures.ROC_GRID_SIZE, "avg_auroc_seeds.png": figures.AVG_AUROC_SIZE}
    for rel in linked:
        image = cv2.imdecode(np.frombuffer(store.get_bytes(f"studies/rep-1/report/{rel}"), np.uint8), 1)
        size = figures.RELIABILITY_SIZE if rel.endswith("_reliability.png") else figures.SEED_SPREAD_SIZE
        w, h = sizes.get(rel.split("/")[1], size)
        assert image.shape == (h, w, 3)
    # A later aggregate (a worker's, after resume) keeps the baseline, the comparison and the resamples.
    aggregate.run("rep-1", store, log=lambda m: None)
    again = store.get_text("studies/rep-1/report/report.md")
    assert "### DenseNet-121 seed 1 vs chexnet" in again and "| chexnet (250 images)" in again
    assert "(200 resamples of the 100 test patients, each drawn patient with all of their images (300 test" in again


def test_the_bootstrap_unit_is_kept_with_the_study_and_named_in_the_report(study):
    store, *_ = study
    md = report("rep-1", store, resamples=200, bootstrap_unit="image", log=lambda m: None)
    assert "(200 resamples of the 300 test images of 100 patients, percentile method)" in md
    aggregate.run("rep-1", store, log=lambda m: None)
    info = json.loads(store.get_text("studies/rep-1/report/report.json"))["bootstrap"]
    assert info == {
        "unit": "image",
        "unit_asked": "image",
        "resamples": 200,
        "test_images": 300,
        "test_patients": 100,
    }
    with pytest.raises(ConfigError, match="--bootstrap-unit visit: use one of patient, image"):
        report("rep-1", store, bootstrap_unit="visit")
    report("rep-1", store, bootstrap_unit="patient", log=lambda m: None)
    info = json.loads(store.get_text("studies/rep-1/report/report.json"))["bootstrap"]
    assert (info["unit"], info["resamples"]) == ("patient", 200)


def test_runs_without_patients_fall_back_to_images_and_the_report_says_so(study):
    store, *_ = study
    key = (
        "studies/rep-1/jobs/"
        + next(o.key.split("/")[3] for o in store.list("studies/rep-1/jobs/"))
        + "/predictions_test.csv"
    )
    lines = [line.split(",") for line in store.get_text(key).splitlines()]
    store.put_text(key, "".join(",".join([cells[0], *cells[2:]]) + "\n" for cells in lines))  # an older run's file
    md = report("rep-1", store, resamples=200, log=lambda m: None)
    assert "- **The intervals resample images, not patients**: the runs' predictions files do not record" in md
    assert "(200 resamples of the 300 test images, percentile method)" in md
    info = json.loads(store.get_text("studies/rep-1/report/report.json"))["bootstrap"]
    assert (info["unit"], info["unit_asked"], info["test_patients"]) == ("image", "patient", None)


def test_report_checks_everything_before_writing_anything(study):
    store, tmp_path, _, _ = study
    good = f"chexnet={tmp_path / 'chexnet.csv'}"
    with pytest.raises(ConfigError, match="no architecture, run or baseline 'resnet50'; known: densenet121, "):
        report("rep-1", store, [good], [["densenet121", "resnet50"]])
    (tmp_path / "bad.csv").write_text("Image Index,prob_Atelectasis\nx.png,0.1\n")
    with pytest.raises(PredictionsError, match="missing 13 of the 14 probability columns"):
        report("rep-1", store, [good, f"bad={tmp_path / 'bad.csv'}"], [])
    with pytest.raises(ConfigError, match="names an architecture of the study"):
        report("rep-1", store, [f"densenet121={tmp_path / 'chexnet.csv'}"], [])
    with pytest.raises(ConfigError, match="NAME=PREDICTIONS.csv"):
        report("rep-1", store, [str(tmp_path / "chexnet.csv")], [])
    assert not store.exists("studies/rep-1/report_options.json")
    assert not list(store.list("studies/rep-1/baselines/")) and not store.exists("studies/rep-1/report/report.md")


def test_cli_report_errors_are_one_line(study):
    store, tmp_path, _, _ = study
    proc = cxrstudy("report", "rep-1", "--store", store.root, "--compare", "densenet121", "nope")
    assert_one_line_error(proc, "--compare densenet121 nope", "known: densenet121, efficientnet_b2, densenet121:1")
    proc = cxrstudy("report", "nope-1", "--store", store.root)
    assert_one_line_error(proc, "no study 'nope-1'")


@pytest.mark.parametrize(
    "sid, baselines, message",
    [
        ("no-such-1", ["a/../x=chexnet.csv"], r"^--baseline 'a/\.\./x=chexnet\.csv': use letters, digits"),
        ("../../x", [], r"^study id '\.\./\.\./x': must be a single name \(no '/', not '\.' or '\.\.'\), not a path$"),
    ],
)
def test_report_names_never_leave_the_store(tmp_path, sid, baselines, message):
    """A baseline's name is checked before the store is read; a study id is a name, never a path."""
    store = LocalStore(tmp_path / "a" / "store")
    spec = parse_study({"name": "rep", "dataset": "/d", "runs": {"densenet121": [1]}})
    write_study(store, spec.spec(), "rep-1", "datasets/d/x", expand(spec, "rep-1", "datasets/d/x"))
    with pytest.raises((ConfigError, StoreError), match=message):
        report(sid, store, baselines, [])
    assert sorted(p.name for p in tmp_path.rglob("*.csv")) == []


def test_a_report_with_calibration_and_compute_is_rebuilt_byte_for_byte(study):
    store, *_ = study
    for i, job in enumerate(expand(parse_study({"name": "rep", "dataset": "/d", "runs": {"densenet121": [1, 2],
                                                "efficientnet_b2": [1, 2]}}), "rep-1", "datasets/d/x")):  # fmt: skip
        record = {
            "attempts": [{"attempt": 1, "device": "cuda:0", "seconds": 600.0 + i}],
            "wall_seconds": 600.0 + i,
            "gpu_seconds": 600.0 + i,
            "ended": f"2030-01-01T00:1{i}:00Z",
            "environment": {"torch": "2.14.1+cu130", "gpu": {"name": "NVIDIA H100 80GB HBM3", "driver": "580"}},
            "determinism": {"deterministic": False},
        }
        store.put_text(job.keys.provenance, json.dumps(record))
    aggregate.run("rep-1", store, log=lambda m: None)
    before = {o.key: store.get_bytes(o.key) for o in store.list("studies/rep-1/report/")}
    assert "studies/rep-1/report/figures/densenet121_reliability.png" in before
    assert "studies/rep-1/report/compute.csv" in before and "studies/rep-1/report/densenet121_calibration.csv" in before
    aggregate.run("rep-1", store, log=lambda m: None)
    assert {o.key: store.get_bytes(o.key) for o in store.list("studies/rep-1/report/")} == before
