"""What the commands check before they write, and how a study whose runs did not all succeed ends."""

from __future__ import annotations

import os

import pytest

from jobs.errors import CxrStudyError
from jobs.spec.study import expand, parse_study
from jobs.store import LocalStore
from jobs.store.records import write_cancelled, write_error, write_result, write_study
from orchestrator import commands
from worker.settings import Settings


@pytest.mark.parametrize(
    "where, problem",
    [
        ("file.txt/out", "{tmp}/file.txt is a file, not a folder"),
        ("file.txt", "{tmp}/file.txt is a file, not a folder"),
        ("/proc/self/out", "/proc/self is not writable"),  # read-only even to root
    ],
)
def test_an_output_folder_that_cannot_be_written_is_refused_before_anything_is_written(tmp_path, where, problem):
    (tmp_path / "file.txt").write_text("")
    path = tmp_path / where
    with pytest.raises(CxrStudyError) as caught:
        commands.check_writable(path, "--out")
    assert str(caught.value) == f"--out {path}: {problem.format(tmp=tmp_path)}; pick a folder you can write to"


def test_a_read_only_file_system_is_refused_and_a_writable_folder_is_not_created(tmp_path, monkeypatch):
    commands.check_writable(tmp_path / "a" / "b", "--out")
    assert os.listdir(tmp_path) == []  # checked, not created
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # what access(2) says on a read-only mount (EROFS)
    with pytest.raises(CxrStudyError, match=rf"^--out {tmp_path}/a/b: {tmp_path} is not writable; pick a folder"):
        commands.check_writable(tmp_path / "a" / "b", "--out")


def test_a_study_whose_runs_did_not_all_succeed_ends_with_one_line_naming_them(tmp_path, capsys):
    store = LocalStore(tmp_path / "store")
    spec = parse_study({"name": "st", "dataset": "/d", "runs": {"densenet121": [1, 2, 3]}})
    ok, broken, stopped = jobs = expand(spec, "st-1", "datasets/d/h")
    write_study(store, spec.spec(), "st-1", "datasets/d/h", jobs)
    write_result(store, ok, {"status": "succeeded"})
    settings = Settings(store=str(tmp_path / "store"))
    write_error(store, broken, "RuntimeError: PytorchStreamReader failed", final=True)
    write_cancelled(store, stopped)

    assert commands._ended_badly(settings, "st-1") == 1
    assert capsys.readouterr().err.splitlines() == [
        f"cxrstudy: error: study st-1: 2 of 3 runs did not succeed: densenet121 seed 2 failed, see "
        f"{store.url(broken.keys.error)}; densenet121 seed 3 cancelled"
    ]
    write_result(store, broken, {"status": "succeeded"})
    write_result(store, stopped, {"status": "succeeded"})
    assert commands._ended_badly(settings, "st-1") == 0 and capsys.readouterr().err == ""
