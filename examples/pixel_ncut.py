"""The quokka cut at pixel resolution by a sparse normalized cut, then learned through it.

    python examples/pixel_ncut.py [--side 320] [--steps 8] [--figure pixel_ncut.png]

1. Shi & Malik's pixel graph of the photo (``diffeig.ncut.pixel_affinity``: colour and
   position, radius 5, about 78 weights per pixel) at ``--side`` pixels on its longer
   side (``--side 0``: the full 960 x 643, 617k pixels), cut by
   ``diffeig.sym_eigh_ncut`` (sparse LOBPCG with a multigrid preconditioner). The Fiedler
   vector ``z2`` split at 0, the side holding ``argmax |z2|`` as foreground, is compared
   with the annotated mask; the figure shows the photo, z2 with a colour bar, and the cut.
2. A few steps of learning through the sparse cut: a 3 x 3 colour transform ``M`` (from
   the identity) is trained so that ``sigmoid(z2 / t)`` matches the annotated mask;
   the gradient reaches ``M`` through the eigenvectors, the stored weights and the
   graph's construction. The loss printed each step falls.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from PIL import Image

import diffeig
from diffeig.ncut import pixel_affinity

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "tests", "data")


def load(side: int):
    img = Image.open(os.path.join(DATA, "quokka.jpg")).convert("RGB")
    mask = Image.open(os.path.join(DATA, "quokka_mask.png")).convert("L")
    if side:
        s = side / max(img.size)
        size = (max(2, round(img.size[0] * s)), max(2, round(img.size[1] * s)))
        img, mask = img.resize(size, Image.BICUBIC), mask.resize(size, Image.NEAREST)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).double() / 255
    m = torch.from_numpy(np.asarray(mask).copy() > 127)
    return x, m


def cut(z2: torch.Tensor) -> torch.Tensor:
    fg = z2 > 0
    return fg if bool(fg.flatten()[z2.abs().argmax()]) else ~fg


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(1, float((a | b).sum()))


def figure(path, x, z2, fg):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].imshow(x.permute(1, 2, 0).numpy())
    ax[0].set_title(f"photo ({x.shape[2]} x {x.shape[1]} px)")
    lim = float(torch.quantile(z2.abs().flatten()[:: max(1, z2.numel() // 100000)], 0.99))
    im = ax[1].imshow(z2.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax[1].set_title("Fiedler vector z2")
    fig.colorbar(im, ax=ax[1], fraction=0.035)
    ax[2].imshow(fg.numpy(), cmap="gray")
    ax[2].set_title("the cut (foreground white)")
    for a in ax:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"figure: {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--side", type=int, default=320, help="longer side in px (0: full size)")
    p.add_argument("--steps", type=int, default=8, help="learning steps (0: none)")
    p.add_argument("--learn-side", type=int, default=96, help="image side for the learning")
    p.add_argument("--figure", default=None, help="write the figure here (needs matplotlib)")
    args = p.parse_args(argv)

    x, mask = load(args.side)
    H, Wd = x.shape[1:]
    t0 = time.perf_counter()
    W = pixel_affinity(x)
    lam, z = diffeig.sym_eigh_ncut(W, k=2)
    z2 = z[:, 1].reshape(H, Wd)
    fg = cut(z2)
    score = iou(fg, mask)
    print(
        f"{Wd} x {H} px ({H * Wd} nodes, {W._nnz()} weights): l2 = {float(lam[1]):.3e}, "
        f"IoU with the mask = {score:.3f} (all foreground: {iou(torch.ones_like(mask), mask):.3f}),"
        f" {time.perf_counter() - t0:.2f} s"
    )
    if args.figure:
        figure(args.figure, x, z2, fg)

    losses = []
    if args.steps:
        xs, ms = load(args.learn_side)
        target = ms.double().flatten()
        M = torch.eye(3, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([M], lr=0.02)
        for step in range(args.steps):
            y = torch.einsum("ij,jhw->ihw", M, xs)
            lam, z = diffeig.sym_eigh_ncut(pixel_affinity(y, sigma_color=0.2), k=2)
            z2 = z[:, 1] / z[:, 1].abs().max()
            # the eigenvector's sign is arbitrary: score the better of the two sides
            soft = torch.sigmoid(z2 / 0.1)
            loss = torch.minimum(
                torch.nn.functional.binary_cross_entropy(soft, target),
                torch.nn.functional.binary_cross_entropy(1 - soft, target),
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            print(f"step {step}: loss {losses[-1]:.4f}, |dL/dM| {M.grad.norm().item():.2e}")
    return score, losses


if __name__ == "__main__":
    main()
