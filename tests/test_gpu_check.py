"""`make gpu-check` (benchmarks/gpu_check.py) on the CPU, as CI runs it, and the switch
that routes CUDA tensors to the reference kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import diffeig

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"

pytest.importorskip("timm")


def gpu_check(out, *args, env=None):
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_gpu_check_runs_every_step_on_cpu(tmp_path):
    # `tests` is left out: this is the test suite already.
    res = gpu_check(tmp_path, "--skip", "tests")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    status = {k: v["status"] for k, v in summary["steps"].items()}
    assert status == {
        "build": "skipped",
        "tests": "skipped",
        "opcheck": "ok",
        "table3": "ok",
        "iterative": "ok",
        "ncut": "ok",
        "scaling": "ok",
        "train": "ok",
        "step": "ok",
    }
    solvers = json.loads((tmp_path / "train_step.json").read_text())["solvers"]
    assert set(solvers) == {"dense", "auto"}  # the authors' path and the recipe's default
    for step in solvers.values():
        for part in ("backbone forward", "NCut forward", "NCut backward", "loss backward"):
            assert step["parts"][part]["median"] > 0
        assert 0 < step["ncut_share"] < 1
    md = (tmp_path / "summary.md").read_text()
    assert "All steps passed." in md and "NCut share" in md
    for name in ("table3", "iterative", "ncut_speed", "scaling"):
        assert json.loads((tmp_path / f"{name}.json").read_text())


def test_gpu_check_names_the_failed_step(tmp_path):
    skip = ["build", "tests", "table3", "iterative", "scaling", "train", "step"]
    res = gpu_check(tmp_path, "--skip", *skip, env={"DIFFEIG_NO_EXT": "1"})
    assert res.returncode == 1
    assert "failed step(s): opcheck" in res.stderr
    assert "native kernels are not in use" in (tmp_path / "opcheck.log").read_text()


def test_disable_cuda_kernels_switch():
    code = (
        "import torch; from diffeig import _extension as e; d = torch.device; "
        "print(e.native_for(d('cuda')), e.native_for(d('cpu')) == e.has_ops())"
    )
    # switched off, CUDA takes the twins and the CPU keeps its kernels; switched on
    # ("0"), CUDA's choice is the CPU's: the native kernels wherever the extension loaded
    loaded = str(diffeig.has_ops())
    for value, expected in (("1", "False True"), ("0", f"{loaded} True")):
        env = {**os.environ, "DIFFEIG_DISABLE_CUDA_KERNELS": value}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        assert " ".join(out) == expected, value
