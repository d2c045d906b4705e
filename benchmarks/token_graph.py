"""One token graph at a time: diffeig's LOBPCG forward against scipy's ARPACK, batch 1.

    python benchmarks/token_graph.py [--sizes 784 3600] [--repeats 25] [--threads 1 2]
        [--profile] [--json out.json]

The normalized cut ``(D - W) z = l D z`` of one dense token graph, k = 2, float64, each
solver to the same tolerance (diffeig's float64 default, 1e-9), under the fairness
contract (benchmarks/README.md): the same seeded random start, warm-up and repeats, each
thread count of ``--threads`` for both (each in its own process), and after each the
relative residual ``||(D - W) z - l D z|| / ||D z||`` of its Fiedler pair:

- diffeig: ``sym_eigh_ncut(W, 2, method="lobpcg")`` (forward only, no gradient kept),
  which deflates the trivial pair analytically;
- ARPACK: ``scipy.sparse.linalg.eigsh`` on ``x -> D^-1/2 W D^-1/2 x`` (W read in place,
  the degrees included in the time), ``which='LA'``, k = 2, from the seeded random vector;
- ARPACK, projected: the same operator with the trivial vector ``D^1/2 1`` projected out,
  k = 1 (the structure diffeig uses, given to ARPACK too).

Graphs (seeded): "two clusters", the recipe's key-like features (an elliptical foreground
and background prototype plus smooth noise; ``benchmarks/_common.synthetic_features``)
with the training affinity (cosine, tau = 0, eps = 1e-6); "TokenCut", the same features
with TokenCut's binary graph (1 where cos > 0.2, else 1e-5); "no clusters", i.i.d.
Gaussian features with the training affinity. Medians of ``--repeats`` runs of each
solver in a row, each after a rest (``SETTLE``) and its own warm-up (interleaved runs
evict each other's W from the cache, and the timings then swing 3x; and NumPy's BLAS
threads spin for a while after ARPACK's products, taking the cores from whatever runs
next); diffeig's products with W (Lanczos steps for one graph, ``method='lobpcg'``,
k = 2), ARPACK's products, and l2 against each other.
``--profile`` splits diffeig's forward into its products with W and the rest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch
from _common import (
    load_average,
    median_timing,
    metadata,
    ncut_residual,
    seeded_vector,
    synthetic_features,
    thread_env,
    write_json,
)

import diffeig
from diffeig.ncut import affinity

GRAPHS = ("two clusters", "TokenCut", "no clusters")
# Seconds of rest before each solver's runs: NumPy's BLAS threads spin for about 0.1 s
# after ARPACK's products and took the cores from diffeig's next runs (3x its time at
# N = 784), and torch's threads do the same to ARPACK.
SETTLE = 0.5


def token_graph(kind: str, n: int, seed: int = 0) -> torch.Tensor:
    side = round(n**0.5)
    if kind == "no clusters":
        g = torch.Generator().manual_seed(seed)
        f = torch.nn.functional.normalize(torch.randn(1, n, 64, generator=g), dim=-1)
    else:
        f = synthetic_features(1, side, 64, seed=seed)
    mode = "binary" if kind == "TokenCut" else "weighted"
    tau, eps = (0.2, 1e-5) if kind == "TokenCut" else (0.0, 1e-6)
    return affinity(f.double(), tau=tau, eps=eps, mode=mode)[0]


def ours(W: torch.Tensor, tol: float):
    with torch.no_grad():
        lam, z = diffeig.sym_eigh_ncut(W, 2, method="lobpcg", tol=tol)
    return float(lam[1]), z[:, 1].numpy()


class Arpack:
    """ARPACK from W itself, each call timed whole: the degrees, then ``eigsh`` on the
    operator ``x -> s * (W @ (s * x))``, ``s = d^-1/2`` (W is read in place, as diffeig
    reads it: no normalized copy to allocate), ``which='LA'``, k = 2, from the seeded
    random vector; ``projected``: with ``D^1/2 1`` projected out, k = 1."""

    def __init__(self, W: torch.Tensor, projected: bool = False):
        self.W = W.numpy()  # shares W's memory
        self.v0 = seeded_vector(W.shape[-1])
        self.projected = projected
        self.products = 0

    def __call__(self, tol: float):
        from scipy.sparse.linalg import LinearOperator, eigsh

        self.products = 0
        W = self.W
        d = W.sum(1)
        s = 1 / np.sqrt(d)

        def mv(x):
            self.products += 1
            x = x.reshape(-1)
            return s * (W @ (s * x))

        if self.projected:
            u1 = np.sqrt(d) / np.linalg.norm(np.sqrt(d))

            def proj(x):
                return x - u1 * (u1 @ x)

            op = LinearOperator(W.shape, matvec=lambda x: proj(mv(proj(x))), dtype=W.dtype)
            mu, U = eigsh(op, k=1, which="LA", tol=tol, v0=proj(self.v0))
            return 1 - float(mu[0]), s * U[:, 0]
        op = LinearOperator(W.shape, matvec=mv, dtype=W.dtype)
        mu, U = eigsh(op, k=2, which="LA", tol=tol, v0=self.v0)
        o = np.argsort(mu)[0]
        return 1 - float(mu[o]), s * U[:, o]


def products(W, tol) -> int:
    """diffeig's products with W: Lanczos steps (``diffeig::ncut_lanczos`` reports them)
    plus LOBPCG's operator applications, if any ran."""
    from diffeig import _ops
    from diffeig.ncut import _iterative, _lanczos

    calls = []
    op_orig, lanczos_orig = _iterative.laplacian_operator, _ops.ncut_lanczos
    # the modules that build the Laplacian operator of a dense W's solve
    users = (_iterative, _lanczos)

    def counting(*a, **kw):
        op = op_orig(*a, **kw)

        def apply(X):
            calls.append(1)
            return op(X)

        return apply

    def lanczos(*a, **kw):
        x, info = lanczos_orig(*a, **kw)
        calls.extend([1] * int(info[3]))
        return x, info

    _ops.ncut_lanczos = lanczos
    for m in users:
        m.laplacian_operator = counting
    try:
        ours(W, tol)
    finally:
        _ops.ncut_lanczos = lanczos_orig
        for m in users:
            m.laplacian_operator = op_orig
    return len(calls)


def timed_runs(fn, repeats: int) -> tuple[float, object]:
    """A rest, then the contract's one warm-up and ``repeats`` timed runs:
    ``(median seconds, last output)``."""
    time.sleep(SETTLE)
    summary, out = median_timing(fn, warmup=1, repeats=repeats)
    return summary["median"], out


def measure(n: int, kind: str, args) -> dict:
    W = token_graph(kind, n)
    Wn, d = W.numpy(), W.sum(-1).numpy()
    r = {"N": n, "graph": kind, "threads": torch.get_num_threads(), "load_average": load_average()}
    t, (l_ours, z) = timed_runs(lambda: ours(W, args.tol), args.repeats)
    r["solvers"] = {
        "diffeig": {
            "seconds": t,
            "products": products(W, args.tol),
            "l2": l_ours,
            "residual": ncut_residual(Wn, d, l_ours, z),
        }
    }
    for name, projected in (("ARPACK", False), ("ARPACK, projected", True)):
        arp = Arpack(W, projected)
        t, (l2, z) = timed_runs(lambda arp=arp: arp(args.tol), args.repeats)
        r["solvers"][name] = {
            "seconds": t,
            "products": arp.products,
            "l2": l2,
            "residual": ncut_residual(Wn, d, l2, z),
        }
    ref = r["solvers"]["ARPACK"]["l2"]
    for x in r["solvers"].values():
        x["l2_rel_diff_vs_arpack"] = abs(x["l2"] - ref) / abs(ref)
        x["ratio"] = x["seconds"] / r["solvers"]["diffeig"]["seconds"]
    s = r["solvers"]
    print(
        f"N = {n:5d} {kind:13s} {r['threads']} thread(s): "
        + ", ".join(
            f"{k} {1e3 * v['seconds']:7.2f} ms ({v['products']} products, r {v['residual']:.0e})"
            for k, v in s.items()
        )
        + f"; ARPACK / diffeig {s['ARPACK']['ratio']:.2f}x, projected "
        f"{s['ARPACK, projected']['ratio']:.2f}x",
        flush=True,
    )
    if args.profile:
        with torch.profiler.profile() as prof:
            ours(W, args.tol)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[784, 3600], help="N (squares)")
    p.add_argument("--repeats", type=int, default=25)
    p.add_argument("--tol", type=float, default=1e-9)
    p.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=sorted({1, torch.get_num_threads()}),
        help="thread counts, each in its own process for both solvers (default: 1 and all)",
    )
    p.add_argument("--profile", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        torch.set_num_threads(args.threads[0])
        results = [measure(n, kind, args) for n in args.sizes for kind in GRAPHS]
        print(json.dumps(results))
        return
    print(f"One token graph, k = 2, float64, tol {args.tol:g}, threads {args.threads}")
    meta = metadata("cpu")
    results = []
    for t in args.threads:
        cmd = [sys.executable, __file__, "--child", "--threads", str(t), "--tol", str(args.tol)]
        cmd += ["--repeats", str(args.repeats), "--sizes", *map(str, args.sizes)]
        cmd += ["--profile"] if args.profile else []
        res = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(t), check=False)
        if res.returncode:
            sys.exit(res.stderr[-3000:])
        *shown, last = res.stdout.strip().splitlines()
        print("\n".join(shown), flush=True)
        results += json.loads(last)
    if args.json:
        payload = {"benchmark": "token_graph", "args": vars(args), "metadata": meta}
        payload["load_average_end"] = load_average()
        payload["results"] = results
        write_json(args.json, payload)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
