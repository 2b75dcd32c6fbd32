"""The aggregate job over a store with damaged files: a run whose result.json cannot be read is reported
as failed, naming the file; a result that lacks what the report needs, or a predictions file cut short,
stops the report with one error naming the key and what to do (never a crash inside numpy)."""

import json
import re

import numpy as np
import pytest

from jobs.data.labels import CLASSES
from jobs.errors import DamagedArtifact
from jobs.report.build import build
from jobs.report.options import ReportOptions, save_options
from jobs.scoring.predictions import predictions_csv
from jobs.spec.study import expand, parse_study
from jobs.store import LocalStore, layout
from jobs.store.records import write_study

OPTIONS = ReportOptions(resamples=100)


@pytest.fixture
def study(tmp_path):
    """densenet121 x 2 seeds, finished, with predictions on 60 test and 40 validation images."""
    store = LocalStore(tmp_path)
    spec = parse_study({"name": "dmg", "dataset": "/d", "runs": {"densenet121": [1, 2]}})
    jobs = expand(spec, "dmg-1", "datasets/d/x")
    write_study(store, spec.spec(), "dmg-1", "datasets/d/x", jobs)
    rng = np.random.default_rng(0)
    for job in jobs:
        result = {"status": "succeeded", "seed": job.seed, "best_epoch": 1, "epochs_run": 1}
        for split, n in (("test", 60), ("val", 40)):
            names = [f"{split}{i:04d}.png" for i in range(n)]
            labels = (rng.random((n, 14)) < 0.3).astype(np.uint8)
            labels[0], labels[1] = 1, 0
            store.put_text(job.keys.predictions(split), predictions_csv(names, rng.random((n, 14)), labels, range(n)))
            scores = {"images": n, "loss": 0.1, "avg_auroc": 0.5, "avg_f1": 0.3}
            result[split] = {**scores, "auroc": dict.fromkeys(CLASSES, 0.5), "f1": dict.fromkeys(CLASSES, 0.3)}
        store.put_text(job.keys.result, json.dumps(result))
    return store, jobs


def quiet(message: str) -> None:
    pass


def test_a_truncated_result_is_a_failed_run_in_the_report_naming_the_file(study):
    store, (a, b) = study
    text = store.get_text(a.keys.result)
    store.put_text(a.keys.result, text[: len(text) // 2])
    build("dmg-1", store, log=quiet, options=OPTIONS)
    report = json.loads(store.get_text(layout.report_json_key("dmg-1")))
    assert [r["status"] for r in report["runs"]] == ["failed", "succeeded"]
    error = report["runs"][0]["result"]["error"]
    assert error.startswith(f"{store.url(a.keys.result)} is damaged: not valid JSON (")
    assert error.endswith("; `cxrstudy resume dmg-1` removes it and runs the run again")
    md = store.get_text(layout.report_markdown_key("dmg-1"))
    assert "1 of 2 runs have no test result" in md and f"`{a.job_id}` | failed | {store.url(a.keys.result)}" in md


def drop(result: dict, path: str) -> None:
    *parents, last = path.split(".")
    for part in parents:
        result = result[part]
    del result[last]


@pytest.mark.parametrize(
    "field, what",
    [
        ("test.loss", "it has no 'test.loss'"),
        ("best_epoch", "it has no 'best_epoch'"),
        ("test", "it has no 'test.images' (and 31 more fields)"),
        ("test.auroc.Hernia", "it has no 'test.auroc.Hernia'"),
        ("val.auroc.Mass", "it has no 'val.auroc.Mass'"),
        ("seed", "it has no 'seed'"),
    ],
)
def test_a_result_missing_fields_is_one_error_naming_the_file_and_field(study, field, what):
    store, (a, _) = study
    result = json.loads(store.get_text(a.keys.result))
    drop(result, field)
    store.put_text(a.keys.result, json.dumps(result))
    with pytest.raises(DamagedArtifact) as err:
        build("dmg-1", store, log=quiet, options=OPTIONS)
    assert str(err.value) == (
        f"{store.url(a.keys.result)} is damaged: {what}; delete it and `cxrstudy resume dmg-1` runs the run again"
    )
    assert not store.exists(layout.report_markdown_key("dmg-1"))


def test_a_result_with_text_where_a_number_belongs_is_damage(study):
    store, (a, _) = study
    result = json.loads(store.get_text(a.keys.result))
    result["test"]["loss"] = "low"
    store.put_text(a.keys.result, json.dumps(result))
    with pytest.raises(DamagedArtifact, match=r"result.json is damaged: a field is not a number \(could not convert"):
        build("dmg-1", store, log=quiet, options=OPTIONS)


@pytest.mark.parametrize("split", ["test", "val"])
@pytest.mark.parametrize(
    "cut, what",
    [
        (
            lambda t: t[: len(t) // 2],
            r"line \d+ has \d+ cells where 30 are expected \(the file is cut short or edited\)",
        ),
        (lambda t: "".join(t.splitlines(keepends=True)[:21]), r"20 rows where its result.json counts \d+ \w+ images"),
        (lambda t: "", r"from another version: its header is not a run's predictions header"),
    ],
)
def test_a_damaged_predictions_file_is_one_error_naming_it(study, split, cut, what):
    store, (_, b) = study
    key = b.keys.predictions(split)
    store.put_text(key, cut(store.get_text(key)))
    with pytest.raises(DamagedArtifact) as err:
        build("dmg-1", store, log=quiet, options=OPTIONS)
    message = str(err.value)
    assert message.startswith(f"{store.url(key)} is damaged")
    assert message.endswith(f"; delete {store.url(b.keys.result)} and `cxrstudy resume dmg-1` runs the run again")
    assert re.search(what, message), message


def test_damaged_report_options_stop_the_aggregate_naming_them(study):
    store, _ = study
    save_options(store, "dmg-1", OPTIONS)
    store.put_text(layout.options_key("dmg-1"), store.get_text(layout.options_key("dmg-1"))[:10])
    with pytest.raises(DamagedArtifact, match=r"/studies/dmg-1/report_options.json is damaged: not valid JSON \("):
        build("dmg-1", store, log=quiet)


def test_a_kept_baseline_on_a_percent_scale_is_a_note_not_a_crash(study):
    store, _ = study
    names = [f"test{i:04d}.png" for i in range(60)]
    rows = ["Image Index," + ",".join(f"prob_{c}" for c in CLASSES)]
    rows += [f"{n}," + ",".join(["55"] * len(CLASSES)) for n in names]
    store.put_text(layout.baseline_key("dmg-1", "pct"), "\n".join(rows) + "\n")
    build("dmg-1", store, log=quiet, options=OPTIONS)
    md = store.get_text(layout.report_markdown_key("dmg-1"))
    assert "- Baseline pct was not scored: " in md
    assert "line 2, column 'prob_Atelectasis' (column 2): '55' is not a probability between 0 and 1" in md


def test_titles_say_clahe_only_when_it_was_on_and_name_the_split_protocol(study):
    from jobs.report.build import architecture_title
    from jobs.store.records import study_states

    store, _ = study
    _, states = study_states(store, "dmg-1")
    title, intro = architecture_title("densenet121", states, {})  # no manifest: the defaults
    assert title == "DenseNet-121 (CLAHE) with Focal Loss — Random Seed Impact"
    assert (
        "the CLAHE-enhanced DenseNet-121 model" in intro and "60 images; NIH's official split: test_list.txt" in intro
    )
    plain = {"clahe": False, "split": "random", "split_fractions": {"train": 0.7, "val": 0.1, "test": 0.2}}
    title, intro = architecture_title("densenet121", states, plain)
    assert title == "DenseNet-121 with Focal Loss — Random Seed Impact" and "CLAHE" not in intro
    assert "a patient-wise random split of NIH's images (70% / 10% / 20%), the CheXNet reimplementations'" in intro


def test_a_study_with_variants_reports_every_arm_and_compares_those_with_predictions(tmp_path):
    """Four arms: two with predictions (compared), one whose runs have none (in the cross-arm table with
    its ensemble n/a, in no effect), one whose runs have not finished (left out, like a study's runs)."""
    store = LocalStore(tmp_path)
    variants = {
        "a": {},
        "b": {"training": {"loss": "bce"}},
        "c": {"training": {"lr": 1e-3}},
        "d": {"training": {"lr": 2e-3}},
    }
    spec = parse_study({"name": "v", "dataset": "/d", "runs": {"densenet121": [1, 2]}, "variants": variants})
    jobs = expand(spec, "v-1", "datasets/d/x")
    write_study(store, spec.spec(), "v-1", "datasets/d/x", jobs, datasets={"datasets/d/x": spec.preprocessing})
    rng = np.random.default_rng(1)
    labels = {split: (rng.random((n, 14)) < 0.3).astype(np.uint8) for split, n in (("test", 60), ("val", 40))}
    for job in jobs:
        if job.variant == "d":
            continue
        result = {"status": "succeeded", "seed": job.seed, "best_epoch": 1, "epochs_run": 1}
        for split, y in labels.items():
            names = [f"{split}{i:04d}.png" for i in range(len(y))]
            if job.variant != "c":
                probs = rng.random(y.shape) + (0.5 * y if job.variant == "a" else 0.0)
                store.put_text(job.keys.predictions(split), predictions_csv(names, probs / 1.5, y, range(len(y))))
            scores = {"images": len(y), "loss": 0.1, "avg_auroc": 0.5, "avg_f1": 0.3}
            result[split] = {**scores, "auroc": dict.fromkeys(CLASSES, 0.5), "f1": dict.fromkeys(CLASSES, 0.3)}
        store.put_text(job.keys.result, json.dumps(result))
    build("v-1", store, log=quiet, options=OPTIONS)
    md = store.get_text(layout.report_markdown_key("v-1"))
    assert "No run has finished yet" not in md and "# Cross-Architecture Comparison" not in md
    for variant, loss in (("a", "Focal Loss"), ("b", "BCE Loss"), ("c", "Focal Loss")):
        assert f"# DenseNet-121 (CLAHE) with {loss} [variant {variant}] — Random Seed Impact" in md
    assert "[variant d]" not in md and "2 of 8 runs have no test result" in md
    across = md[md.index("# Across Arms") : md.index("# Variant Effects")]
    rows = [line.split("|")[1:-1] for line in across.splitlines() if line.startswith("| DenseNet-121")]
    assert [(r[1].strip(), r[2].strip(), r[-1].strip()) for r in rows][2] == ("c", "2", "n/a")
    assert [r[1].strip() for r in rows] == ["a", "b", "c"]
    arms = store.get_text(layout.report_key("v-1", "arms.csv")).splitlines()
    assert [line.split(",")[0] for line in arms[1:]] == ["densenet121@a", "densenet121@b", "densenet121@c"]
    assert arms[3].split(",")[-1] == "nan"  # c: no ensemble
    assert "- DenseNet-121 (c): its runs' predictions files are missing" in md
    effects = store.get_text(layout.report_key("v-1", "effects.csv")).splitlines()
    assert {tuple(line.split(",")[2:4]) for line in effects[1:]} == {("densenet121@a", "densenet121@b")}
    assert "## DenseNet-121: a − b (60 test images; ensembles of 2 seeds each)" in md
    report = json.loads(store.get_text(layout.report_json_key("v-1")))
    assert [r.get("variant") for r in report["runs"]] == ["a", "a", "b", "b", "c", "c", "d", "d"]
    assert report["variants"]["effects"][0]["a"] == "densenet121@a"
