"""Issue 5's targets: the LOBPCG partial solver against the dense path, accuracy and speed.

    python benchmarks/iterative.py --json bench-results/iterative.json

For each setting (ViT-S/8 at 224 px: N = 784, batch 64; ViT-S/8 at 480 px: N = 3600,
batch 8) and each Laplacian, the same seeded key-like affinities go through
``sym_eigh_ncut(method="dense")`` and ``sym_eigh_ncut(method="lobpcg")`` (k = 2, the
training loss's sigmoid mask of z2). Reported:

- accuracy on the first ``--check-samples`` graphs: eigenvalues (relative), eigenvectors
  ``1 - |cos|``, and dL/dW, each relative to the float64 dense answer, in the timed dtype;
- forward + backward medians of both methods, measured round-robin in this run, and
  their ratio.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import (
    make_affinity,
    mask_loss,
    metadata,
    summarize,
    sync,
    synthetic_features,
    write_json,
)

import diffeig

SETTINGS = [("ViT-S/8 224px", 64, 28), ("ViT-S/8 480px", 8, 60)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--laplacians", nargs="+", default=["ncut", "unnormalized"])
    p.add_argument("--batch-scale", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--check-samples", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def solve(W, laplacian, method):
    Wr = W.detach().clone().requires_grad_()
    lam, Z = diffeig.sym_eigh_ncut(Wr, 2, laplacian=laplacian, method=method)
    mask_loss(Z).backward()
    return lam.detach(), Z.detach(), Wr.grad


def timed(W, laplacian, method):
    sync(W.device)
    t0 = time.perf_counter()
    solve(W, laplacian, method)
    sync(W.device)
    return time.perf_counter() - t0


def accuracy(W, laplacian, dtype):
    ref = solve(W.double(), laplacian, "dense")
    out = {}
    for method in ("dense", "lobpcg"):
        lam, Z, g = (t.double() for t in solve(W.to(dtype), laplacian, method))
        cos = (Z * ref[1]).sum(-2).abs() / (Z.norm(dim=-2) * ref[1].norm(dim=-2))
        nontrivial = slice(1, None)  # index 0 is the trivial pair, exact by construction
        out[method] = {
            "eigenvalue_rel_error": ((lam - ref[0]).abs() / ref[0].abs().clamp_min(1e-30))[
                ..., nontrivial
            ]
            .max()
            .item(),
            "eigenvector_1_minus_cos": (1 - cos).max().item(),
            "grad_rel_error": ((g - ref[2]).norm() / ref[2].norm()).item(),
        }
    return out


def main(argv=None):
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype)
    results = []
    for name, batch, side in SETTINGS:
        b = max(1, round(batch * args.batch_scale))
        feats = synthetic_features(b, side, seed=args.seed, device=args.device)
        W = make_affinity(feats).to(dtype)
        for laplacian in args.laplacians:
            print(f"\n{name}: batch {b}, N = {side * side}, {args.dtype}, laplacian={laplacian}")
            acc = accuracy(W[: args.check_samples], laplacian, dtype)
            for m, a in acc.items():
                print(
                    f"  {m:6s} vs float64 dense: eigenvalues {a['eigenvalue_rel_error']:.1e} rel, "
                    f"eigenvectors 1-|cos| {a['eigenvector_1_minus_cos']:.1e}, "
                    f"dL/dW {a['grad_rel_error']:.1e} rel",
                    flush=True,
                )
            for m in ("dense", "lobpcg"):  # warm-up
                timed(W, laplacian, m)
            times = {"dense": [], "lobpcg": []}
            for _ in range(args.repeats):
                for m in times:
                    times[m].append(timed(W, laplacian, m))
            rows = {m: summarize(t) for m, t in times.items()}
            ratio = rows["dense"]["median"] / rows["lobpcg"]["median"]
            print(
                f"  forward+backward: dense {rows['dense']['median']:.3f} s, "
                f"lobpcg {rows['lobpcg']['median']:.3f} s -> {ratio:.1f}x",
                flush=True,
            )
            results.append(
                {
                    "setting": name,
                    "batch": b,
                    "N": side * side,
                    "laplacian": laplacian,
                    "accuracy": acc,
                    "times": rows,
                    "dense_over_lobpcg": ratio,
                }
            )
    if args.json:
        write_json(
            args.json,
            {
                "benchmark": "iterative",
                "args": vars(args),
                "metadata": metadata(args.device),
                "results": results,
            },
        )


if __name__ == "__main__":
    main()
