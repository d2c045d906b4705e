"""From a feature map to a mask and a box: the "Simple" rule and TokenCut's.

Both take one image's features ``(C, h, w)`` and return a dict with ``mask`` (h, w) bool
on the token grid, ``z`` (the eigenvectors, (h, w, k)), and, for TokenCut, ``seed`` and
``box`` (pixel edges ``x1, y1, x2, y2``).
"""

from __future__ import annotations

import numpy as np
import torch

import diffeig
from diffeig.ncut import affinity, bipartition, seed


def eigenvectors(features, *, k, tau, eps, mode, laplacian, solver="dense"):
    C, h, w = features.shape
    if h * w < 2:
        raise ValueError(f"an image needs at least 2 patches to be cut, got a {h} x {w} token grid")
    f = features.flatten(1).T.double()
    W = affinity(f, tau=tau, eps=eps, mode=mode)
    lam, Z = diffeig.sym_eigh_ncut(W, min(k, h * w), laplacian=laplacian, sign="max", method=solver)
    return lam, Z.reshape(h, w, -1)


def simple(
    features: torch.Tensor,
    *,
    k: int = 2,
    tau: float = 0.0,
    eps: float = 1e-6,
    solver: str = "dense",
) -> dict:
    """The DNCut code's saliency rule: tau = 0 weighted graph, z2 of the unnormalized
    Laplacian, foreground = the smaller side of ``z2 > 0``. ``solver``: the ``method`` of
    :func:`diffeig.sym_eigh_ncut` (dense, lobpcg or auto: the same vectors)."""
    lam, Z = eigenvectors(
        features,
        k=max(k, 2),
        tau=tau,
        eps=eps,
        mode="weighted",
        laplacian="unnormalized",
        solver=solver,
    )
    z2 = Z[..., 1]
    mask = bipartition(z2.flatten(), rule="zero", foreground="smaller").reshape(z2.shape)
    return {"mask": mask, "z": Z, "eigenvalues": lam}


def tokencut(
    features: torch.Tensor,
    *,
    patch_size: int,
    image_size,
    k: int = 2,
    tau: float = 0.2,
    eps: float = 1e-5,
    solver: str = "dense",
) -> dict:
    """TokenCut: binary graph (``A > tau``, else ``eps``), generalized NCut, split at the
    mean of z2, foreground = the side of the seed ``argmax |z2|``, then the 4-connected
    component of the seed; its bounding box times the patch size, clipped to the image."""
    lam, Z = eigenvectors(
        features, k=max(k, 2), tau=tau, eps=eps, mode="binary", laplacian="ncut", solver=solver
    )
    out = seed_component(Z[..., 1], patch_size=patch_size, image_size=image_size)
    out.update(z=Z, eigenvalues=lam)
    return out


def seed_component(z2: torch.Tensor, *, patch_size: int, image_size) -> dict:
    """TokenCut's steps after the eigen solve, on a z2 map ``(h, w)``: the mean split, the
    side holding the seed ``argmax |z2|``, the seed's 4-connected component (``mask``) and
    its box ``x1, y1, x2, y2`` in pixel edges, clipped to ``image_size = (H, W)``."""
    from scipy import ndimage

    h, w = z2.shape
    side = bipartition(z2.flatten(), rule="mean", foreground="seed").reshape(h, w)
    sy, sx = divmod(int(seed(z2.flatten())), w)
    labels, _ = ndimage.label(side.numpy())  # default structure: 4-connectivity
    component = torch.from_numpy(labels == labels[sy, sx])
    box = mask_box(component, patch_size, image_size)
    return {"mask": component, "seed": (sy, sx), "box": box, "side": side}


def mask_box(mask: torch.Tensor, patch_size: int, image_size) -> torch.Tensor:
    """The bounding box of a non-empty token mask ``(h, w)`` in pixel edges
    ``x1, y1, x2, y2`` (tokens times the patch size), clipped to ``image_size = (H, W)``;
    the whole image for an empty mask."""
    ys, xs = np.nonzero(mask.numpy())
    H, W = image_size
    if len(xs) == 0:
        return torch.tensor([0.0, 0.0, W, H], dtype=torch.float64)
    return torch.tensor(
        [
            xs.min() * patch_size,
            ys.min() * patch_size,
            min((xs.max() + 1) * patch_size, W),
            min((ys.max() + 1) * patch_size, H),
        ],
        dtype=torch.float64,
    )


def upsample(mask: torch.Tensor, size, dtype=torch.float64) -> torch.Tensor:
    """A token mask ``(h, w)`` bilinearly upsampled to ``size = (H, W)``, values in [0, 1]."""
    m = mask.to(dtype)[None, None]
    return torch.nn.functional.interpolate(
        m, size=tuple(size), mode="bilinear", align_corners=False
    )[0, 0]
