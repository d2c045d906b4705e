"""Where LOBPCG overtakes the dense solve: the measurements behind method="auto".

    python benchmarks/auto_crossover.py [--device cpu|cuda] [--repeats 3] [--json out.json]

NCut forward + backward (unnormalized Laplacian, sign "max", the loss on sigmoid(z / 0.05)
of every returned non-trivial vector) with method="dense" and method="lobpcg" on the same
graphs (synthetic 64-channel key-like features, benchmarks/_common.py), for token counts
N = 64 ... 1600 and k = 2, 3, 5, 8. Prints dense time / LOBPCG time per cell (> 1: LOBPCG
is faster), the gradient agreement, and what diffeig._eigsh.auto_method picks.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import make_affinity, metadata, summarize, sync, synthetic_features, write_json

import diffeig
from diffeig._eigsh import auto_method

GRID = [(8, 64, (2,)), (10, 32, (2,)), (14, 16, (2,)), (20, 8, (2, 3, 5, 8)),
        (28, 4, (2, 3, 5, 8)), (40, 2, (2, 3, 5, 8))]  # fmt: skip


def run(W, method, k):
    Wr = W.clone().requires_grad_()
    sync(W.device)
    t = time.perf_counter()
    _, Z = diffeig.sym_eigh_ncut(Wr, k, laplacian="unnormalized", sign="max", method=method)
    torch.sigmoid(Z[..., 1:] / 0.05).sum().backward()
    sync(W.device)
    return time.perf_counter() - t, Wr.grad


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default: cpu)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per cell (default: 3)")
    p.add_argument("--json", default=None, help="write every figure and the metadata here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for side, batch, ks in GRID:
        W = make_affinity(synthetic_features(batch, side, 64, dtype=torch.float64, device=device))
        n = side * side
        for k in ks:
            times, grads = {}, {}
            for method in ("dense", "lobpcg"):
                run(W, method, k)  # warm-up
                samples = []
                for _ in range(args.repeats):
                    t, grads[method] = run(W, method, k)
                    samples.append(t)
                times[method] = summarize(samples)
            ratio = times["dense"]["median"] / times["lobpcg"]["median"]
            agree = ((grads["lobpcg"] - grads["dense"]).norm() / grads["dense"].norm()).item()
            pick = auto_method(n, k - 1, device)
            best = "lobpcg" if ratio > 1 else "dense"
            print(
                f"N={n:5d} batch={batch:3d} k={k}: dense {times['dense']['median']:.4f} s, "
                f"lobpcg {times['lobpcg']['median']:.4f} s, dense/lobpcg {ratio:5.2f}, "
                f"gradients agree to {agree:.1e}; auto picks {pick} (faster: {best})",
                flush=True,
            )
            rows.append({"N": n, "batch": batch, "k": k, "times": times, "ratio": ratio,
                         "grad_rel_diff": agree, "auto": pick})  # fmt: skip
    if args.json:
        write_json(args.json, {"benchmark": "auto_crossover", "args": vars(args),
                               "metadata": metadata(device), "results": rows})  # fmt: skip


if __name__ == "__main__":
    main()
