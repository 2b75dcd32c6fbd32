"""Architecture names are checked against a list shipped with the package, kept equal to timm's."""

import pytest

from jobs.errors import ConfigError, StudyFileError
from jobs.spec.architectures import check_architecture, known_architectures, listed_timm_version, render_list
from jobs.spec.study import parse_study


def test_the_shipped_list_is_the_installed_timms():
    import timm

    assert listed_timm_version() == timm.__version__, (
        "jobs/spec/timm_architectures.txt was generated from another timm: "
        "run `python -m jobs.spec.architectures --write`"
    )
    assert list(known_architectures()) == timm.list_models()
    from importlib import resources

    assert resources.files("jobs.spec").joinpath("timm_architectures.txt").read_text() == render_list()


def test_known_names_pass_and_a_typo_names_the_nearest():
    for name in ("densenet121", "efficientnet_b2", "test_resnet", "resnet50"):
        check_architecture(name)
    with pytest.raises(ConfigError, match=r"unknown architecture 'densenet12'; nearest timm names: densenet121"):
        check_architecture("densenet12")


def test_a_study_file_with_an_unknown_architecture_names_file_and_field():
    pattern = r"^s\.yaml: runs\.efficientnet_b9: unknown architecture 'efficientnet_b9'"
    with pytest.raises(StudyFileError, match=pattern):
        parse_study({"name": "a", "dataset": "d", "runs": {"efficientnet_b9": [1]}}, "s.yaml")
