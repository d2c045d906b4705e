"""One token graph at a time: diffeig's LOBPCG forward against scipy's ARPACK, batch 1.

    python benchmarks/token_graph.py [--sizes 784 3600] [--repeats 5] [--profile]
        [--json out.json]

The normalized cut ``(D - W) z = l D z`` of one dense token graph, k = 2, float64, each
solver to the same relative residual (diffeig's float64 default, 1e-9):

- diffeig: ``sym_eigh_ncut(W, 2, method="lobpcg")`` (forward only, no gradient kept);
- ARPACK: ``scipy.sparse.linalg.eigsh`` on ``x -> D^-1/2 W D^-1/2 x`` (W read in place,
  the degrees included in the time), ``which='LA'``, k = 2, from a fixed start (the
  trivial vector plus noise).

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
import time

import numpy as np
import torch
from _common import metadata, synthetic_features, write_json

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
        lam, _ = diffeig.sym_eigh_ncut(W, 2, method="lobpcg", tol=tol)
    return float(lam[1])


class Arpack:
    """ARPACK from W itself, each call timed whole: the degrees, then ``eigsh`` on the
    operator ``x -> s * (W @ (s * x))``, ``s = d^-1/2`` (W is read in place, as diffeig
    reads it: no normalized copy to allocate), ``which='LA'``, k = 2."""

    def __init__(self, W: torch.Tensor):
        self.W = W.numpy()  # shares W's memory
        rng = np.random.default_rng(0)
        self.noise = 1e-3 * rng.standard_normal(W.shape[-1])
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

        op = LinearOperator(W.shape, matvec=mv, dtype=W.dtype)
        v0 = np.sqrt(d) + self.noise  # the trivial vector, perturbed: a fixed start
        mu = eigsh(op, k=2, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
        return float(1 - np.sort(mu)[0])


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[784, 3600], help="N (squares)")
    p.add_argument("--repeats", type=int, default=25)
    p.add_argument("--tol", type=float, default=1e-9)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    print(f"One token graph, k = 2, float64, tol {args.tol:g} ({torch.get_num_threads()} threads)")
    results = []
    for n in args.sizes:
        for kind in GRAPHS:
            W = token_graph(kind, n)
            arp = Arpack(W)
            t_ours, t_arp = [], []
            time.sleep(SETTLE)
            l_ours = ours(W, args.tol)  # warm-up
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                ours(W, args.tol)
                t_ours.append(time.perf_counter() - t0)
            time.sleep(SETTLE)
            l_arp = arp(args.tol)  # warm-up
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                arp(args.tol)
                t_arp.append(time.perf_counter() - t0)
            r = {
                "N": n,
                "graph": kind,
                "diffeig": float(np.median(t_ours)),
                "ARPACK": float(np.median(t_arp)),
                "arpack_products": arp.products,
                "diffeig_products": products(W, args.tol),
                "l2": l_ours,
                "l2_rel_diff": abs(l_ours - l_arp) / abs(l_arp),
            }
            r["ratio"] = r["ARPACK"] / r["diffeig"]
            print(
                f"N = {n:5d} {kind:13s}: diffeig {1e3 * r['diffeig']:7.2f} ms "
                f"({r['diffeig_products']} products), ARPACK {1e3 * r['ARPACK']:7.2f} ms "
                f"({r['arpack_products']} products): ARPACK / diffeig {r['ratio']:.2f}x, "
                f"l2 {l_ours:.6e} ({r['l2_rel_diff']:.1e})",
                flush=True,
            )
            if args.profile:
                with torch.profiler.profile() as prof:
                    ours(W, args.tol)
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
            results.append(r)
    if args.json:
        payload = {"benchmark": "token_graph", "args": vars(args), "metadata": metadata("cpu")}
        payload["results"] = results
        write_json(args.json, payload)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
