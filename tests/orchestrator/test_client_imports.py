"""The client commands load no training stack: `submit`, `status`, `list` without torch, timm or OpenCV (nor
numba or MLflow, which a client has but need not wait for)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "timm", "cv2")
# Installed in a client, but slow to import and not needed to submit or watch: the compiled bootstrap's
# numba (its llvmlite) and MLflow's client.
SLOW = ("numba", "llvmlite", "mlflow")

STUDY = """\
name: client-check
dataset: {dataset}
preprocessing: {{image_size: 32, shard_size: 64}}
training: {{epochs: 1, batch_size: 16}}
runs:
  densenet121: [1, 2]
  efficientnet_b2: [3]
"""


def run_cli_in_one_process(tmp_path: Path, dataset: Path) -> dict:
    """`submit`, `status`, `list` in one fresh interpreter; which heavy modules each left loaded."""
    study = tmp_path / "study.yaml"
    study.write_text(STUDY.format(dataset=dataset))
    script = textwrap.dedent(
        f"""
        import contextlib, io, json, sys
        from orchestrator.cli import main
        common = ["--store", {str(tmp_path / "store")!r}, "--broker", "local://{tmp_path / "broker"}"]
        seen = {{}}
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            codes = [main(["submit", {str(study)!r}, *common])]
        sid = out.getvalue().strip().splitlines()[-1]
        for name, argv in (("submit", None), ("status", ["status", sid, *common]), ("list", ["list", *common[:2]])):
            if argv:
                with contextlib.redirect_stdout(out):
                    codes.append(main(argv))
            seen[name] = [m for m in {HEAVY + SLOW!r} if m in sys.modules]
        print(json.dumps({{"codes": codes, "seen": seen, "sid": sid, "out": out.getvalue()}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_submit_status_and_list_load_no_training_stack(tmp_path, synthetic):
    result = run_cli_in_one_process(tmp_path, synthetic)
    assert result["codes"] == [0, 0, 0]
    assert result["seen"] == {"submit": [], "status": [], "list": []}
    sid = result["sid"]
    assert sid.startswith("client-check-")
    # status printed one row per run, all queued (no worker runs here), and list names the study
    assert f"study {sid}: 3 runs: 3 queued" in result["out"]
    assert f"{sid}  " in result["out"]


def test_a_training_command_in_a_client_install_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    from orchestrator import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert cli.main(["make-synthetic", "/nonexistent/never-written"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "cxrstudy: error: `cxrstudy make-synthetic` needs the training stack (torch not installed): "
        "pip install 'cxrstudy[train]' (the client commands submit, status, results, ... work without it)"
    )
    assert not Path("/nonexistent/never-written").exists()
