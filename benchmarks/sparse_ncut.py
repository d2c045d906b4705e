"""Pixel-resolution normalized cuts: diffeig's sparse NCut against scipy's ARPACK and the
other sparse eigensolvers, on the quokka photo.

    python benchmarks/sparse_ncut.py [--sizes 112 224 448] [--batch 112:8] [--tol 1e-6]
        [--dtype float64] [--repeats 3] [--json out.json]

The photo (tests/data/quokka.jpg) resized (bicubic) to S x S; the graph of
``diffeig.ncut.pixel_affinity`` (radius 5, sigma_color 0.1, sigma_space 4: about 78
weights per pixel); the normalized cut ``(D - W) z = l D z``, k = 2. Measured, each in
its own process (so that its peak RSS is its own):

- diffeig: ``sym_eigh_ncut(W, 2, method="lobpcg", tol=tol)`` forward, and the backward
  of a loss on the Fiedler vector (``sum sigmoid(10 z2 / max|z2|)^2``), medians of
  ``--repeats``; products with W (in columns) of each, and the peak RSS;
- ARPACK: ``scipy.sparse.linalg.eigsh`` on ``D^-1/2 W D^-1/2``, ``which='LA'``, the same
  tol (forward only: it has no gradient);
- scipy's ``lobpcg`` without a preconditioner (up to ``--max-baseline-n``), with pyamg's
  smoothed aggregation (setup + solve, any size, when pyamg is installed), and
  ``torch.lobpcg`` on the CSR matrix (up to a quarter of ``--max-baseline-n``).

``--batch S:B`` adds a batch of B copies of the S-pixel graph (one 3-D sparse COO W)
against B ARPACK solves. l2 is compared with ARPACK's in the same run.

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


def quokka(side: int, dtype) -> torch.Tensor:
    from PIL import Image

    img = Image.open(ROOT / "tests/data/quokka.jpg").convert("RGB")
    img = img.resize((side, side), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).to(dtype) / 255


def graph(side: int, batch: int, dtype):
    import diffeig

    x = quokka(side, dtype)
    return diffeig.ncut.pixel_affinity(x if batch == 1 else x.expand(batch, -1, -1, -1))


def child(args) -> dict:
    """One diffeig measurement in this process: times, products, peak RSS."""
    import diffeig

    dtype = getattr(torch, args.dtype)
    W0 = graph(args.child, args.child_batch, dtype)
    fwd, bwd, out = [], [], None
    for _ in range(args.repeats):
        W = W0.detach().requires_grad_()
        t0 = time.perf_counter()
        info = diffeig.ncut.SparseInfo()
        lam, z = diffeig.sym_eigh_ncut(W, 2, method="lobpcg", tol=args.tol, info=info)
        t1 = time.perf_counter()
        z2 = z[..., 1]
        loss = (torch.sigmoid(10 * z2 / z2.abs().amax(-1, keepdim=True)) ** 2).sum()
        loss.backward()
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
        out = lam.detach()
    return {
        "forward": float(np.median(fwd)),
        "backward": float(np.median(bwd)),
        "total": float(np.median(fwd) + np.median(bwd)),
        # one product per LOBPCG iteration (covering the batch), plus the first
        "iterations": info.forward_calls - 1,
        "backward_iterations": info.backward_products,
        "levels": info.levels,
        "operator_complexity": info.operator_complexity,
        "l2": out[..., 1].reshape(-1).tolist(),
        "peak_rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "nnz": W0._nnz(),
    }


def run_child(side: int, batch: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", str(side), "--child-batch", str(batch)]
    cmd += ["--tol", str(args.tol), "--dtype", args.dtype, "--repeats", str(args.repeats)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        sys.exit(f"diffeig at {side} px failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def scipy_matrix(W: torch.Tensor):
    import scipy.sparse as sp

    W = W.coalesce()
    i, j = W.indices().numpy()
    n = W.shape[-1]
    M = sp.csr_matrix((W.values().double().numpy(), (i, j)), shape=(n, n))
    d = np.asarray(M.sum(1)).ravel()
    return M, d


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def arpack(M, d, tol):
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh

    s = sp.diags(1 / np.sqrt(d))
    A = (s @ M @ s).tocsr()
    v0 = np.sqrt(d) / np.linalg.norm(np.sqrt(d))  # a fixed start
    mu = eigsh(A, k=2, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
    return {"l2": float(1 - np.sort(mu)[0])}


def scipy_lobpcg(M, d, tol, amg: bool):
    import scipy.sparse as sp
    from scipy.sparse.linalg import lobpcg

    L = (sp.diags(d) - M).tocsr()
    D = sp.diags(d)
    rng = np.random.default_rng(0)
    X = np.column_stack([d, rng.standard_normal((len(d), 2))])
    Y = np.ones((len(d), 1))
    prec = None
    if amg:
        import pyamg

        prec = pyamg.smoothed_aggregation_solver(L).aspreconditioner()
    lam, _, hist = lobpcg(
        L,
        X,
        B=D,
        M=prec,
        Y=Y,
        tol=tol * 2,
        maxiter=500,
        largest=False,
        retResidualNormsHistory=True,
    )
    its = len(hist)
    return {"l2": float(np.sort(lam)[0]), "iterations": its, "converged": its < 500}


def torch_lobpcg(W, tol):
    Wc = W.coalesce()
    d = torch.sparse.sum(Wc, 1).to_dense()
    n = d.numel()
    dis = d.rsqrt()
    i, j = Wc.indices()
    A = torch.sparse_coo_tensor(Wc.indices(), dis[i] * Wc.values() * dis[j], (n, n)).to_sparse_csr()
    X = torch.randn(n, 3, dtype=W.dtype, generator=torch.Generator().manual_seed(0))
    mu, _ = torch.lobpcg(A, k=3, X=X, largest=True, tol=tol, niter=500)
    return {"l2": float(1 - mu.sort(descending=True).values[1])}


def concentration(z, d) -> int:
    """How many pixels hold 90 % of ``z``'s ``D``-weighted mass."""
    w = np.sort(d * z * z)[::-1]
    return int(np.searchsorted(np.cumsum(w), 0.9 * w.sum()) + 1)


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
    out["diffeig"] = {
        "seconds": t,
        "l2": float(lam[1]),
        "pixels": concentration(z[:, 1].numpy(), d),
    }
    t, r = timed(lambda: arpack(M, d, args.tol))
    out["ARPACK"] = {"seconds": t, **r}
    try:
        import pyamg  # noqa: F401

        t, r = timed(lambda: scipy_lobpcg(M, d, args.tol, amg=True))
        out["scipy lobpcg + pyamg"] = {"seconds": t, **r}
    except ImportError:
        pass
    if side * side <= args.max_baseline_n:
        t, r = timed(lambda: torch_lobpcg(W, args.tol))
        out["torch.lobpcg"] = {"seconds": t, **r}
    for name, r in out.items():
        if isinstance(r, dict):
            r["rel_diff"] = abs(r["l2"] - ref) / ref
            print(f"  {name}: l2 {r['l2']:.6e} ({r['rel_diff']:.1e} from shift-invert)")
    return out


def baselines(side: int, batch: int, args) -> dict:
    W = graph(side, 1, torch.float64)
    M, d = scipy_matrix(W)
    n = side * side
    out = {}
    t, r = timed(lambda: [arpack(M, d, args.tol) for _ in range(batch)][0])
    out["ARPACK"] = {"seconds": t, **r}
    print(f"  ARPACK eigsh 'LA' x{batch}: {t:.3f} s, l2 {r['l2']:.6e}", flush=True)
    if batch == 1 and n <= args.max_baseline_n:
        t, r = timed(lambda: scipy_lobpcg(M, d, args.tol, amg=False))
        out["scipy lobpcg"] = {"seconds": t, **r}
        print(f"  scipy lobpcg: {t:.3f} s, {r['iterations']} it", flush=True)
    if batch == 1:
        try:
            import pyamg  # noqa: F401

            t, r = timed(lambda: scipy_lobpcg(M, d, args.tol, amg=True))
            out["scipy lobpcg + pyamg"] = {"seconds": t, **r}
            print(
                f"  scipy lobpcg + pyamg (setup + solve): {t:.3f} s, {r['iterations']} it",
                flush=True,
            )
        except ImportError:
            pass
    if batch == 1 and n <= args.max_baseline_n // 4:
        t, r = timed(lambda: torch_lobpcg(W, args.tol))
        out["torch.lobpcg"] = {"seconds": t, **r}
        print(f"  torch.lobpcg (CSR): {t:.3f} s", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[112, 224, 448], help="image sides")
    p.add_argument(
        "--batch", default="112:8", help="S:B, a batch of B graphs of S px ('' for none)"
    )
    p.add_argument("--tol", type=float, default=1e-6, help="relative residual (all solvers)")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=3, help="diffeig runs (median)")
    p.add_argument("--max-baseline-n", type=int, default=60000, help="scipy lobpcg up to this N")
    p.add_argument("--no-baselines", action="store_true", help="diffeig only")
    p.add_argument(
        "--island", type=int, default=224, help="side of the 8-neighbour check (0: none)"
    )
    p.add_argument("--json", default=None)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-batch", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args)))
        return
    from _common import metadata, write_json

    settings = [(s, 1) for s in args.sizes]
    if args.batch:
        s, b = (int(x) for x in args.batch.split(":"))
        settings.append((s, b))
    print(
        f"Sparse NCut on the quokka, k = 2, {args.dtype}, tol {args.tol:g} "
        f"({torch.get_num_threads()} threads)",
        flush=True,
    )
    results = []
    for side, batch in settings:
        n = side * side
        print(f"{side} px (N = {n}), batch {batch}:", flush=True)
        f = run_child(side, batch, args)
        print(
            f"  diffeig: forward {f['forward']:.3f} s ({f['iterations']} it), backward "
            f"{f['backward']:.3f} s ({f['backward_iterations']} products), peak RSS "
            f"{f['peak_rss_GB']:.2f} GB, levels {f['levels']}",
            flush=True,
        )
        r = {"side": side, "N": n, "batch": batch, "diffeig": f, "baselines": {}}
        if not args.no_baselines:
            r["baselines"] = baselines(side, batch, args)
            ref = r["baselines"]["ARPACK"]["l2"]
            r["l2_rel_diff_vs_arpack"] = max(abs(x - ref) / ref for x in f["l2"])
            ratio = r["baselines"]["ARPACK"]["seconds"] / f["total"]
            print(
                f"  ARPACK forward / diffeig forward + backward: {ratio:.1f}x; l2 vs ARPACK "
                f"{r['l2_rel_diff_vs_arpack']:.1e}",
                flush=True,
            )
        results.append(r)
    island = None
    if args.island:
        print(f"8-neighbour graph at {args.island} px: l2 against shift-invert", flush=True)
        island = island_check(args.island, args)
    if args.json:
        payload = {
            "benchmark": "sparse_ncut",
            "args": vars(args),
            "metadata": metadata("cpu"),
            "results": results,
            "island": island,
        }
        write_json(args.json, payload)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    main()
