import textwrap
from pathlib import Path

import pytest

from jobs.errors import StudyFileError
from jobs.spec.study import expand, load_study_file, study_id

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
            r"preprocessing.clip_limit must be positive",
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
