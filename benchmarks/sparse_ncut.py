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
import contextlib
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

# the quokka (tests/data) and the five photographs scikit-image bundles (the [bench] extra)
PHOTOS = ("quokka", "astronaut", "coffee", "chelsea", "camera", "rocket")


def photo(name: str, side: int, dtype) -> torch.Tensor:
    """``(3, side, side)`` in [0, 1]: the photo resized (bicubic); grey ones as RGB."""
    from PIL import Image

    if name == "quokka":
        img = Image.open(ROOT / "tests/data/quokka.jpg")
    else:
        try:
            import skimage.data
        except ImportError:
            sys.exit(f"--photos {name} needs scikit-image: pip install -e '.[bench]'")
        img = Image.fromarray(getattr(skimage.data, name)())
    img = img.convert("RGB").resize((side, side), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).to(dtype) / 255


def quokka(side: int, dtype) -> torch.Tensor:
    return photo("quokka", side, dtype)


def graph(name: str, side: int, batch: int, dtype):
    import diffeig

    x = photo(name, side, dtype)
    return diffeig.ncut.pixel_affinity(x if batch == 1 else x.expand(batch, -1, -1, -1))


SOLVERS = (
    "diffeig",
    "ARPACK",
    "ARPACK, projected",
    "scipy lobpcg",
    "scipy lobpcg + pyamg",
    "torch.lobpcg",
    "primme",
    "shift-invert",
)
# baselines that are references rather than competitors: not in the ratios
REFERENCE = "shift-invert"


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


def primme_solve(M, d, tol):
    """The Fiedler pair by PRIMME (its default method, GD+k / JDQMR chosen dynamically) on
    the normalized Laplacian ``I - D^-1/2 W D^-1/2``, smallest, k = 1, the trivial vector
    ``D^1/2 1`` locked (the structure diffeig uses), from the seeded random vector. PRIMME
    stops at ``|A v - l v| < tol max|l|`` and ``max|l|`` is about 2 here, so it gets
    ``tol / 2``; the residual measured after it is the contract's."""
    import primme
    import scipy.sparse as sp

    n = len(d)
    s = 1 / np.sqrt(d)
    A = (sp.identity(n, format="csr") - sp.diags(s) @ M @ sp.diags(s)).tocsr()
    u1 = np.sqrt(d) / np.linalg.norm(np.sqrt(d))
    v0 = seeded_vector(n)
    v0 -= u1 * (u1 @ v0)
    lam, U, stats = primme.eigsh(
        A, k=1, which="SA", tol=tol / 2, v0=v0[:, None], lock=u1[:, None], return_stats=True
    )
    info = {"iterations": int(stats["numOuterIterations"]), "matvecs": int(stats["numMatvecs"])}
    return float(lam[0]), s * U[:, 0], info


def shift_invert(M, d):
    """The reference: the three smallest pairs of ``(L, D)`` by shift-invert Lanczos
    (``eigsh(L, M=D, sigma=-1e-10)``, an LU of ``L - sigma D``), which no start vector
    can mislead; its l1 and l3 bound the window a right l2 falls in."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh

    L, D = (sp.diags(d) - M).tocsc(), sp.diags(d).tocsc()
    mu, V = eigsh(L, k=3, M=D, sigma=-1e-10, which="LM", v0=seeded_vector(len(d)))
    o = np.argsort(mu)
    return float(mu[o[1]]), V[:, o[1]], {"l1": float(mu[o[0]]), "l3": float(mu[o[2]])}


def right_pair(l2: float, ref: dict) -> bool:
    """Whether ``l2`` is the second smallest eigenvalue: nearer the reference's l2 than
    its l1 or l3 (the trivial pair and the next one are both wrong answers)."""
    l1, r2, l3 = ref["l1"], ref["l2"][0], ref["l3"]
    return (l1 + r2) / 2 < l2 < (r2 + l3) / 2


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
    W = graph(args.child_photo, args.child, batch if name == "diffeig" else 1, dtype)
    nnz = W._nnz()
    # each solver's input held, the rest freed, the high-water mark reset: its peak RSS is
    # its input and its own work (not the affinity build, not another solver's input)
    M = d = None
    if name != "diffeig":
        M, d = scipy_matrix(W)
        if name != "torch.lobpcg":
            W = None
    reset_peak_rss()
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
            "primme": lambda: primme_solve(M, d, args.tol),
            "shift-invert": lambda: shift_invert(M, d),
        }[name]
        # a batch of B graphs is B solves; the reference (no competitor) runs once
        counts = (0, 1) if name == REFERENCE else (args.warmup, args.repeats)
        fwd, out = median_timing(
            lambda: [solve() for _ in range(batch)][-1], warmup=counts[0], repeats=counts[1]
        )
        lam2, z2 = out[0], out[1]
        l2s = [lam2] * batch
        if len(out) > 2:
            extra.update(out[2])
    peak = peak_rss_gb()
    if M is None:  # diffeig's residual, measured the same way, after its runs
        M, d = scipy_matrix(W if W.dim() == 2 else W[0])
    return {
        "forward": fwd["median"],
        "forward_timing": fwd,
        **extra,
        "total": fwd["median"] + extra.get("backward", 0.0),
        "l2": l2s,
        "residual": ncut_residual(M, d, lam2, np.asarray(z2, dtype=np.float64)),
        "peak_rss_GB": peak,
        "nnz": nnz,
        "load_average": load,
    }


def reset_peak_rss() -> None:
    """Start the process's high-water mark of RSS afresh (Linux: ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # not Linux: the peak then includes the graph's construction
        pass


def peak_rss_gb() -> float:
    """The process's peak RSS since :func:`reset_peak_rss` (``VmHWM``), in GB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e6  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def run_child(name: str, side: int, batch: int, solver: str, threads: int, args) -> dict | None:
    cmd = [sys.executable, __file__, "--child", str(side), "--child-batch", str(batch)]
    cmd += ["--child-photo", name]
    cmd += ["--child-solver", solver, "--threads", str(threads), "--tol", str(args.tol)]
    cmd += ["--dtype", args.dtype, "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    env = thread_env(threads)
    if args.wait_policy:
        env["OMP_WAIT_POLICY"] = args.wait_policy
    if args.fixed_threads:
        env["DIFFEIG_ADAPTIVE_THREADS"] = "0"
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if res.returncode:
        if solver == "diffeig":
            sys.exit(f"diffeig on {name} at {side} px failed:\n{res.stderr[-3000:]}")
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
    module = {"scipy lobpcg + pyamg": "pyamg", "primme": "primme"}.get(solver)
    if module:
        try:
            __import__(module)
        except ImportError:
            return False
    if solver == REFERENCE:
        return batch == 1 and n <= args.max_reference_n
    if solver.startswith("ARPACK"):
        return n <= args.max_arpack_n
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


def island_check(name: str, side: int, args) -> dict:
    """l2 on the 8-neighbour graph of every solver against shift-invert (see --island)."""
    import diffeig

    W = diffeig.ncut.pixel_affinity(photo(name, side, torch.float64), radius=1.5)
    M, d = scipy_matrix(W)
    t, (l2, v, ref) = timed(lambda: shift_invert(M, d))
    ref["l2"] = [l2]
    out = {"photo": name, "side": side, "nnz": W._nnz(), "reference": ref}
    out["shift-invert"] = {"seconds": t, "l2": l2, "pixels": concentration(v, d)}
    t, (lam, z) = timed(lambda: diffeig.sym_eigh_ncut(W, 2, method="lobpcg", tol=args.tol))
    out["diffeig"] = {"seconds": t, "l2": float(lam[1]), "z": z[:, 1].numpy()}
    solvers = {
        "ARPACK": lambda: arpack(M, d, args.tol),
        "ARPACK, projected": lambda: arpack(M, d, args.tol, projected=True),
    }
    for solver, module, solve in (
        ("scipy lobpcg + pyamg", "pyamg", lambda: scipy_lobpcg(M, d, args.tol, amg=True)),
        ("primme", "primme", lambda: primme_solve(M, d, args.tol)),
    ):
        try:
            __import__(module)
        except ImportError:
            continue
        solvers[solver] = solve
    if side * side <= args.max_baseline_n:
        solvers["torch.lobpcg"] = lambda: torch_lobpcg(W, args.tol)
    for solver, solve in solvers.items():
        try:
            t, r = timed(solve)
        except Exception as e:  # a baseline that fails is a finding, not a crash
            print(f"  {solver} failed: {type(e).__name__}: {e}", flush=True)
            continue
        out[solver] = {"seconds": t, "l2": r[0], "z": r[1]}
    for solver, r in out.items():
        if solver in ("photo", "side", "nnz", "reference"):
            continue
        z = r.pop("z", None)
        if z is not None:
            r["pixels"] = concentration(np.asarray(z), d)
        r["rel_diff"] = abs(r["l2"] - l2) / l2
        r["right_pair"] = right_pair(r["l2"], ref)
        print(
            f"  {solver}: l2 {r['l2']:.6e} ({r['rel_diff']:.1e} from shift-invert), "
            f"{'right' if r['right_pair'] else 'WRONG'} pair, {r['pixels']} px hold 90 %",
            flush=True,
        )
    return out


REFERENCES: dict = {}  # (photo, side, batch) -> the reference's result, run once


def measure(name: str, side: int, batch: int, threads: int, args) -> dict:
    """Every wanted solver on one photo at one size, batch and thread count, each in its
    own process."""
    n = side * side
    print(f"{name} at {side} px (N = {n}), batch {batch}, {threads} thread(s):", flush=True)
    row = {"photo": name, "side": side, "N": n, "batch": batch, "threads": threads}
    row["solvers"] = {}
    with busy_loops(args.load):
        solve_all(row, args)
    return row


def solve_all(row: dict, args) -> None:
    name, side, batch, threads = row["photo"], row["side"], row["batch"], row["threads"]
    for solver in SOLVERS:
        if not wanted(solver, side, batch, args):
            continue
        known = REFERENCES.get((name, side, batch))
        if solver == REFERENCE and known:  # the pair does not depend on the threads
            row["solvers"][solver] = known
            continue
        r = run_child(name, side, batch, solver, threads, args)
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
    ref = row["solvers"].get(REFERENCE)
    if ref:
        REFERENCES[name, side, batch] = ref
        for solver, r in row["solvers"].items():
            r["right_pair"] = all(right_pair(x, ref) for x in r["l2"])
            if not r["right_pair"]:
                print(f"  {solver}: WRONG pair (l2 {r['l2']} vs {ref['l2'][0]:.6e})", flush=True)


@contextlib.contextmanager
def busy_loops(count: int):
    """``count`` processes spinning on a core each while the solvers run (``--load``):
    the loaded machine of the thread-contention measurement, the same for every solver."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


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
    p.add_argument(
        "--photos",
        nargs="+",
        default=["quokka"],
        choices=PHOTOS,
        help="photos (all but the quokka need scikit-image, the [bench] extra)",
    )
    p.add_argument("--max-baseline-n", type=int, default=60000, help="scipy lobpcg up to this N")
    p.add_argument("--max-arpack-n", type=int, default=448 * 448, help="ARPACK (both) up to this N")
    p.add_argument(
        "--max-reference-n",
        type=int,
        default=224 * 224,
        help="shift-invert (the right-pair reference, 1.6 GB at 224 px) up to this N",
    )
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
    p.add_argument(
        "--load",
        type=int,
        default=0,
        help="busy-loop processes running beside every solver (a loaded machine)",
    )
    p.add_argument(
        "--wait-policy",
        default=None,
        choices=["active", "passive"],
        help="OMP_WAIT_POLICY of every solver's process (default: the runtime's own)",
    )
    p.add_argument(
        "--fixed-threads",
        action="store_true",
        help="diffeig keeps the thread count on a loaded machine (DIFFEIG_ADAPTIVE_THREADS=0)",
    )
    p.add_argument("--json", default=None)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--child-solver", default="diffeig", help=argparse.SUPPRESS)
    p.add_argument("--child-photo", default="quokka", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args)))
        return
    settings = [(s, 1) for s in args.sizes]
    if args.batch:
        s, b = (int(x) for x in args.batch.split(":"))
        settings.append((s, b))
    print(
        f"Sparse NCut on {', '.join(args.photos)}, k = 2, {args.dtype}, tol {args.tol:g}, threads "
        f"{args.threads}, {args.warmup} warm-up + {args.repeats} timed runs each",
        flush=True,
    )
    meta = metadata("cpu")
    results = [
        measure(name, s, b, t, args)
        for t in args.threads
        for name in args.photos
        for s, b in settings
    ]
    island = []
    for name in args.photos if args.island else ():
        print(f"{name}, 8-neighbour graph at {args.island} px: l2 against shift-invert")
        island.append(island_check(name, args.island, args))
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
