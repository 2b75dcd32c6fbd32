import textwrap
from pathlib import Path

import pytest

from jobs.errors import ConfigError, StudyFileError
from jobs.spec.study import check_option_name, expand, load_study_file, parse_study, study_id

ROOT = Path(__file__).resolve().parents[3]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(text))
    return path


MINIMAL = """\
    name: s1
    dataset: ./data
    training: {epochs: 2, lr: 1e-4}
    runs:
      densenet121: [12, 22]
      efficientnet_b2: {seeds: [22], training: {lr: 3.0e-4, drop_path: 0.1}}
    """


def test_minimal_study_parses_with_overrides_and_relative_dataset(tmp_path):
    study = load_study_file(write(tmp_path, MINIMAL))
    assert study.dataset == str(tmp_path / "data")
    dense, eff = study.runs
    assert dense.seeds == (12, 22) and dense.training.lr == 1e-4 and dense.training.epochs == 2
    assert eff.training.lr == 3e-4 and eff.training.drop_path == 0.1 and eff.training.epochs == 2
    assert dense.training.loss.name == "focal" and dense.training.loss.args == {"alpha": 0.25, "gamma": 2.0}


def test_baselines_are_read_beside_the_study_file_and_leave_the_ids_alone(tmp_path):
    plain = load_study_file(write(tmp_path, MINIMAL))
    study = load_study_file(write(tmp_path, MINIMAL + "baselines: {chexnet: preds/chexnet.csv, b2: s3://bkt/p.csv}\n"))
    assert study.baselines == (("chexnet", str(tmp_path / "preds" / "chexnet.csv")), ("b2", "s3://bkt/p.csv"))
    assert study_id(study, "abc") == study_id(plain, "abc")  # a baseline changes the report, not the runs


@pytest.mark.parametrize(
    ("section", "read", "expected", "cases"),
    [
        (
            "report: {bootstrap_unit: image, resamples: 2000}",
            lambda s: (s.report.bootstrap_unit, s.report.resamples),
            ("image", 2000),
            [
                (
                    "report: {bootstrap_unit: visit}",
                    r"report\.bootstrap_unit: must be one of patient, image \(got 'visit'\)",
                ),
                ("report: {resamples: 10}", r"report\.resamples: must be at least 100 \(got 10\)"),
                ("report: {bootstrap: image}", r"report\.bootstrap: unknown key; did you mean 'bootstrap_unit'\?"),
            ],
        ),
        (
            "tracking: {mlflow: 'http://mlflow:5000', experiment: cxr}",
            lambda s: (s.tracking.mlflow, s.tracking.experiment),
            ("http://mlflow:5000", "cxr"),
            [
                (
                    "tracking: {mlflow: 'mlflow:5000'}",
                    r"tracking\.mlflow: must be a tracking URI such as http://mlflow:5000",
                ),
                ("tracking: {mlflow_uri: x}", r"tracking\.mlflow_uri: unknown key; did you mean 'mlflow'\?"),
                ("tracking: yes", r"tracking: must be a mapping \(got True\)"),
            ],
        ),
    ],
    ids=["report", "tracking"],
)
def test_report_and_tracking_settings_are_read_checked_and_leave_the_ids_alone(
    tmp_path, section, read, expected, cases
):
    plain = load_study_file(write(tmp_path, MINIMAL))
    study = load_study_file(write(tmp_path, MINIMAL + section + "\n"))
    assert read(study) == expected
    assert read(plain) == (None, None)
    assert study_id(study, "abc") == study_id(plain, "abc")  # they change the report or the tracking, not the runs
    for text, message in cases:
        with pytest.raises(StudyFileError, match=rf"^{tmp_path / 'study.yaml'}: {message}"):
            load_study_file(write(tmp_path, MINIMAL + text + "\n"))


def test_ids_are_content_hashes(tmp_path):
    study = load_study_file(write(tmp_path, MINIMAL))
    sid = study_id(study, "abc")
    assert sid == study_id(study, "abc") and sid != study_id(study, "abd") and sid.startswith("s1-")
    jobs = expand(study, sid, "datasets/x/abc")
    assert [(j.architecture, j.seed) for j in jobs] == [
        ("densenet121", 12),
        ("densenet121", 22),
        ("efficientnet_b2", 22),
    ]
    assert [j.job_id for j in jobs] == [j.job_id for j in expand(study, sid, "datasets/x/abc")]
    assert len({j.job_id for j in jobs}) == 3 and jobs[0].keys.prefix == f"studies/{sid}/jobs/{jobs[0].job_id}"


def test_shipped_examples_parse():
    ref = load_study_file(ROOT / "examples" / "reference-study.yaml")
    assert {g.architecture: g.seeds for g in ref.runs} == {
        "densenet121": (12, 22, 32, 42),
        "efficientnet_b2": (22, 32, 42),
    }
    assert ref.preprocessing.clip_limit == 2.0 and ref.preprocessing.tile_grid == 8
    assert ref.training.loss.name == "focal"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "name: a\ndataset: d\nruns: {densenet12: [1]}\n",
            r"runs.densenet12: unknown architecture 'densenet12'; nearest timm names: densenet121",
        ),
        (
            "name: a\ndataset: d\ntraining: {epocs: 3}\nruns: {densenet121: [1]}\n",
            r"training.epocs: unknown key; did you mean 'epochs'\?",
        ),
        (
            "name: a\ndataset: d\ntraining: {lr: fast}\nruns: {densenet121: [1]}\n",
            r"training.lr: must be a number \(got 'fast'\)",
        ),
        (
            "name: a\ndataset: d\ntraining: {batch_size: 0}\nruns: {densenet121: [1]}\n",
            r"training.batch_size: must be at least 1",
        ),
        (
            "name: a\ndataset: d\ntraining: {loss: {name: focal, beta: 2}}\nruns: {densenet121: [1]}\n",
            r"training.loss.beta: not an argument of the focal loss",
        ),
        ("name: a\ndataset: d\nruns: {densenet121: [1, 1]}\n", r"runs.densenet121: a seed is listed twice"),
        ("name: a\ndataset: d\nruns: {densenet121: [x]}\n", r"runs.densenet121\[0\]: must be a whole number"),
        ("name: a\nruns: {densenet121: [1]}\n", r"dataset: missing \(required\)"),
        (
            "name: a\ndataset: d\npreprocessing: {clip_limit: -1}\nruns: {densenet121: [1]}\n",
            r"preprocessing\.clip_limit: must be greater than 0 \(got -1\)$",
        ),
        ("name: a\ndataset: d\nruns: {densenet121: [1]\n", r"study.yaml, line \d+: not valid YAML"),
        (
            "name: a\ndataset: d\nruns: {densenet121: [1]}\nbaselines: [x.csv]\n",
            r"baselines: must map a name to a predictions CSV",
        ),
        (
            "name: a\ndataset: d\nruns: {densenet121: [1]}\nbaselines: {densenet121: x.csv}\n",
            r"baselines.densenet121: the name of an architecture in runs",
        ),
        (
            "name: a\ndataset: d\nruns: {densenet121: [1]}\nbaselines: {a/b: x.csv}\n",
            r"baselines.a/b: use letters",
        ),
        (
            "name: a\ndataset: {location: d, id: ../../x}\nruns: {densenet121: [1]}\n",
            r"dataset.id: use letters, digits, '\.', '_' and '-' only, starting with a letter or digit \(got "
            r"'\.\./\.\./x'\)",
        ),
    ],
)
def test_bad_study_files_name_the_file_and_field(tmp_path, text, message):
    with pytest.raises(StudyFileError, match=message) as info:
        load_study_file(write(tmp_path, text))
    assert str(info.value).startswith(str(tmp_path / "study.yaml"))
    assert "\n" not in str(info.value)


def study_text(training: str = "", runs: str = "{densenet121: [1]}", preprocessing: str = "") -> str:
    """A one-architecture study file with the given mappings."""
    text = "name: a\ndataset: d\n"
    text += f"preprocessing: {preprocessing}\n" if preprocessing else ""
    text += f"training: {training}\n" if training else ""
    return text + f"runs: {runs}\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (study_text("{min_lr_ratio: -2}"), r"training\.min_lr_ratio: must be between 0 and 1 \(got -2\)"),
        (
            study_text(runs="{densenet121: [-1]}"),
            r"runs\.densenet121\[0\]: must be between 0 and 4294967295 \(got -1\)",
        ),
        (
            study_text(runs="{densenet121: [1, 4294967296]}"),
            r"runs\.densenet121\[1\]: must be between 0 and 4294967295 \(got 4294967296\)",
        ),
        (study_text("{drop_rate: 1.5}"), r"training\.drop_rate: must be at least 0 and less than 1 \(got 1\.5\)"),
        (
            study_text(preprocessing="{image_size: 100000}"),
            r"preprocessing\.image_size: must be between 16 and 2048 \(got 100000\)",
        ),
        (
            study_text(preprocessing="{val_fraction: 1.5}"),
            r"preprocessing\.val_fraction: must be greater than 0 and less than 1 \(got 1\.5\)",
        ),
        (
            study_text("{augment: {scale_min: 1.2, scale_max: 1.1}}"),
            r"training\.augment\.scale_min: must be at most scale_max \(1\.1\) \(got 1\.2\)",
        ),
        (study_text("{loss: {name: focal, alpha: 5}}"), r"training\.loss\.alpha: must be between 0 and 1 \(got 5\)"),
        (study_text("{loss: {name: focal, gamma: -1}}"), r"training\.loss\.gamma: must be at least 0 \(got -1\)"),
        (
            study_text("{loss: {name: bce, pos_weight: -3}}"),
            r"training\.loss\.pos_weight: must be greater than 0 \(got -3\)",
        ),
        (study_text("{lr: .nan}"), r"training\.lr: must be a finite number \(got nan\)"),
        (
            study_text("{weights: 'store:../../../../etc/hostname'}"),
            r"training\.weights: the key of store:KEY has a '\.\.' segment; name an object inside the store, like "
            r"store:models/densenet121\.pth \(got 'store:\.\./\.\./\.\./\.\./etc/hostname'\)",
        ),
        # Per-architecture overrides get the same checks, under their own path.
        (
            study_text(runs="{densenet121: {seeds: [1], training: {min_lr_ratio: -2}}}"),
            r"runs\.densenet121\.training\.min_lr_ratio: must be between 0 and 1 \(got -2\)",
        ),
        (
            study_text(runs="{densenet121: {seeds: [1], training: {augment: {scale_max: 0.5}}}}"),
            r"runs\.densenet121\.training\.augment\.scale_min: must be at most scale_max \(0\.5\) \(got 0\.95\)",
        ),
        (
            study_text(runs="{densenet121: {seeds: [1], training: {loss: {alpha: 5}}}}"),
            r"runs\.densenet121\.training\.loss\.alpha: must be between 0 and 1 \(got 5\)",
        ),
    ],
)
def test_out_of_range_values_fail_at_submit_naming_the_file_and_field(tmp_path, text, message):
    with pytest.raises(StudyFileError, match=message + "$") as info:
        load_study_file(write(tmp_path, text))
    assert str(info.value).startswith(f"{tmp_path / 'study.yaml'}: ")


def test_ranges_include_their_ends_and_nothing_beyond(tmp_path):
    training = "{min_lr_ratio: 1, drop_rate: 0, loss: {name: bce}, augment: {scale_min: 1, scale_max: 1}}"
    prep = "{image_size: 16, val_fraction: 0.5, split_seed: 0}"
    study = load_study_file(write(tmp_path, study_text(training, "{densenet121: [0, 4294967295]}", prep)))
    assert study.runs[0].seeds == (0, 4294967295) and study.training.min_lr_ratio == 1.0
    assert study.preprocessing.image_size == 16 and study.training.loss.args == {}
    for beyond in (study_text("{min_lr_ratio: 1.001}"), study_text(preprocessing="{image_size: 2049}")):
        with pytest.raises(StudyFileError, match=r": must be between "):
            load_study_file(write(tmp_path, beyond))


@pytest.mark.parametrize("value", ["../x", "a/b", ".", "..", ""])
def test_a_name_given_as_an_option_is_checked_like_one_in_the_file(value):
    with pytest.raises(ConfigError, match=r"^--dataset-id: use letters, digits, '\.', '_' and '-' only"):
        check_option_name(value, "--dataset-id")
    assert check_option_name("nih-v2.1", "--dataset-id") == "nih-v2.1" and check_option_name(None, "--x") is None


def test_a_study_that_uses_no_new_setting_keeps_its_study_and_job_ids(nih_sample):
    """Ids measured on the tree before `clahe` and `split` became settings (842de59): study.json's spec leaves
    the new fields out at their old behaviour, so resubmitting an existing study resumes it. The prepared
    dataset's hash does not depend on where the source lies (CI clones elsewhere); the study id does."""
    from jobs.data.manifest import plan

    # The dataset string is part of the study's spec: the ids were measured with the sample at this path, so the
    # study names it literally while the prepare plan reads the sample wherever this checkout finds it.
    study = parse_study(
        {
            "name": "compat",
            "dataset": "/work/shared/data/nih-sample",
            "preprocessing": {"image_size": 128},
            "runs": {"densenet121": [1, 2], "efficientnet_b2": {"seeds": [3], "training": {"lr": 3.0e-4}}},
        }
    )
    _, prefix = plan(str(nih_sample), study.preprocessing, None, log=lambda m: None)
    sid = study_id(study, prefix.rsplit("/", 1)[-1])
    assert prefix == "datasets/nih-sample/a9ebef4ed261ac55" and sid == "compat-b2bd6584d4"
    assert [j.job_id for j in expand(study, sid, prefix)] == [
        "densenet121-s1-fa313c64",
        "densenet121-s2-8ebd8a9c",
        "efficientnet_b2-s3-bc6bef5d",
    ]
    plain = parse_study({**study_spec_of(study), "preprocessing": {"image_size": 128, "clahe": False}})
    assert study_id(plain, "x") != study_id(study, "x")  # a new setting used: a new study


def study_spec_of(study) -> dict:
    return {"name": study.name, "dataset": study.dataset, "runs": {g.architecture: list(g.seeds) for g in study.runs}}


VARIANTS = (
    MINIMAL.rstrip(" ")
    + """\
    variants:
      clahe-focal: {}
      plain-focal: {preprocessing: {clahe: false}}
      clahe-bce: {training: {loss: bce}}
    """
)


def test_variants_cross_the_runs_into_arms_with_their_resolved_configs(tmp_path):
    study = load_study_file(write(tmp_path, VARIANTS))
    arms = study.arms()
    assert [a.name for a in arms] == [
        "densenet121@clahe-focal",
        "densenet121@plain-focal",
        "densenet121@clahe-bce",
        "efficientnet_b2@clahe-focal",
        "efficientnet_b2@plain-focal",
        "efficientnet_b2@clahe-bce",
    ]
    base, plain, bce = arms[3:]
    # A variant goes on top of the architecture's own training: EfficientNet-B2 keeps its lr and drop_path.
    assert bce.training.lr == 3e-4 and bce.training.drop_path == 0.1 and bce.training.loss.name == "bce"
    assert bce.training.loss.args == {} and plain.training == base.training and base.training.loss.name == "focal"
    assert plain.preprocessing.clahe is False and bce.preprocessing == base.preprocessing == study.preprocessing
    assert study.preprocessings() == [study.preprocessing, plain.preprocessing]  # two prepared datasets

    prefixes = {study.preprocessing: "datasets/x/aaa", plain.preprocessing: "datasets/x/bbb"}
    sid = study_id(study, {p: prefix.rsplit("/", 1)[1] for p, prefix in prefixes.items()})
    jobs = expand(study, sid, prefixes)
    assert [(j.arm, j.seed, j.data_prefix) for j in jobs[:4]] == [
        ("densenet121@clahe-focal", 12, "datasets/x/aaa"),
        ("densenet121@clahe-focal", 22, "datasets/x/aaa"),
        ("densenet121@plain-focal", 12, "datasets/x/bbb"),
        ("densenet121@plain-focal", 22, "datasets/x/bbb"),
    ]
    assert jobs[0].job_id.startswith("densenet121-clahe-focal-s12-") and len({j.job_id for j in jobs}) == len(jobs)
    # The job id covers the variant's resolved config: another prepared dataset, another id.
    moved = expand(study, sid, {**prefixes, plain.preprocessing: "datasets/x/ccc"})
    assert [j.job_id == k.job_id for j, k in zip(jobs, moved)] == [j.variant != "plain-focal" for j in jobs]
    # study.json's spec names every variant resolved; the id changes with any of them.
    assert [v["name"] for v in study.spec()["variants"]] == ["clahe-focal", "plain-focal", "clahe-bce"]
    assert sid != study_id(study, {study.preprocessing: "aaa", plain.preprocessing: "ccc"})
    without = load_study_file(write(tmp_path, MINIMAL))
    assert "variants" not in without.spec() and [a.variant for a in without.arms()] == [None, None]


def test_a_partial_loss_override_changes_only_the_arguments_it_gives(tmp_path):
    text = """\
        name: s1
        dataset: ./data
        training: {loss: {name: focal, alpha: 0.5, gamma: 2.0}}
        runs:
          densenet121: [1]
          efficientnet_b2: {seeds: [1], training: {loss: {gamma: 3}}}
        variants:
          base: {}
          gentle: {training: {loss: {gamma: 1}}}
          weighted-bce: {training: {loss: {name: bce, pos_weight: 2}}}
          focal-again: {training: {loss: {name: focal, gamma: 0.5}}}
          long-form: {training: {loss: {args: {gamma: 0.25}}}}
          defaults: {training: {loss: focal}}
        """
    arms = {a.name: a.training.loss for a in load_study_file(write(tmp_path, text)).arms()}
    # The recipe's alpha 0.5 stays: only gamma changes (it used to reset the loss to focal's defaults).
    assert arms["densenet121@gentle"].name == "focal" and arms["densenet121@gentle"].args == {"alpha": 0.5, "gamma": 1}
    assert arms["densenet121@focal-again"].args == {"alpha": 0.5, "gamma": 0.5}  # the same name: a change, too
    assert arms["densenet121@weighted-bce"].name == "bce" and arms["densenet121@weighted-bce"].args == {"pos_weight": 2}
    assert arms["densenet121@long-form"].args == {"alpha": 0.5, "gamma": 0.25}  # `args:` spelled out: the same
    assert arms["densenet121@defaults"].args == {"alpha": 0.25, "gamma": 2.0}  # a name alone: that loss's defaults
    # An architecture's override and a variant's stack: gamma 3 from the architecture, then 1 from the variant.
    assert arms["efficientnet_b2@base"].args == {"alpha": 0.5, "gamma": 3}
    assert arms["efficientnet_b2@gentle"].args == {"alpha": 0.5, "gamma": 1}
    on_bce = load_study_file(
        write(
            tmp_path,
            "name: s\ndataset: d\ntraining: {loss: bce}\nruns: {densenet121: [1]}\n"
            "variants: {a: {}, b: {training: {loss: {pos_weight: 3}}}}\n",
        )
    ).arms()
    assert [(a.training.loss.name, a.training.loss.args) for a in on_bce] == [("bce", {}), ("bce", {"pos_weight": 3})]


@pytest.mark.parametrize(
    "variants, message",
    [
        ('{"": {}, b: {}}', r"variants: a variant has an empty name \(''\); name it"),
        ("{~: {}}", r"variants: a variant has an empty name \(None\)"),
        ("{1: {}}", r"variants: a variant's name must be text, not 1; quote it, e.g. '1'"),
        ("{a/b: {}}", r"variants\.a/b: use letters, digits"),
        (
            "{a: {preprocesing: {clahe: false}}}",
            r"variants\.a\.preprocesing: unknown key; did you mean 'preprocessing'\?",
        ),
        ("{a: {seeds: [1]}}", r"variants\.a\.seeds: unknown key; known keys: preprocessing, training"),
        ("{a: {training: {los: bce}}}", r"variants\.a\.training\.los: unknown key; did you mean 'loss'\?"),
        ("{a: {preprocessing: {clahe: maybe}}}", r"variants\.a\.preprocessing\.clahe: must be true or false"),
        ("{a: plain}", r"variants\.a: must be a mapping of preprocessing and/or training overrides"),
        ("[a, b]", r"variants: must map each variant's name to its overrides"),
        (
            "{a: {}, b: {training: {epochs: 2}}}",
            r"variants\.b: resolves to the same preprocessing and training as variants\.a",
        ),
        (  # tile_grid is moot without CLAHE: the same prepared data
            "{a: {preprocessing: {clahe: false}}, b: {preprocessing: {clahe: false, tile_grid: 4}}}",
            r"variants\.b: resolves to the same preprocessing and training as variants\.a",
        ),
        (
            "{a: {training: {loss: bce}}, b: {training: {loss: {name: bce}}}}",
            r"variants\.b: resolves to the same preprocessing and training as variants\.a",
        ),
        (
            "{a: {}, b: {preprocessing: {split: random, split_fractions: {train: 0.7, val: 0.1, test: 0.3}}}}",
            r"variants\.b\.preprocessing\.split_fractions: train, val and test must sum to 1 \(got 0\.7 \+ 0\.1 \+ "
            r"0\.3 = 1\.1\)",
        ),
    ],
)
def test_a_bad_variant_is_a_one_line_error_naming_the_file_and_field(tmp_path, variants, message):
    path = write(tmp_path, MINIMAL + f"variants: {variants}\n")
    with pytest.raises(StudyFileError) as err:
        load_study_file(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    assert __import__("re").search(message, str(err.value)), str(err.value)


def test_the_demo_study_keeps_its_study_and_job_ids_without_variants():
    """Measured at 8dd650f, before variants existed, with the demo's dataset at /demo/data and a fixed
    prep hash: a study without `variants:` hashes exactly what it did."""
    import dataclasses

    import yaml

    text = (ROOT / "orchestrator" / "demo-study.yaml").read_text()
    demo = dataclasses.replace(parse_study(yaml.safe_load(text), "demo-study.yaml"), dataset="/demo/data")
    sid = study_id(demo, "0123456789abcdef")
    assert sid == "demo-427a92ab14"
    assert [j.job_id for j in expand(demo, sid, "datasets/data/0123456789abcdef")] == [
        "densenet121-s12-c6224930",
        "densenet121-s22-c04f6e1e",
        "efficientnet_b2-s12-c64960e8",
        "efficientnet_b2-s22-a34edd81",
    ]
    assert [j.to_json().get("variant", "absent") for j in expand(demo, sid, "datasets/data/x")] == ["absent"] * 4
