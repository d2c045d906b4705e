"""Reproduce the DNCut supplement's Table 3: NCut eigenvector backward, pseudo-inverse vs ours.

    python benchmarks/backward_timing.py                      # both architectures, CPU, float32
    python benchmarks/backward_timing.py --device cuda --json benchmarks/results/h100.json
    python benchmarks/backward_timing.py --features feats.pt  # real saved features (B, N, C)

For each setting (ViT-S/16: batch 256, N = 14 x 14 = 196 tokens; ViT-S/8: batch 64,
N = 28 x 28 = 784) the same seeded affinities go through three methods:

- Pseudo-inverse: the same forward, backward by Eqn. 7 (one pinv per returned eigenvector);
- Ours: diffeig.sym_eigh_ncut, backward by Eqn. 8 with the O(N^2 k) fused kernels;
- torch.linalg.eigh autograd: torch's own full-spectrum backward (NaN on tied eigenvalues);
- Ours, LOBPCG forward: sym_eigh_ncut(method="lobpcg"), only the k pairs, backward by
  shifted conjugate-gradient solves.

Before timing, the gradients of ours and the pseudo-inverse are compared on the same
inputs. Forward and backward are timed separately (warm-up, repeats, median, IQR) and
the speed-ups are ratios of medians measured in this run. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _common import (
    METHODS,
    PAPER_TABLE3,
    PINV_METHODS,
    make_affinity,
    measure_bandwidth,
    measure_fresh_write,
    metadata,
    run_once,
    summarize,
    synthetic_features,
    write_json,
)

ARCHS = [("ViT-S/16", 256, 14), ("ViT-S/8", 64, 28)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    g = p.add_argument_group("inputs")
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    g.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    g.add_argument(
        "--laplacian",
        default="unnormalized",
        choices=["unnormalized", "ncut"],
        help="unnormalized: D - W, as the authors' code trains (default); ncut: (D - W) z = l D z",
    )
    g.add_argument(
        "--batch-scale",
        type=float,
        default=1.0,
        help="multiply the paper's batch sizes (256, 64) by this, to fit a small machine",
    )
    g.add_argument(
        "--features",
        default=None,
        help="a torch.save'd (B, N, C) tensor of real features instead of the synthetic ones",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--check-samples",
        type=int,
        default=8,
        help="graphs of the batch on which the gradients are cross-checked before timing",
    )
    g = p.add_argument_group("timing")
    g.add_argument("--warmup", type=int, default=1)
    g.add_argument(
        "--repeats", type=int, default=3, help="timed runs of every method (the same for all)"
    )
    g.add_argument("--json", default=None, help="write every figure and the run's metadata here")
    return p.parse_args(argv)


def settings(args):
    if args.features:
        feats = torch.load(args.features, map_location="cpu")
        if not isinstance(feats, torch.Tensor) or feats.dim() != 3:
            sys.exit(
                f"--features must hold a (B, N, C) tensor, got {getattr(feats, 'shape', type(feats))}"
            )
        b = max(1, round(feats.shape[0] * args.batch_scale))
        yield f"features N={feats.shape[1]}", feats[:b]
        return
    for name, batch, side in ARCHS:
        b = max(1, round(batch * args.batch_scale))
        yield name, synthetic_features(b, side, seed=args.seed)


def sym(g):
    return 0.5 * (g + g.mT)


def rel_diff(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def bench_setting(name, feats, args, bandwidth):
    dtype = getattr(torch, args.dtype)
    W = make_affinity(feats.to(device=args.device, dtype=dtype))
    B, N = W.shape[0], W.shape[-1]
    print(
        f"\n{name}: batch {B}, N = {N} tokens, {args.dtype}, {args.device}, laplacian={args.laplacian}",
        flush=True,
    )

    # Correctness first, on the same inputs: the methods against each other in float64
    # (where the comparison is not blurred by rounding), then each method in the timed
    # dtype against the float64 answer.
    # torch's own chain rule through D leaves dL/dW unsymmetric; W is symmetric, so
    # gradients are compared by their symmetric parts.
    Wc = W[: args.check_samples]
    g64 = {m: sym(run_once(fn, Wc.double(), args.laplacian)[2]) for m, fn in METHODS.items()}
    ref = g64["Ours"]
    gdt = {m: sym(run_once(fn, Wc, args.laplacian)[2].double()) for m, fn in METHODS.items()}
    auto = gdt["torch.linalg.eigh autograd"]
    finite = torch.isfinite(auto).flatten(1).all(1)
    nan_fraction = 1.0 - finite.double().mean().item()
    check = {
        "float64_rel_diff_ours_vs_pinv": rel_diff(ref, g64["Pseudo-inverse"]),
        "float64_rel_diff_ours_vs_strongest_pinv": rel_diff(ref, g64["Pseudo-inverse, strongest"]),
        "float64_rel_diff_ours_vs_torch": rel_diff(ref, g64["torch.linalg.eigh autograd"]),
        f"{args.dtype}_rel_error_vs_float64": {
            m: rel_diff(
                g[finite] if m.startswith("torch") else g,
                ref[finite] if m.startswith("torch") else ref,
            )
            for m, g in gdt.items()
        },
        "torch_nan_fraction": nan_fraction,
        "ours_finite": bool(torch.isfinite(gdt["Ours"]).all()),
    }
    err = check[f"{args.dtype}_rel_error_vs_float64"]
    print(
        f"  gradient check on {Wc.shape[0]} graphs (float64): |ours - pinv| / |pinv| = {check['float64_rel_diff_ours_vs_pinv']:.1e}, "
        f"|ours - torch| / |torch| = {check['float64_rel_diff_ours_vs_torch']:.1e}",
        flush=True,
    )
    print(
        f"  {args.dtype} error vs float64: ours {err['Ours']:.1e}, pinv {err['Pseudo-inverse']:.1e}, "
        f"torch {err['torch.linalg.eigh autograd']:.1e} (on its finite samples); "
        f"torch's gradient non-finite on {100 * nan_fraction:.1f}% of these {Wc.shape[0]} check graphs",
        flush=True,
    )

    # Round-robin over the methods, so that drift of the machine (other load, memory
    # state) does not favour whichever method runs first.
    for fn in METHODS.values():
        for _ in range(args.warmup):
            run_once(fn, W, args.laplacian)
    times = {m: ([], []) for m in METHODS}
    last_grad = {}
    rounds = args.repeats
    t_start = time.perf_counter()
    for r in range(rounds):
        for m, fn in METHODS.items():
            f, b, last_grad[m] = run_once(fn, W, args.laplacian)
            times[m][0].append(f)
            times[m][1].append(b)
            # a line per method and repeat: the pseudo-inverse at ViT-S/8 takes minutes
            print(
                f"    [{time.perf_counter() - t_start:7.1f} s] repeat {r + 1}/{rounds} "
                f"{m}: forward {f:.4f} s, backward {b:.4f} s",
                flush=True,
            )
    rows = {}
    for m, (fwd, bwd) in times.items():
        rows[m] = {
            "forward": summarize(fwd),
            "backward": summarize(bwd),
            # share of graphs of the whole timed batch with a non-finite gradient
            "nan_fraction": 1.0
            - torch.isfinite(last_grad[m]).flatten(1).all(1).double().mean().item(),
        }
        rows[m]["total"] = rows[m]["forward"]["median"] + rows[m]["backward"]["median"]
        print(
            f"  {m:28s} forward {rows[m]['forward']['median']:.4f} s  "
            f"backward {rows[m]['backward']['median']:.4f} s (IQR {rows[m]['backward']['iqr']:.4f})",
            flush=True,
        )

    itemsize = W.element_size()
    floor_bytes = 3 * B * N * N * itemsize  # read V twice, write dL/dW once
    floor = floor_bytes / (bandwidth * 1e9)
    # What a fresh dL/dW costs here (allocation + page faults + write) plus reading V once.
    fresh_floor = measure_fresh_write(B * N * N * itemsize, args.device) + B * N * N * itemsize / (
        bandwidth * 1e9
    )
    ob, pb, sb, tb = (
        rows[m]["backward"]["median"] for m in ("Ours", *PINV_METHODS, "torch.linalg.eigh autograd")
    )
    ratios = {
        "pinv_over_ours_backward": pb / ob,
        "pinv_over_ours_total": rows["Pseudo-inverse"]["total"] / rows["Ours"]["total"],
        "strongest_pinv_over_ours_backward": sb / ob,
        "strongest_pinv_over_ours_total": rows["Pseudo-inverse, strongest"]["total"]
        / rows["Ours"]["total"],
        "torch_over_ours_backward": tb / ob,
        "dense_over_lobpcg_total": rows["Ours"]["total"] / rows["Ours, LOBPCG forward"]["total"],
        "ours_backward_over_floor": ob / floor,
        "ours_backward_over_fresh_allocation_floor": ob / fresh_floor,
    }
    return {
        "setting": name,
        "batch": B,
        "N": N,
        "check": check,
        "methods": rows,
        "floor_seconds": floor,
        "floor_bytes": floor_bytes,
        "fresh_allocation_floor_seconds": fresh_floor,
        "ratios": ratios,
    }


def print_table(results, args, bandwidth):
    print("\nTable 3 (seconds; medians of this run). Forward = Laplacian + torch.linalg.eigh.")
    head = f"| {'Method':28s} | {'Architecture':16s} | {'Forward':>8s} | {'Backward':>8s} | {'Total':>8s} |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in results:
        for m, row in r["methods"].items():
            extra = (
                f"  (non-finite grads on {100 * row['nan_fraction']:.1f}% of the {r['batch']} "
                "timed graphs)"
                if row["nan_fraction"]
                else ""
            )
            print(
                f"| {m:28s} | {r['setting']:16s} | {row['forward']['median']:8.4f} | "
                f"{row['backward']['median']:8.4f} | {row['total']:8.4f} |{extra}"
            )
    print("\nSpeed-ups (ratios of medians, same run):")
    for r in results:
        q = r["ratios"]
        print(
            f"  {r['setting']:16s} backward pinv/ours {q['pinv_over_ours_backward']:7.1f}x "
            f"(strongest pinv {q['strongest_pinv_over_ours_backward']:6.1f}x) | "
            f"total pinv/ours {q['pinv_over_ours_total']:5.2f}x "
            f"(strongest {q['strongest_pinv_over_ours_total']:5.2f}x) | "
            f"backward torch/ours {q['torch_over_ours_backward']:6.1f}x | "
            f"total ours dense/LOBPCG {q['dense_over_lobpcg_total']:5.2f}x | "
            f"ours = {q['ours_backward_over_floor']:.1f}x the memory floor "
            f"({1e3 * r['floor_seconds']:.2f} ms: read V twice + write dL/dW at {bandwidth:.1f} GB/s), "
            f"{q['ours_backward_over_fresh_allocation_floor']:.1f}x the floor with a freshly allocated dL/dW "
            f"({1e3 * r['fresh_allocation_floor_seconds']:.2f} ms)"
        )
    print(
        "\nPaper (A100 80GB, supplement Table 3): "
        + "; ".join(f"{m} {a}: bwd {v[1]} s, total {v[2]} s" for (m, a), v in PAPER_TABLE3.items())
    )


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    torch.manual_seed(args.seed)
    bandwidth = measure_bandwidth(args.device)
    results = [bench_setting(name, feats, args, bandwidth) for name, feats in settings(args)]
    print_table(results, args, bandwidth)
    if args.json:
        write_json(
            args.json,
            {
                "benchmark": "backward_timing",
                "args": vars(args),
                "metadata": metadata(args.device),
                "bandwidth_GBps": bandwidth,
                "paper_table3": {f"{m} | {a}": v for (m, a), v in PAPER_TABLE3.items()},
                "results": results,
            },
        )
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
