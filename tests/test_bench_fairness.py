"""The comparison benchmarks keep their fairness contract (benchmarks/README.md): every
solver's pair meets the same residual bound, measured by one function after it, from a
start that is not an eigenvector; and their JSON renders."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _module(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


def test_the_residual_and_the_start_of_the_contract():
    common = _module("_common")
    g = torch.Generator().manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(40, 6, generator=g, dtype=torch.float64), dim=-1)
    W = (f @ f.T).clamp_min(0) + 1e-3
    d = W.sum(-1)
    lam, Z = torch.linalg.eigh(torch.diag(d) - W)  # not the NCut's pair: a large residual
    Wn, dn = W.numpy(), d.numpy()
    assert common.ncut_residual(Wn, dn, float(lam[1]), Z[:, 1].numpy()) > 1e-3
    s = d.rsqrt()
    mu, U = torch.linalg.eigh(s[:, None] * W * s[None, :])
    z2 = (s * U[:, -2]).numpy()
    assert common.ncut_residual(Wn, dn, float(1 - mu[-2]), z2) < 1e-12
    v = common.seeded_vector(40)
    assert np.array_equal(v, common.seeded_vector(40))  # one seed, the same start for all
    u1 = np.sqrt(dn) / np.linalg.norm(np.sqrt(dn))
    assert abs(u1 @ v) / np.linalg.norm(v) < 0.9  # not the trivial vector
    assert common.thread_env(1)["OMP_NUM_THREADS"] == "1"


@pytest.mark.slow  # a dozen child processes, each importing torch
def test_sparse_and_token_graph_comparisons_meet_one_residual_bound(tmp_path):
    report = _module("report")
    out = tmp_path / "sparse.json"
    cmd = [sys.executable, str(BENCH / "sparse_ncut.py"), "--sizes", "24", "--batch", ""]
    cmd += ["--island", "0", "--warmup", "0", "--repeats", "1", "--threads", "1"]
    subprocess.run(cmd + ["--json", str(out)], check=True, capture_output=True, cwd=ROOT)
    d = json.loads(out.read_text())
    (row,) = d["results"]
    assert {"diffeig", "ARPACK", "ARPACK, projected", "scipy lobpcg"} <= set(row["solvers"])
    for name, r in row["solvers"].items():
        assert r["residual"] < 10 * d["args"]["tol"], name
        assert r["l2_rel_diff_vs_arpack"] < 1e-4, name
    assert "ARPACK, projected" in report.render("sparse_ncut", [str(out)])
    targets = report.render("sparse_targets", [str(out)])
    assert "24 px, 1 thread(s): diffeig forward + backward <= the fastest peer's" in targets

    out = tmp_path / "token.json"
    cmd = [sys.executable, str(BENCH / "token_graph.py"), "--sizes", "64", "--repeats", "1"]
    subprocess.run(cmd + ["--threads", "1", "--json", str(out)], check=True, capture_output=True)
    d = json.loads(out.read_text())
    for row in d["results"]:
        for name, r in row["solvers"].items():
            assert r["residual"] < 100 * d["args"]["tol"], (row["graph"], name)
            assert r["l2_rel_diff_vs_arpack"] < 1e-6, (row["graph"], name)
    assert "projected / diffeig" in report.render("token_graph", [str(out)])
