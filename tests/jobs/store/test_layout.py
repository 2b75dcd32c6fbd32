"""The store's keys: built in one place, and user text never takes one outside the store's root."""

import pytest

from jobs.errors import StoreError
from jobs.store import layout


@pytest.mark.parametrize(
    "key, problem",
    [
        ("datasets/nih/abc/manifest.json", None),
        ("studies/.probe/study.json", None),  # a dot file is a name, not a path step
        ("/etc/hostname", "is absolute (starts with '/')"),
        ("../x", "has a '..' segment"),
        ("datasets/../../x/manifest.json", "has a '..' segment"),
        ("a/./b", "has a '.' segment"),
        ("a//b", "has an empty segment ('//' or a '/' at the end)"),
        ("a/b/", "has an empty segment ('//' or a '/' at the end)"),
        ("", "is empty"),
        ("a\0b", "contains a NUL character"),
    ],
)
def test_key_problem(key, problem):
    assert layout.key_problem(key) == problem


def test_listing_prefixes_may_be_empty_or_a_folder():
    assert layout.key_problem("", prefix=True) is None and layout.key_problem("studies/", prefix=True) is None
    assert layout.key_problem("../", prefix=True) == "has a '..' segment"


@pytest.mark.parametrize(
    "build, what, value",
    [
        (lambda v: layout.dataset_prefix(v, "0123abcd"), "dataset id", "../../x"),
        (lambda v: layout.dataset_prefix(v, "0123abcd"), "dataset id", ".."),
        (lambda v: layout.dataset_prefix(v, "0123abcd"), "dataset id", "a/b"),
        (lambda v: layout.dataset_prefix("nih", v), "prep hash", "../x"),
        (layout.study_key, "study id", "../../../x"),
        (layout.study_prefix, "study id", ""),
        (lambda v: layout.baseline_key("s-1", v), "baseline name", "../../x"),
        (lambda v: layout.job_keys("s-1", v).result, "job id", "../j"),
    ],
)
def test_user_text_is_one_segment_of_a_key(build, what, value):
    with pytest.raises(StoreError) as info:
        build(value)
    assert str(info.value) == f"{what} {value!r}: must be a single name (no '/', not '.' or '..'), not a path"


def test_names_make_keys_and_paths_do_not():
    assert layout.dataset_prefix("nih-v2.1", "0123abcd") == "datasets/nih-v2.1/0123abcd"
    assert layout.baseline_key("s-1", "chexnet") == "studies/s-1/baselines/chexnet.csv"
    assert layout.job_keys("s-1", "densenet121-s1-ab").result == "studies/s-1/jobs/densenet121-s1-ab/result.json"
    assert layout.study_key(".probe") == "studies/.probe/study.json"  # what `submit` probes the store with
    with pytest.raises(StoreError, match="^dataset id '\\.\\.': must be a single name"):
        layout.dataset_prefix("..", "0123abcd")


def test_weights_keys_stay_in_the_store():
    assert layout.weights_key("store:models/densenet121.pth") == "models/densenet121.pth"
    with pytest.raises(StoreError) as info:
        layout.weights_key("store:../../../../etc/hostname")
    assert str(info.value) == (
        "training.weights 'store:../../../../etc/hostname': the key has a '..' segment; name an object inside "
        "the store, like store:models/densenet121.pth"
    )
