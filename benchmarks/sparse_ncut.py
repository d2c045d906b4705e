"""Pixel-resolution normalized cuts: diffeig's sparse NCut against scipy's ARPACK and the
other sparse eigensolvers, on the quokka photo, under one fairness contract.

    python benchmarks/sparse_ncut.py [--sizes 112 224 448] [--batch 112:8] [--tol 1e-6]
        [--dtype float64] [--warmup 1] [--repeats 3] [--threads 1 2] [--json out.json]

The photo (tests/data/quokka.jpg) resized (bicubic) to S x S; the graph of
``diffeig.ncut.pixel_affinity`` (radius 5, sigma_color 0.1, sigma_space 4: about 78
weights per pixel); the normalized cut ``(D - W) z = l D z``, k = 2. Every solver runs in
its own process (its peak RSS is its own) at each of ``--threads`` (OpenMP and BLAS
threads alike), ``--warmup`` untimed runs and ``--repeats`` timed ones, median; after it,
the same relative residual ``||(D - W) z - l D z|| / ||D z||`` of its Fiedler pair
(``_common.ncut_residual``), and its l2 against ARPACK's. Solvers:

- diffeig: ``sym_eigh_ncut(W, 2, method="lobpcg", tol=tol)`` forward, and the backward
  of a loss on the Fiedler vector (``sum sigmoid(10 z2 / max|z2|)^2``); products with W
  of each. It knows the trivial pair (deflated) and starts from the degrees plus a
  seeded random block;
- ARPACK: ``scipy.sparse.linalg.eigsh`` on ``D^-1/2 W D^-1/2``, ``which='LA'``, k = 2,
  the same tol, from the seeded random vector (``_common.seeded_vector``);
- ARPACK, projected: the same with the trivial vector ``D^1/2 1`` projected out (a
  ``LinearOperator``), k = 1: the structure diffeig uses, given to ARPACK too;
- scipy's ``lobpcg`` on ``(D - W, D)`` with the trivial vector as a constraint, from the
  degrees and the seeded random columns (diffeig's start), its absolute residual test set
  to ``tol ||D z||`` for a D-normalized z (the relative residual above), without a
  preconditioner (up to ``--max-baseline-n``) and with pyamg's smoothed aggregation
  (setup + solve, any size; ``pip install pyamg``);
- ``torch.lobpcg`` on the CSR matrix, seeded random start (up to a quarter of
  ``--max-baseline-n``).

Baselines are forward only (they have no gradient). ``--batch S:B`` adds a batch of B
copies of the S-pixel graph (one 3-D sparse COO W) against B solves of each baseline.

``--island S``: the 8-neighbour graph (radius 1.5) of the photo at S px, whose l2 belongs
to an eigenvector on 3 pixels (at 224 px): l2 of each solver against shift-invert Lanczos
(``eigsh(L, M=D, sigma=-1e-10)``, an LU of ``L - sigma D``: the reference no start vector
can mislead), and how many pixels hold 90 % of each z2's ``D``-weighted mass.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    load_average,
    median_timing,
    metadata,
    ncut_residual,
    seeded_vector,
    summarize,
    thread_env,
    write_json,
)


def quokka(side: int, dtype) -> torch.Tensor:
    from PIL import Image

    img = Image.open(ROOT / "tests/data/quokka.jpg").convert("RGB")
    img = img.resize((side, side), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).to(dtype) / 255


def graph(side: int, batch: int, dtype):
    import diffeig

    x = quokka(side, dtype)
    return diffeig.ncut.pixel_affinity(x if batch == 1 else x.expand(batch, -1, -1, -1))


SOLVERS = (
    "diffeig",
    "ARPACK",
    "ARPACK, projected",
    "scipy lobpcg",
    "scipy lobpcg + pyamg",
    "torch.lobpcg",
)


def scipy_matrix(W: torch.Tensor):
    import scipy.sparse as sp

    W = W.coalesce()
    i, j = W.indices().numpy()
    n = W.shape[-1]
    M = sp.csr_matrix((W.values().double().numpy(), (i, j)), shape=(n, n))
    d = np.asarray(M.sum(1)).ravel()
    return M, d


def arpack(M, d, tol, projected: bool = False):
    """The Fiedler pair by ARPACK on ``D^-1/2 W D^-1/2`` (largest), from the seeded random
    vector; ``projected``: with the trivial vector projected out, k = 1."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import LinearOperator, eigsh

    s = 1 / np.sqrt(d)
    A = (sp.diags(s) @ M @ sp.diags(s)).tocsr()
    v0 = seeded_vector(len(d))
    if projected:
        u1 = np.sqrt(d) / np.linalg.norm(np.sqrt(d))

        def proj(x):
            return x - u1 * (u1 @ x)

        op = LinearOperator(A.shape, matvec=lambda x: proj(A @ proj(x)), dtype=A.dtype)
        mu, U = eigsh(op, k=1, which="LA", tol=tol, v0=proj(v0))
        return 1 - float(mu[0]), s * U[:, 0]
    mu, U = eigsh(A, k=2, which="LA", tol=tol, v0=v0)
    o = np.argsort(mu)[0]
    return 1 - float(mu[o]), s * U[:, o]


def scipy_lobpcg(M, d, tol, amg: bool):
    """The Fiedler pair by scipy's lobpcg on ``(D - W, D)``, the constant vector as a
    constraint, from diffeig's start (the degrees and seeded random columns)."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import lobpcg

    L = (sp.diags(d) - M).tocsr()
    D = sp.diags(d)
    X = np.column_stack([d, seeded_vector(len(d), 2)])
    prec = None
    if amg:
        import pyamg

        prec = pyamg.smoothed_aggregation_solver(L).aspreconditioner()
    # scipy's test is |L x - l D x| <= tol for D-normalized x; |D z| of a D-normalized z
    # is about sqrt(sum d^2 / sum d), so this tol is the relative residual's
    abs_tol = tol * float(np.sqrt((d * d).sum() / d.sum()))
    lam, Z, hist = lobpcg(
        L,
        X,
        B=D,
        M=prec,
        Y=np.ones((len(d), 1)),
        tol=abs_tol,
        maxiter=500,
        largest=False,
        retResidualNormsHistory=True,
    )
    o = np.argsort(lam)[0]
    return float(lam[o]), Z[:, o], {"iterations": len(hist), "converged": len(hist) < 500}


def torch_lobpcg(W, tol):
    Wc = W.coalesce()
    d = torch.sparse.sum(Wc, 1).to_dense()
    n = d.numel()
    dis = d.rsqrt()
    i, j = Wc.indices()
    A = torch.sparse_coo_tensor(Wc.indices(), dis[i] * Wc.values() * dis[j], (n, n)).to_sparse_csr()
    X = torch.from_numpy(seeded_vector(n, 3)).to(W.dtype)
    mu, U = torch.lobpcg(A, k=3, X=X, largest=True, tol=tol, niter=500)
    o = mu.argsort(descending=True)[1]
    return 1 - float(mu[o]), (dis * U[:, o]).numpy()


def diffeig_solve(W, tol):
    """diffeig's forward and backward (a loss on z2): ``(forward s, backward s, lam, z, info)``."""
    import diffeig

    W = W.detach().requires_grad_()
    info = diffeig.ncut.SparseInfo()
    t0 = time.perf_counter()
    lam, z = diffeig.sym_eigh_ncut(W, 2, method="lobpcg", tol=tol, info=info)
    t1 = time.perf_counter()
    z2 = z[..., 1]
    (torch.sigmoid(10 * z2 / z2.abs().amax(-1, keepdim=True)) ** 2).sum().backward()
    return t1 - t0, time.perf_counter() - t1, lam.detach(), z.detach(), info


def child(args) -> dict:
    """One solver at one size, batch and thread count in this process: the median of
    ``--repeats`` after ``--warmup`` runs, the residual of its pair, the peak RSS."""
    torch.set_num_threads(args.threads[0])
    name, batch = args.child_solver, args.child_batch
    dtype = getattr(torch, args.dtype) if name == "diffeig" else torch.float64
    W = graph(args.child, batch if name == "diffeig" else 1, dtype)
    M, d = scipy_matrix(W if W.dim() == 2 else W[0])
    load = load_average()
    extra = {}
    if name == "diffeig":
        for _ in range(args.warmup):
            diffeig_solve(W, args.tol)
        runs = [diffeig_solve(W, args.tol) for _ in range(args.repeats)]
        fwd, bwd = summarize([r[0] for r in runs]), summarize([r[1] for r in runs])
        lam, z, info = runs[-1][2:]
        l2s = lam[..., 1].reshape(-1).tolist()
        lam2, z2 = float(lam.reshape(-1, 2)[0, 1]), z.reshape(-1, args.child**2, 2)[0, :, 1]
        extra = {
            "backward": bwd["median"],
            "backward_timing": bwd,
            # one product per LOBPCG iteration (covering the batch), plus the first
            "iterations": info.forward_calls - 1,
            "backward_products": info.backward_products,
            "levels": info.levels,
            "operator_complexity": info.operator_complexity,
        }
    else:
        solve = {
            "ARPACK": lambda: arpack(M, d, args.tol),
            "ARPACK, projected": lambda: arpack(M, d, args.tol, projected=True),
            "scipy lobpcg": lambda: scipy_lobpcg(M, d, args.tol, amg=False),
            "scipy lobpcg + pyamg": lambda: scipy_lobpcg(M, d, args.tol, amg=True),
            "torch.lobpcg": lambda: torch_lobpcg(W, args.tol),
        }[name]
        # a batch of B graphs is B solves
        fwd, out = median_timing(
            lambda: [solve() for _ in range(batch)][-1], warmup=args.warmup, repeats=args.repeats
        )
        lam2, z2 = out[0], out[1]
        l2s = [lam2] * batch
        if len(out) > 2:
            extra.update(out[2])
    return {
        "forward": fwd["median"],
        "forward_timing": fwd,
        **extra,
        "total": fwd["median"] + extra.get("backward", 0.0),
        "l2": l2s,
        "residual": ncut_residual(M, d, lam2, np.asarray(z2, dtype=np.float64)),
        "peak_rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "nnz": W._nnz(),
        "load_average": load,
    }


def run_child(side: int, batch: int, solver: str, threads: int, args) -> dict | None:
    cmd = [sys.executable, __file__, "--child", str(side), "--child-batch", str(batch)]
    cmd += ["--child-solver", solver, "--threads", str(threads), "--tol", str(args.tol)]
    cmd += ["--dtype", args.dtype, "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=thread_env(threads))
    if res.returncode:
        if solver == "diffeig":
            sys.exit(f"diffeig at {side} px failed:\n{res.stderr[-3000:]}")
        print(f"  {solver} failed: {res.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def wanted(solver: str, side: int, batch: int, args) -> bool:
    n = side * side
    if solver == "diffeig":
        return True  # every ratio is against it
    if solver not in getattr(args, "solvers", SOLVERS):
        return False
    if args.no_baselines:
        return False
    if solver == "scipy lobpcg + pyamg":
        try:
            import pyamg  # noqa: F401
        except ImportError:
            return False
    if solver == "scipy lobpcg":
        return batch == 1 and n <= args.max_baseline_n
    if solver == "torch.lobpcg":
        return batch == 1 and n <= args.max_baseline_n // 4
    return True


def concentration(z, d) -> int:
    """How many pixels hold 90 % of ``z``'s ``D``-weighted mass."""
    w = np.sort(d * z * z)[::-1]
    return int(np.searchsorted(np.cumsum(w), 0.9 * w.sum()) + 1)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def island_check(side: int, args) -> dict:
    """l2 on the 8-neighbour graph of every solver against shift-invert (see --island)."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh

    import diffeig

    W = diffeig.ncut.pixel_affinity(quokka(side, torch.float64), radius=1.5)
    M, d = scipy_matrix(W)
    L, D = (sp.diags(d) - M).tocsc(), sp.diags(d).tocsc()
    t, (mu, V) = timed(lambda: eigsh(L, k=3, M=D, sigma=-1e-10, which="LM"))
    o = np.argsort(mu)
    ref = float(mu[o[1]])
    out = {"side": side, "nnz": W._nnz(), "shift-invert": {"seconds": t, "l2": ref}}
    out["shift-invert"]["pixels"] = concentration(V[:, o[1]], d)
    t, (lam, z) = timed(lambda: diffeig.sym_eigh_ncut(W, 2, method="lobpcg", tol=args.tol))
    out["diffeig"] = {"seconds": t, "l2": float(lam[1]), "z": z[:, 1].numpy()}
    solvers = {
        "ARPACK": lambda: arpack(M, d, args.tol),
        "ARPACK, projected": lambda: arpack(M, d, args.tol, projected=True),
    }
    try:
        import pyamg  # noqa: F401

        solvers["scipy lobpcg + pyamg"] = lambda: scipy_lobpcg(M, d, args.tol, amg=True)
    except ImportError:
        pass
    if side * side <= args.max_baseline_n:
        solvers["torch.lobpcg"] = lambda: torch_lobpcg(W, args.tol)
    for name, solve in solvers.items():
        t, r = timed(solve)
        out[name] = {"seconds": t, "l2": r[0], "z": r[1]}
    for name, r in out.items():
        if isinstance(r, dict):
            z = r.pop("z", None)
            if z is not None:
                r["pixels"] = concentration(np.asarray(z), d)
            r["rel_diff"] = abs(r["l2"] - ref) / ref
            print(f"  {name}: l2 {r['l2']:.6e} ({r['rel_diff']:.1e} from shift-invert)")
    return out


def measure(side: int, batch: int, threads: int, args) -> dict:
    """Every wanted solver at one size, batch and thread count, each in its own process."""
    n = side * side
    print(f"{side} px (N = {n}), batch {batch}, {threads} thread(s):", flush=True)
    row = {"side": side, "N": n, "batch": batch, "threads": threads, "solvers": {}}
    for solver in SOLVERS:
        if not wanted(solver, side, batch, args):
            continue
        r = run_child(side, batch, solver, threads, args)
        if r is None:
            continue
        row["solvers"][solver] = r
        it = f", {r['iterations']} it" if r.get("iterations") is not None else ""
        bwd = f" + backward {r['backward']:.3f} s" if "backward" in r else ""
        print(
            f"  {solver}: forward {r['forward']:.3f} s{bwd}{it}, residual {r['residual']:.1e}, "
            f"l2 {r['l2'][0]:.6e}, peak RSS {r['peak_rss_GB']:.2f} GB, load {r['load_average']}",
            flush=True,
        )
    ref = row["solvers"].get("ARPACK")
    if ref:
        for r in row["solvers"].values():
            r["l2_rel_diff_vs_arpack"] = max(abs(x - ref["l2"][0]) / ref["l2"][0] for x in r["l2"])
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[112, 224, 448], help="image sides")
    p.add_argument(
        "--batch", default="112:8", help="S:B, a batch of B graphs of S px ('' for none)"
    )
    p.add_argument("--tol", type=float, default=1e-6, help="relative residual (all solvers)")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of every solver")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of every solver (median)")
    p.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=sorted({1, torch.get_num_threads()}),
        help="thread counts, each for every solver (default: 1 and this machine's)",
    )
    p.add_argument("--max-baseline-n", type=int, default=60000, help="scipy lobpcg up to this N")
    p.add_argument("--no-baselines", action="store_true", help="diffeig only")
    p.add_argument(
        "--solvers",
        nargs="+",
        default=list(SOLVERS),
        choices=SOLVERS,
        help="which baselines to run beside diffeig (default: all; the others' cells are '-')",
    )
    p.add_argument(
        "--island", type=int, default=224, help="side of the 8-neighbour check (0: none)"
    )
    p.add_argument("--json", default=None)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--child-solver", default="diffeig", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args)))
        return
    settings = [(s, 1) for s in args.sizes]
    if args.batch:
        s, b = (int(x) for x in args.batch.split(":"))
        settings.append((s, b))
    print(
        f"Sparse NCut on the quokka, k = 2, {args.dtype}, tol {args.tol:g}, threads "
        f"{args.threads}, {args.warmup} warm-up + {args.repeats} timed runs each",
        flush=True,
    )
    meta = metadata("cpu")
    results = [measure(s, b, t, args) for t in args.threads for s, b in settings]
    island = None
    if args.island:
        print(f"8-neighbour graph at {args.island} px: l2 against shift-invert", flush=True)
        island = island_check(args.island, args)
    if args.json:
        payload = {
            "benchmark": "sparse_ncut",
            "args": vars(args),
            "metadata": meta,
            "load_average_end": load_average(),
            "results": results,
            "island": island,
        }
        write_json(args.json, payload)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    main()
