"""Bad input, through the command line: names that would leave the store, and values out of range.

Each case runs ``cxrstudy`` in a sandbox whose store is ``a/b/store``, so a key that climbed out of
the store (``datasets/../../x``) would land in ``a/`` and show up in the snapshot; the promise is
exit 2, one line naming the file or flag and the field, no traceback, nothing changed outside the store.
"""

from __future__ import annotations

import pytest

from jobs.spec.study import expand, parse_study
from jobs.store import LocalStore
from jobs.store.records import write_study
from tests.orchestrator.bad_input import assert_rejected, cxrstudy, snapshot

STORE = "a/b/store"


@pytest.fixture
def sandbox(tmp_path):
    """A working folder with an empty store two levels down and a local broker folder."""
    (tmp_path / STORE).mkdir(parents=True)
    (tmp_path / "queue").mkdir()
    return tmp_path


def study_file(sandbox, dataset, training: str = "", preprocessing: str = "", runs: str = "{resnet18: [1]}", **more):
    """``study.yaml`` in the sandbox, over ``dataset`` (a location, or a mapping's YAML); ``more``: other
    sections (``report``, ``tracking``) as YAML."""
    text = f"name: bad\ndataset: {dataset}\n"
    text += f"preprocessing: {preprocessing}\n" if preprocessing else ""
    text += f"training: {training}\n" if training else ""
    text += "".join(f"{section}: {value}\n" for section, value in more.items())
    (sandbox / "study.yaml").write_text(text + f"runs: {runs}\n")
    return "study.yaml"


def submit(sandbox):
    """``cxrstudy submit study.yaml`` to the sandbox's store and local broker."""
    return cxrstudy("submit", "study.yaml", "--store", STORE, "--broker", f"local://{sandbox / 'queue'}", cwd=sandbox)


# --- names that would leave the store -----------------------------------------------------------------
def test_dataset_id_in_the_study_file(sandbox, synthetic):
    study_file(sandbox, f"{{location: {synthetic}, id: ../../../x}}")
    before = snapshot(sandbox)
    proc = cxrstudy("run", "study.yaml", "--store", STORE, cwd=sandbox)
    assert_rejected(
        proc, "study.yaml: dataset.id: use letters", "'../../../x'", sandbox=sandbox, before=before, allowed=(STORE,)
    )


@pytest.mark.parametrize("dataset_id", ["../../x", "../../../x", "nih/../../../x", ".."])
def test_dataset_id_flag_of_prepare(sandbox, synthetic, dataset_id):
    before = snapshot(sandbox)
    proc = cxrstudy(
        "prepare", "--dataset", synthetic, "--store", STORE, "--dataset-id", dataset_id, "--workers", 1, cwd=sandbox
    )
    line = assert_rejected(proc, "--dataset-id: use letters", sandbox=sandbox, before=before, allowed=(STORE,))
    assert line.endswith(f"(got {dataset_id!r})")


def test_weights_key_outside_the_store(sandbox, synthetic):
    study_file(sandbox, synthetic, training="{weights: 'store:../../../../etc/hostname'}")
    before = snapshot(sandbox)
    assert_rejected(
        submit(sandbox),
        "study.yaml: training.weights: the key of store:KEY has a '..' segment",
        "(got 'store:../../../../etc/hostname')",
        sandbox=sandbox,
        before=before,
        allowed=(STORE,),
    )


@pytest.fixture
def registered(sandbox):
    """A study ``bad-1`` in the sandbox's store (no run finished: the errors come first)."""
    spec = parse_study({"name": "bad", "dataset": "/d", "runs": {"resnet18": [1]}})
    write_study(
        LocalStore(sandbox / STORE), spec.spec(), "bad-1", "datasets/d/x", expand(spec, "bad-1", "datasets/d/x")
    )
    (sandbox / "chexnet.csv").write_text("Image Index,prob_Atelectasis\n")
    return sandbox


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["bad-1", "--baseline", "../../../x=chexnet.csv"], ["--baseline '../../../x=chexnet.csv': use letters"]),
        (["bad-1", "--baseline", "a/../../x=chexnet.csv"], ["--baseline 'a/../../x=chexnet.csv': use letters"]),
        (["../../../x"], ["study id '../../../x': must be a single name (no '/', not '.' or '..'), not a path"]),
    ],
)
def test_report_names(registered, args, fragments):
    before = snapshot(registered)
    proc = cxrstudy("report", *args, "--store", STORE, cwd=registered)
    assert_rejected(proc, *fragments, sandbox=registered, before=before, allowed=(STORE,))


# --- values out of range --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sections, message",
    [
        ({"training": "{min_lr_ratio: -2}"}, "training.min_lr_ratio: must be between 0 and 1 (got -2)"),
        ({"runs": "{resnet18: [-1]}"}, "runs.resnet18[0]: must be between 0 and 4294967295 (got -1)"),
        ({"training": "{drop_rate: 1.5}"}, "training.drop_rate: must be at least 0 and less than 1 (got 1.5)"),
        (
            {"preprocessing": "{image_size: 100000}"},
            "preprocessing.image_size: must be between 16 and 2048 (got 100000)",
        ),
        (
            {"training": "{augment: {scale_min: 1.2, scale_max: 1.1}}"},
            "training.augment.scale_min: must be at most scale_max (1.1) (got 1.2)",
        ),
        ({"training": "{loss: {name: focal, alpha: 5}}"}, "training.loss.alpha: must be between 0 and 1 (got 5)"),
        ({"training": "{loss: {name: focal, gamma: -1}}"}, "training.loss.gamma: must be at least 0 (got -1)"),
        (
            {"training": "{loss: {name: bce, pos_weight: -3}}"},
            "training.loss.pos_weight: must be greater than 0 (got -3)",
        ),
        (
            {"preprocessing": "{val_fraction: 1.5}"},
            "preprocessing.val_fraction: must be greater than 0 and less than 1 (got 1.5)",
        ),
        (
            {"runs": "{resnet18: {seeds: [1], training: {min_lr_ratio: -2}}}"},
            "runs.resnet18.training.min_lr_ratio: must be between 0 and 1 (got -2)",
        ),
        ({"report": "{resamples: 10}"}, "report.resamples: must be at least 100 (got 10)"),
        ({"report": "{bootstrap_unit: study}"}, "report.bootstrap_unit: must be one of patient, image (got 'study')"),
        (
            {"tracking": "{mlflow: 'mlflow.mlops:5000'}"},
            "tracking.mlflow: must be a tracking URI such as http://mlflow:5000 or file:///path "
            "(got 'mlflow.mlops:5000')",
        ),
    ],
)
def test_values_out_of_range_in_the_study_file(sandbox, synthetic, sections, message):
    study_file(sandbox, synthetic, **sections)
    before = snapshot(sandbox)
    line = assert_rejected(submit(sandbox), sandbox=sandbox, before=before, allowed=(STORE,))
    assert line == f"cxrstudy: error: study.yaml: {message}"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--image-size", "100000"], "--image-size 100000: must be between 16 and 2048 (got 100000)"),
        (["--val-fraction", "1.5"], "--val-fraction 1.5: must be greater than 0 and less than 1 (got 1.5)"),
        (
            ["--split", "random", "--split-fractions", "0.7,0.2,0.2"],
            "--split-fractions 0.7,0.2,0.2: train, val and test must sum to 1 (got 0.7 + 0.2 + 0.2 = 1.1)",
        ),
        (["--split-fractions", "0.7,0.3"], "--split-fractions 0.7,0.3: give three fractions, TRAIN,VAL,TEST"),
        (["--split-fractions", "0.6,0.2,0.2"], "--split-fractions 0.6,0.2,0.2: only with split: random"),
    ],
)
def test_values_out_of_range_as_prepare_flags(sandbox, synthetic, flags, message):
    before = snapshot(sandbox)
    proc = cxrstudy("prepare", "--dataset", synthetic, "--store", STORE, *flags, "--workers", 1, cwd=sandbox)
    line = assert_rejected(proc, sandbox=sandbox, before=before, allowed=(STORE,))
    assert line.startswith(f"cxrstudy: error: {message}")
