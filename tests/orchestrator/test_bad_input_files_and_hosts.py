"""Bad input, through the command line: an empty image, and folders or hosts the command cannot use.

A store, an ``--out`` folder or a ``local://`` broker that cannot be written (a read-only file system,
a file in the way; root ignores permissions, so the cases use a path under a regular file and
``/proc/self/...``, which even root cannot create) and a broker URL that does not parse: each is exit 2,
one line naming the path or the flag and the variable, no traceback, nothing changed in the sandbox.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from jobs.data.labels import CLASSES
from jobs.data.nih import split_labels
from jobs.spec.study import expand, parse_study
from jobs.store import LocalStore, open_store
from jobs.store.records import write_study
from tests.orchestrator.bad_input import assert_rejected, cxrstudy, snapshot

BROKER_FIX = "(fix --broker / CXRSTUDY_BROKER_URL)"


@pytest.fixture
def sandbox(tmp_path, synthetic):
    """A working folder with a study file over the synthetic set, a store, and a regular file to put paths under."""
    (tmp_path / "store").mkdir()
    (tmp_path / "file.txt").write_text("not a folder\n")
    (tmp_path / "study.yaml").write_text(
        f"name: hosts\ndataset: {synthetic}\npreprocessing: {{image_size: 32}}\nruns: {{resnet18: [1]}}\n"
    )
    return tmp_path


def test_an_empty_png_in_the_dataset(sandbox, synthetic):
    shutil.copytree(synthetic, sandbox / "nih")
    victim = sorted((sandbox / "nih" / "images").iterdir())[5]
    victim.write_bytes(b"")  # 0 bytes: OpenCV asserts (cv2.error) instead of returning None
    before = snapshot(sandbox)
    proc = cxrstudy("prepare", "--dataset", "nih", "--store", "store", "--image-size", 32, "--workers", 1, cwd=sandbox)
    assert_rejected(
        proc,
        f"{victim.name}: an empty file (0 bytes), not an image; re-extract it or delete it",
        sandbox=sandbox,
        before=before,
        allowed=("store",),
    )
    assert not list((sandbox / "store").rglob("manifest.json"))


@pytest.mark.parametrize(
    "store, why", [("file.txt/store", "Not a directory"), ("/proc/self/store", "No such file or directory")]
)
def test_a_store_that_cannot_be_written(sandbox, store, why):
    before = snapshot(sandbox)
    line = assert_rejected(
        cxrstudy("run", "study.yaml", "--store", store, cwd=sandbox),
        "is not writable",
        f"({why} in ",
        "pass a folder you can write to as --store (or CXRSTUDY_STORE)",
        sandbox=sandbox,
        before=before,
    )
    assert line.startswith("cxrstudy: error: the store /")


@pytest.fixture
def reported(sandbox):
    """A study ``hosts-1`` with a report in the sandbox's store."""
    store = LocalStore(sandbox / "store")
    spec = parse_study({"name": "hosts", "dataset": "/d", "runs": {"resnet18": [1]}})
    write_study(store, spec.spec(), "hosts-1", "datasets/d/x", expand(spec, "hosts-1", "datasets/d/x"))
    store.put_text("studies/hosts-1/report/report.md", "# Report\n")
    return sandbox


def predictions(sandbox, synthetic) -> str:
    names, labels = split_labels(open_store(synthetic), "test")
    probs = labels * 0.5 + np.random.default_rng(0).random(labels.shape) * 0.5
    lines = ["Image Index," + ",".join(f"prob_{c}" for c in CLASSES)]
    lines += [f"{n}," + ",".join(f"{v:.4f}" for v in p) for n, p in zip(names, probs)]
    (sandbox / "preds.csv").write_text("\n".join(lines) + "\n")
    return "preds.csv"


@pytest.mark.parametrize(
    "command, out, problem",
    [
        ("demo", "file.txt/demo", "{sandbox}/file.txt is a file, not a folder"),
        ("demo", "/proc/self/demo", "/proc/self is not writable"),
        ("results", "file.txt", "{sandbox}/file.txt is a file, not a folder"),
        ("evaluate", "/proc/self/out", "/proc/self is not writable"),
    ],
)
def test_an_out_folder_that_cannot_be_written(reported, synthetic, command, out, problem):
    sandbox = reported
    args = {
        "demo": ["demo", "--images", 60],
        "results": ["results", "hosts-1", "--store", "store"],
        "evaluate": ["evaluate", predictions(sandbox, synthetic), "--dataset", synthetic],
    }[command]
    before = snapshot(sandbox)
    assert_rejected(
        cxrstudy(*args, "--out", out, cwd=sandbox),
        f"--out {out}: {problem.format(sandbox=sandbox)}; pick a folder you can write to",
        sandbox=sandbox,
        before=before,
    )


@pytest.mark.parametrize(
    "url, problem",
    [
        ("local:///proc/self/broker", "its folder /proc/self/broker is not writable (No such file or directory)"),
        ("local://{sandbox}/file.txt/broker", "its folder {sandbox}/file.txt/broker is not writable (Not a directory)"),
        ("local://broker", "a local broker needs an absolute path, local:///path (three slashes)"),
        ("redis://host:abc/0", "the port is not a number from 0 to 65535; use redis://[:password@]host:port/db"),
        ("redis://:s3cret@host:6379/zero", "the database 'zero' is not a number"),
    ],
)
@pytest.mark.parametrize("given", ["--broker", "CXRSTUDY_BROKER_URL"])
def test_a_broker_that_cannot_be_used(sandbox, url, problem, given):
    url = url.format(sandbox=sandbox)
    before = snapshot(sandbox)
    flag = ["--broker", url] if given == "--broker" else []
    proc = cxrstudy(
        "submit",
        "study.yaml",
        *flag,
        "--store",
        "store",
        cwd=sandbox,
        env={"CXRSTUDY_BROKER_URL": url if given != "--broker" else ""},
    )
    line = assert_rejected(
        proc,
        f"broker URL '{url.replace('s3cret', '***')}': {problem.format(sandbox=sandbox)}",
        BROKER_FIX,
        sandbox=sandbox,
        before=before,
    )
    assert "s3cret" not in line
