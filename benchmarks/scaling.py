"""How forward and backward cost grow with the number of tokens N.

    python benchmarks/scaling.py --json bench-results/scaling.json --plot bench-results/scaling.png

Times ours (diffeig.sym_eigh_ncut), the pseudo-inverse backward and torch.linalg.eigh's
autograd on one batch of synthetic key-like affinities per N (N = side^2 tokens, from
8 x 8 = 64 to 48 x 48 = 2304), and saves a log-log plot and the figures. The forward is
O(N^3) for all three (a dense eigh); the backward is O(N^3) for the pseudo-inverse and
torch, O(N^2 k) for ours.
"""

from __future__ import annotations

import argparse
import math

import torch
from _common import (
    METHODS,
    PINV_METHODS,
    make_affinity,
    metadata,
    run_once,
    summarize,
    synthetic_features,
    write_json,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--sides",
        type=int,
        nargs="+",
        default=[8, 12, 16, 20, 28, 36, 48],
        help="token grid sides; N = side^2",
    )
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--laplacian", default="unnormalized", choices=["unnormalized", "ncut"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--pinv-max-n",
        type=int,
        default=1296,
        help="skip the pseudo-inverse above this N (one SVD per eigenvector and graph)",
    )
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="PNG path for the log-log plot (needs matplotlib)")
    return p.parse_args(argv)


def slope(ns, ts):
    """Least-squares exponent of t ~ N^a over the measured points."""
    xs, ys = [math.log(n) for n in ns], [math.log(t) for t in ts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    styles = {
        "Ours": "C0",
        "Pseudo-inverse": "C3",
        "Pseudo-inverse, strongest": "C4",
        "torch.linalg.eigh autograd": "C2",
        "Ours, LOBPCG forward": "C1",
    }
    for m, color in styles.items():
        pts = [(r["N"], r["methods"][m]) for r in results if m in r["methods"]]
        ns = [n for n, _ in pts]
        ax.loglog(
            ns, [v["backward"]["median"] for _, v in pts], "o-", color=color, label=f"{m}: backward"
        )
        if m in ("Ours", "Ours, LOBPCG forward"):
            dense = m == "Ours"
            ax.loglog(
                ns,
                [v["forward"]["median"] for _, v in pts],
                "s--",
                color="0.4" if dense else color,
                label="forward: dense eigh (first three)" if dense else "forward: LOBPCG",
            )
    ax.set_xlabel("tokens N")
    ax.set_ylabel("seconds per batch (median)")
    ax.set_title(f"NCut (k = 2) forward and backward, batch {results[0]['batch']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None):
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype)
    results = []
    for side in args.sides:
        N = side * side
        W = make_affinity(synthetic_features(args.batch, side, dtype=dtype, device=args.device))
        row = {"N": N, "batch": args.batch, "methods": {}}
        for m, fn in METHODS.items():
            if m in PINV_METHODS and N > args.pinv_max_n:
                continue
            run_once(fn, W, args.laplacian)  # warm-up
            fwd, bwd = zip(*[run_once(fn, W, args.laplacian)[:2] for _ in range(args.repeats)])
            row["methods"][m] = {"forward": summarize(list(fwd)), "backward": summarize(list(bwd))}
        results.append(row)
        print(
            f"N = {N:5d}: "
            + " | ".join(
                f"{m} fwd {v['forward']['median']:.4f} s bwd {v['backward']['median']:.5f} s"
                for m, v in row["methods"].items()
            ),
            flush=True,
        )
    exponents = {}
    for m in METHODS:
        pts = [
            (r["N"], r["methods"][m]["backward"]["median"]) for r in results if m in r["methods"]
        ]
        big = [p for p in pts if p[0] >= 256] or pts
        if len(big) >= 2:
            exponents[m] = slope(*zip(*big))
    print(
        "backward cost ~ N^a for N >= 256: "
        + ", ".join(f"{m}: a = {a:.2f}" for m, a in exponents.items())
    )
    key = "Ours, LOBPCG forward"
    pts = [
        (r["N"], r["methods"][key]["forward"]["median"] + r["methods"][key]["backward"]["median"])
        for r in results
        if r["N"] >= 256
    ]
    if len(pts) >= 2:
        exponents[f"{key}: forward + backward"] = slope(*zip(*pts))
        print(f"{key}: forward + backward ~ N^{exponents[f'{key}: forward + backward']:.2f}")
    if args.plot:
        plot(results, args.plot)
    if args.json:
        write_json(
            args.json,
            {
                "benchmark": "scaling",
                "args": vars(args),
                "metadata": metadata(args.device),
                "exponents": exponents,
                "results": results,
            },
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
