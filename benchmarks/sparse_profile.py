"""Where the sparse NCut's time and memory go, by stage, at 224 / 448 / 896 px.

    python benchmarks/sparse_profile.py --json benchmarks/results/sparse-profile-cpu-2core.json

The quokka photo resized to S x S, ``pixel_affinity`` (radius 5, the user path), then
``sym_eigh_ncut(W, 2, method="lobpcg", tol=1e-6)`` forward and a backward of a mask loss
on z2, each size in its own process (peak RSS is per process). Each stage's seconds
come from timers wrapped around the library's own functions for this run (inclusive:
the products with W and the V-cycles are also inside LOBPCG's and CG's time):

- ``affinity``: ``diffeig.ncut.pixel_affinity``;
- ``pattern checks``: ``SparseGraphs`` (coalesce check, CSR rows, the mirror argsort);
- ``multigrid setup``: ``Multigrid.__init__``;
- ``island search``: ``island_start``;
- ``LOBPCG``: ``lobpcg_ncut_pairs`` (the forward's iterations);
- ``backward CG``: ``ncut_factors`` (the shifted solves);
- ``assembly``: ``assemble_at_edges`` (the gradient on the stored weights);
- ``products with W``, ``V-cycles``: every call, forward and backward.

Peak RSS is read after each stage (``ru_maxrss``: the process's high-water mark).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import load_average, metadata, write_json  # noqa: E402

STAGES = (
    "affinity",
    "pattern checks",
    "multigrid setup",
    "island search",
    "LOBPCG",
    "backward CG",
    "assembly",
    "products with W",
    "V-cycles",
)


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GB


def instrument(seconds: dict, memory: dict):
    """Wrap the library's stage functions with timers (this process only)."""
    import diffeig.ncut as ncut
    from diffeig.ncut import _multigrid, _sparse

    def timer(name, fn):
        def wrapped(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
                memory[name] = peak_gb()

        return wrapped

    ncut.pixel_affinity = timer("affinity", ncut.pixel_affinity)
    init = _sparse.SparseGraphs.__init__
    _sparse.SparseGraphs.__init__ = timer("pattern checks", init)
    _multigrid.Multigrid.__init__ = timer("multigrid setup", _multigrid.Multigrid.__init__)
    _multigrid.Multigrid.__call__ = timer("V-cycles", _multigrid.Multigrid.__call__)
    _sparse.island_start = timer("island search", _sparse.island_start)
    _sparse.lobpcg_ncut_pairs = timer("LOBPCG", _sparse.lobpcg_ncut_pairs)
    _sparse.ncut_factors = timer("backward CG", _sparse.ncut_factors)
    _sparse.assemble_at_edges = timer("assembly", _sparse.assemble_at_edges)
    matmul = _sparse._matmul

    def counted(M, B, N, info, phase):
        return timer("products with W", matmul(M, B, N, info, phase))

    _sparse._matmul = counted


def child(side: int) -> dict:
    import diffeig
    from diffeig.ncut import SparseInfo

    sys.path.insert(0, str(HERE))
    from sparse_ncut import quokka

    seconds: dict = {}
    memory: dict = {}
    instrument(seconds, memory)
    x = quokka(side, torch.float64)
    start = peak_gb()
    t0 = time.perf_counter()
    W = diffeig.ncut.pixel_affinity(x, radius=5.0).detach().requires_grad_()
    t1 = time.perf_counter()
    info = SparseInfo()
    lam, z = diffeig.sym_eigh_ncut(W, 2, method="lobpcg", tol=1e-6, info=info)
    t2 = time.perf_counter()
    z2 = z[:, 1]
    (torch.sigmoid(10 * z2 / z2.abs().max()) ** 2).sum().backward()
    t3 = time.perf_counter()
    return {
        "side": side,
        "pixels": side * side,
        "weights": W._nnz(),
        "threads": torch.get_num_threads(),
        "seconds": {k: seconds.get(k, 0.0) for k in STAGES},
        "peak_gb_after": {k: memory.get(k) for k in STAGES},
        "total": {"affinity": t1 - t0, "forward": t2 - t1, "backward": t3 - t2},
        "peak_gb": peak_gb(),
        "peak_gb_at_start": start,
        "iterations": {"forward": info.forward_calls, "backward": info.backward_calls},
        "levels": info.levels,
        "operator_complexity": info.operator_complexity,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 896])
    p.add_argument("--json", default="bench-results/sparse_profile.json")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    md = metadata("cpu")
    rows = []
    for side in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(side)],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        t = row["total"]
        print(
            f"{side} px: affinity {t['affinity']:.1f} s, forward {t['forward']:.1f} s, "
            f"backward {t['backward']:.1f} s, peak {row['peak_gb']:.2f} GB",
            flush=True,
        )
        rows.append(row)
    payload = {
        "benchmark": "sparse_profile",
        "metadata": md,
        "args": {"sizes": args.sizes},
        "results": rows,
        "load_average_end": load_average(),
    }
    write_json(args.json, payload)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
