"""The recipe's NCut at the speed of its fastest exact solver: dense against auto, and
where LOBPCG's time goes.

    python benchmarks/ncut_speed.py [--device cpu|cuda] [--sizes 196:256 784:64 3600:8]
        [--repeats 3] [--profile] [--json out.json]

For each N:batch, the same training-like graphs (seeded unit-norm 64-channel key-like
features, tau = 0, eps = 1e-6, the unnormalized Laplacian D - W as the authors train, k = 2,
float64 as the recipe solves, the loss on sigmoid(z2 / 0.05)) go through
``sym_eigh_ncut(method="dense")`` (the authors' path: a full torch.linalg.eigh) and
``method="auto"`` (what diffeig._eigsh.auto_method picks there), forward + backward, timed
round-robin in this run; medians. Before timing, the two answers are compared
(eigenvectors 1 - |cos|, dL/dW relative to the dense float64 one).

``--profile`` also breaks the LOBPCG forward and backward down with torch.profiler
(products with W, the small eighs of Rayleigh-Ritz, Gram and basis products, copies, the
input checks, writing dL/dW, other ops, and the rest: Python and dispatch), counts the
products with W per graph, and prints the floor: those products' bytes of W (its lower
triangle, all a product with a symmetric matrix needs; and, for the backward, writing
dL/dW once) at the bandwidth of a large copy measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import make_affinity, measure_bandwidth, metadata, summarize, sync, write_json
from _common import synthetic_features as features

import diffeig
from diffeig._eigsh import auto_method
from diffeig.ncut import check_affinity


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default: cpu)")
    p.add_argument(
        "--sizes",
        nargs="+",
        default=["196:256", "784:64"],
        help="N:batch settings, N a square (default: 196:256 784:64, ViT-S/16 and ViT-S/8 at "
        "224 px; 3600:8, ViT-S/8 at 480 px, takes several minutes of dense solves on 2 cores)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method (default: 3)")
    p.add_argument("--profile", action="store_true", help="break LOBPCG's time down")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write every figure and the metadata here")
    args = p.parse_args(argv)
    sizes = []
    for s in args.sizes:
        try:
            n, b = (int(x) for x in s.split(":"))
        except ValueError:
            p.error(f"--sizes: expected N:batch, got {s!r}")
        side = round(n**0.5)
        if side * side != n or b < 1:
            p.error(f"--sizes: N must be a square and batch >= 1, got {s!r}")
        sizes.append((side, b))
    args.sizes = sizes
    if args.profile and args.device != "cpu":
        p.error("--profile breaks down CPU time (torch.profiler's CPU activity): use --device cpu")
    return args


def solve(W, method):
    Wr = W.clone().requires_grad_()
    sync(W.device)
    t0 = time.perf_counter()
    lam, Z = diffeig.sym_eigh_ncut(Wr, 2, laplacian="unnormalized", sign="max", method=method)
    sync(W.device)
    t1 = time.perf_counter()
    torch.sigmoid(Z[..., 1] / 0.05).square().mean().backward()
    sync(W.device)
    t2 = time.perf_counter()
    return (t1 - t0, t2 - t1), Z.detach(), Wr.grad


CATEGORIES = (
    "products with W",
    "Rayleigh-Ritz eighs",
    "Gram and basis products",
    "copies",
    "input checks",
    "dL/dW assembly",
)


def classify(name: str, shapes, n: int) -> str:
    if name == "diffeig::sym_matmul":
        return "products with W"
    if name == "diffeig::symmetry_stats":
        return "input checks"
    if name == "diffeig::ncut_grad_assemble":  # writing the N x N gradient, page faults and all
        return "dL/dW assembly"
    if name in ("aten::bmm", "aten::mm", "aten::matmul") and shapes and shapes[0][-2:] == [n, n]:
        return "products with W"
    if "eigh" in name:
        return "Rayleigh-Ritz eighs"
    if name in ("aten::bmm", "aten::mm"):
        return "Gram and basis products"
    if name in ("aten::cat", "aten::copy_", "aten::index_select", "aten::index_copy_"):
        return "copies"
    if not name.startswith(("aten::", "diffeig::")):
        # the autograd Functions' own records: the Python between the ops
        return "Python, dispatch and the rest"
    return "other ops"


def profile(W, wall, bandwidth):
    """Where LOBPCG's forward and backward spend their time (seconds), and the floor."""
    from torch.profiler import ProfilerActivity, profile

    n = W.shape[-1]
    out = {}
    for phase in ("forward", "backward"):
        Wr = W.clone().requires_grad_()
        if phase == "backward":
            _, Z = diffeig.sym_eigh_ncut(
                Wr, 2, laplacian="unnormalized", sign="max", method="lobpcg"
            )
            loss = torch.sigmoid(Z[..., 1] / 0.05).square().mean()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            t0 = time.perf_counter()
            if phase == "forward":
                diffeig.sym_eigh_ncut(Wr, 2, laplacian="unnormalized", sign="max", method="lobpcg")
            else:
                loss.backward()
            sync(W.device)
            profiled = time.perf_counter() - t0
        parts = dict.fromkeys((*CATEGORIES, "other ops", "Python, dispatch and the rest"), 0.0)
        graphs, calls, syncs = 0, 0, 0
        for e in prof.key_averages(group_by_input_shape=True):
            shapes = [list(s) for s in e.input_shapes if isinstance(s, list | tuple)]
            cat = classify(e.key, shapes, n)
            parts[cat] += e.self_cpu_time_total / 1e6
            if cat == "products with W" and e.key != "aten::matmul":
                # sym_matmul(W, Y, index): Y's batch is the number of graphs multiplied
                batch = shapes[1 if e.key == "diffeig::sym_matmul" else 0]
                batch = batch[0] if len(batch) == 3 else 1
                graphs += batch * e.count
                calls += e.count
            if e.key == "aten::_local_scalar_dense":
                syncs += e.count
        # The profiler slows every op down: each part is its share of the profiled run
        # applied to the unprofiled median.
        parts["Python, dispatch and the rest"] += max(0.0, profiled - sum(parts.values()))
        measured = wall[phase]
        parts = {k: v / profiled * measured for k, v in parts.items()}
        # A product with symmetric W needs its lower triangle: N (N + 1) / 2 entries.
        floor = graphs * n * (n + 1) / 2 * W.element_size() / (bandwidth * 1e9)
        if phase == "backward":  # and dL/dW, written once
            floor += W.numel() * W.element_size() / (bandwidth * 1e9)
        out[phase] = {
            "seconds": measured,
            "parts": parts,
            "products_with_W_per_graph": graphs / W.shape[0],
            "batched_products": calls,  # bmm calls, or mm calls on views after compaction
            "host_syncs": syncs,
            "floor_seconds": floor,
        }
    checks = []
    for _ in range(3):
        t = time.perf_counter()
        check_affinity(W, normalized=False)
        checks.append(time.perf_counter() - t)
    out["input_checks_seconds"] = summarize(checks)["median"]
    return out


def bench(side, batch, args, bandwidth):
    device = torch.device(args.device)
    W = make_affinity(features(batch, side, 64, seed=args.seed, dtype=torch.float64, device=device))
    n = side * side
    pick = auto_method(n, 1, device)
    _, Zd, gd = solve(W, "dense")
    _, Za, ga = solve(W, "auto")
    cos = (Zd[..., 1] * Za[..., 1]).sum(-1).abs() / (
        Zd[..., 1].norm(dim=-1) * Za[..., 1].norm(dim=-1)
    )
    agree = {
        "eigenvector_1_minus_cos": (1 - cos).max().item(),
        "grad_rel_error": ((ga - gd).norm() / gd.norm()).item(),
    }
    times = {m: ([], []) for m in ("dense", "auto")}
    for _ in range(args.repeats):
        for m in times:
            (f, b), *_ = solve(W, m)
            times[m][0].append(f)
            times[m][1].append(b)
    rows = {}
    for m, (f, b) in times.items():
        tot = [x + y for x, y in zip(f, b)]
        rows[m] = {
            "forward": summarize(f),
            "backward": summarize(b),
            "total": summarize(tot),
        }
    result = {
        "N": n,
        "batch": batch,
        "auto_picks": pick,
        "agreement": agree,
        "methods": rows,
        "dense_over_auto": rows["dense"]["total"]["median"] / rows["auto"]["total"]["median"],
    }
    if args.profile:
        wall = {p: rows["auto"][p]["median"] for p in ("forward", "backward")}
        if pick != "lobpcg":  # profile LOBPCG all the same: that is the subject
            wall = {p: [] for p in ("forward", "backward")}
            for _ in range(args.repeats):
                (f, b), *_ = solve(W, "lobpcg")
                wall["forward"].append(f)
                wall["backward"].append(b)
            wall = {p: summarize(v)["median"] for p, v in wall.items()}
        result["lobpcg_profile"] = profile(W, wall, bandwidth)
    return result


def report(r, bandwidth):
    d, a = r["methods"]["dense"], r["methods"]["auto"]
    print(
        f"N = {r['N']:5d} (batch {r['batch']:3d}): dense {d['forward']['median']:.3f} + "
        f"{d['backward']['median']:.3f} = {d['total']['median']:.3f} s | auto ({r['auto_picks']}) "
        f"{a['forward']['median']:.3f} + {a['backward']['median']:.3f} = "
        f"{a['total']['median']:.3f} s | dense/auto {r['dense_over_auto']:.2f}x | "
        f"1 - |cos| {r['agreement']['eigenvector_1_minus_cos']:.1e}, "
        f"dL/dW {r['agreement']['grad_rel_error']:.1e} relative",
        flush=True,
    )
    prof = r.get("lobpcg_profile")
    if not prof:
        return
    for phase in ("forward", "backward"):
        p = prof[phase]
        parts = ", ".join(f"{k} {v:.3f}" for k, v in p["parts"].items())
        print(
            f"    LOBPCG {phase} {p['seconds']:.3f} s: {parts}; {p['products_with_W_per_graph']:.1f} "
            f"products with W per graph in {p['batched_products']} calls, "
            f"{p['host_syncs']} host syncs; floor {p['floor_seconds']:.3f} s (those products"
            f"{', and writing dL/dW,' if phase == 'backward' else ''} at {bandwidth:.1f} GB/s) "
            f"= {p['seconds'] / p['floor_seconds']:.1f}x",
            flush=True,
        )
    print(f"    input checks of W (in the forward): {prof['input_checks_seconds']:.3f} s")


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    bandwidth = measure_bandwidth(args.device)
    print(
        "NCut forward + backward, float64, D - W, k = 2, medians of "
        f"{args.repeats} (dense = the authors' full eigh; auto = diffeig's pick):",
        flush=True,
    )
    results = []
    for side, batch in args.sizes:
        results.append(bench(side, batch, args, bandwidth))
        report(results[-1], bandwidth)
    if args.json:
        write_json(args.json, {"benchmark": "ncut_speed", "args": vars(args),
                               "metadata": metadata(args.device), "bandwidth_GBps": bandwidth,
                               "results": results})  # fmt: skip
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
