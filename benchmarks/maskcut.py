"""MaskCut's cuts per image: CutLER's scipy eigen solve against diffeig's batched solver.

    python benchmarks/maskcut.py --json bench-results/maskcut.json     (make bench-maskcut)

Generated multi-object images at 480 px through the colour baseline with patch 8
(N = 3600 tokens, 384 feature dimensions as DINO ViT-S/8, MaskCut's scales), max_objects
3, tau 0.2. Every solver runs inside the same MaskCut loop
(``diffeig.dncut.eval.maskcut.cuts``: the same graphs, flip rule, components, drop rule;
only the eigen solve differs), on the same threads:

- ``CutLER``: ``scipy.linalg.eigh(D - A, D, subset_by_index=[1, 2])`` per graph, what
  CutLER's ``maskcut.py`` runs (the paper-side variant);
- ``scipy, standard form``: the same pair from ``eigh(L_sym, subset_by_index=[1, 1])``
  (``L_sym = I - D^-1/2 A D^-1/2``, one symmetric problem instead of a generalized
  one): the strongest dense baseline;
- ``ARPACK``: ``scipy.sparse.linalg.eigsh`` on ``D^-1/2 A D^-1/2`` (its two largest,
  ``which='LA'``), the same tolerance as diffeig (``MASK_TOL``) and the same seeded
  start: the strongest iterative baseline;
- ``diffeig, one image``: ``diffeig.dncut.maskcut`` an image at a time;
- ``diffeig, batch``: the images ``--batch`` at a time (seconds per image).

Reported per image (medians over the images): the seconds of the three cuts (graph,
eigen solve, masks) and of the eigen solves alone, the largest NCut residual
``||(D - A) z - l D z|| / ||D z||`` of any cut, and the masks' agreement with CutLER's
(IoU >= 0.99). Then the whole ``pseudo-masks`` command's images/s with the colour
backbone and the random ViT-S/16 (N = 900), image reading and COCO writing included.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, metadata, ncut_residual, seeded_vector, write_json  # noqa: E402

from diffeig._tolerances import MASK_TOL  # noqa: E402
from diffeig.dncut.eval.maskcut import cuts, fiedler_solver  # noqa: E402

# MaskCut's colour-baseline scales (docs/pseudo-masks.md) and DINO ViT-S/8's width.
COLOR = {"color_sigma": 14.0, "position_sigma": 0.5, "dim": 384}


def _signed(z: np.ndarray) -> np.ndarray:
    return -z if z[np.argmax(np.abs(z))] < 0 else z


def cutler_solve(W: np.ndarray):
    from scipy.linalg import eigh

    D = np.diag(W.sum(1))
    values, vectors = eigh(D - W, D, subset_by_index=[1, 2])
    return values[0], vectors[:, 0]


def standard_solve(W: np.ndarray):
    from scipy.linalg import eigh

    s = 1 / np.sqrt(W.sum(1))
    L = np.eye(len(W)) - s[:, None] * W * s[None, :]
    values, vectors = eigh(L, subset_by_index=[1, 1])
    return values[0], vectors[:, 0] * s


def arpack_solve(W: np.ndarray):
    from scipy.sparse.linalg import eigsh

    s = 1 / np.sqrt(W.sum(1))
    S = s[:, None] * W * s[None, :]
    values, vectors = eigsh(S, k=2, which="LA", v0=seeded_vector(len(W)), tol=MASK_TOL)
    order = np.argsort(-values)  # largest first: the trivial 1, then 1 - l2
    return 1 - values[order[1]], vectors[:, order[1]] * s


def per_graph(solve):
    """A batch solver from one for a single numpy graph (D-normalized, sign 'max')."""

    def run(W: torch.Tensor):
        lams, zs = [], []
        for g in W.cpu().numpy():
            lam, z = solve(g)
            z = z / np.sqrt((g.sum(1) * z * z).sum())
            lams.append(lam)
            zs.append(_signed(z))
        return torch.tensor(lams), torch.from_numpy(np.stack(zs))

    return run


def timed(solve, clock: list, checking: list, residuals: list):
    """``solve`` with its seconds added to ``clock`` and each pair's residual recorded
    (the seconds of that check go to ``checking``, taken off the cuts' time)."""

    def run(W):
        t0 = time.perf_counter()
        lam, z = solve(W)
        t1 = time.perf_counter()
        clock.append(t1 - t0)
        Wn = W.cpu().numpy()
        for g, l2, v in zip(Wn, lam.tolist(), z.cpu().numpy()):
            residuals.append(ncut_residual(g, g.sum(1), l2, v))
        checking.append(time.perf_counter() - t1)
        return lam, z

    return run


def features(n: int, size: int, patch: int) -> torch.Tensor:
    from diffeig.dncut.backbone import ColorFeatures
    from diffeig.dncut.eval.features import to_tensor
    from diffeig.dncut.images import multi_object_image

    backbone = ColorFeatures(patch, **COLOR).eval()
    x = torch.stack([to_tensor(multi_object_image(i, size, seed=1)[0]) for i in range(n)])
    with torch.no_grad():
        f = backbone(x)
    return f.flatten(2).transpose(1, 2).contiguous(), f.shape[-2:]


def measure(name, solve, F, grid, batch, max_objects, tau):
    """Per-image seconds of the cuts and of the eigen solves, the residuals, the masks."""
    per_image, eigen, residuals, masks = [], [], [], []
    for start in range(0, len(F), batch):
        chunk = F[start : start + batch]
        clock: list = []
        checking: list = []
        t0 = time.perf_counter()
        out = cuts(chunk, grid, max_objects, tau, 1e-5, timed(solve, clock, checking, residuals))
        seconds = time.perf_counter() - t0 - sum(checking)
        per_image += [seconds / len(chunk)] * len(chunk)
        eigen += [sum(clock) / len(chunk)] * len(chunk)
        masks.append(out.masks)
    print(f"{name}: {statistics.median(per_image):.3f} s per image", flush=True)
    return {
        "seconds": statistics.median(per_image),
        "eigen_seconds": statistics.median(eigen),
        "max_residual": max(residuals),
        "batch": batch,
    }, torch.cat(masks)


def agreement(ours: torch.Tensor, ref: torch.Tensor) -> dict:
    """Share of masks equal to the reference's at IoU >= 0.99 (two empty masks agree) and
    of images with the same number of objects."""
    same = []
    for a, b in zip(ours.flatten(0, 1), ref.flatten(0, 1)):
        union = (a | b).sum().item()
        same.append(union == 0 or (a & b).sum().item() / union >= 0.99)
    counts = (ours.flatten(2).any(-1).sum(1) == ref.flatten(2).any(-1).sum(1)).float().mean()
    return {"masks_agree": float(np.mean(same)), "counts_agree": float(counts)}


def pipeline(arch: str, n: int, size: int) -> dict:
    """The pseudo-masks command on ``n`` generated images: images/s, in this process."""
    from diffeig.dncut import cli
    from diffeig.dncut.images import write_multi_object

    with tempfile.TemporaryDirectory() as tmp:
        write_multi_object(tmp, n, size, seed=1)
        flags = ["--arch", arch]
        if arch == "color":
            flags += ["--patch-size", "8", "--color-sigma", "14", "--position-sigma", "0.5"]
        argv = ["pseudo-masks", "--root", f"{tmp}/images", "--output", f"{tmp}/out.json",
                "--image-size", str(size), "--quiet", *flags]  # fmt: skip
        t0 = time.perf_counter()
        assert cli.main(argv) == 0
        seconds = time.perf_counter() - t0
    tokens = (size // (8 if arch == "color" else 16)) ** 2
    print(f"pipeline {arch}: {n / seconds:.2f} images/s", flush=True)
    return {"arch": arch, "tokens": tokens, "images": n, "images_per_second": n / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--size", type=int, default=480)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-objects", type=int, default=3)
    p.add_argument("--tau", type=float, default=0.2)
    p.add_argument("--json", default="bench-results/maskcut.json")
    args = p.parse_args()
    md = metadata("cpu")
    F, grid = features(args.images, args.size, args.patch)
    print(f"{len(F)} images, {grid[0]} x {grid[1]} = {F.shape[1]} tokens, {F.shape[2]} dims")
    solvers = {
        "CutLER": (per_graph(cutler_solve), 1),
        "scipy, standard form": (per_graph(standard_solve), 1),
        "ARPACK": (per_graph(arpack_solve), 1),
        "diffeig, one image": (fiedler_solver(), 1),
        "diffeig, batch": (fiedler_solver(), args.batch),
    }
    results, masks = {}, {}
    for name, (solve, batch) in solvers.items():
        results[name], masks[name] = measure(
            name, solve, F, tuple(grid), batch, args.max_objects, args.tau
        )
    base = results["CutLER"]["seconds"]
    for name, r in results.items():
        r["speedup_vs_cutler"] = base / r["seconds"]
        r.update(agreement(masks[name], masks["CutLER"]))
    payload = {
        "benchmark": "maskcut",
        "metadata": md,
        "args": vars(args),
        "tokens": int(F.shape[1]),
        "dims": int(F.shape[2]),
        "solvers": results,
        "pipeline": [
            pipeline("color", args.images, args.size),
            pipeline("random", args.images, args.size),
        ],  # fmt: skip
        "load_average_end": load_average(),
    }
    write_json(args.json, payload)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
