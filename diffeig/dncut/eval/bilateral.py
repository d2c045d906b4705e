"""The fast bilateral solver (Barron & Poole, ECCV 2016) as TokenCut uses it to refine a
coarse saliency mask along the image's edges.

Pixels are splatted onto a bilateral grid over (x, y, luma, chroma u, chroma v) scaled by
``sigma_spatial``, ``sigma_luma``, ``sigma_chroma`` (TokenCut: 16, 16, 8); the smoothness
term is a blur on that grid, made bistochastic; the target is fitted with confidence
0.999 and weight ``lam`` = 256 by preconditioned conjugate gradients (25 iterations, tol
1e-5), as TokenCut's ``bilateral_solver.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage, sparse
from scipy.sparse.linalg import cg


def _grid(image: np.ndarray, sigma_spatial, sigma_luma, sigma_chroma):
    H, W, _ = image.shape
    rgb = image.astype(np.float64)
    yuv = np.stack(
        [
            0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2],
            -0.168736 * rgb[..., 0] - 0.331264 * rgb[..., 1] + 0.5 * rgb[..., 2] + 128,
            0.5 * rgb[..., 0] - 0.418688 * rgb[..., 1] - 0.081312 * rgb[..., 2] + 128,
        ],
        -1,
    )
    yy, xx = np.mgrid[:H, :W]
    coords = np.stack(
        [
            xx / sigma_spatial,
            yy / sigma_spatial,
            yuv[..., 0] / sigma_luma,
            yuv[..., 1] / sigma_chroma,
            yuv[..., 2] / sigma_chroma,
        ],
        -1,
    ).reshape(-1, 5)
    coords = np.floor(coords).astype(np.int64)
    coords -= coords.min(0)
    base = coords.max(0) + 3
    hashes = (coords * np.cumprod(np.r_[1, base[:-1]])).sum(1)
    unique, idx = np.unique(hashes, return_inverse=True)
    npix, nverts = H * W, len(unique)
    S = sparse.csr_matrix((np.ones(npix), (idx, np.arange(npix))), shape=(nverts, npix))
    blur = sparse.csr_matrix((nverts, nverts))
    strides = np.cumprod(np.r_[1, base[:-1]])
    for d in range(5):
        for off in (-1, 1):
            neighbor = np.searchsorted(unique, unique + off * strides[d])
            neighbor = np.clip(neighbor, 0, nverts - 1)
            valid = unique[neighbor] == unique + off * strides[d]
            rows = np.flatnonzero(valid)
            blur = blur + sparse.csr_matrix(
                (np.ones(len(rows)), (rows, neighbor[valid])), shape=(nverts, nverts)
            )
    return S, blur


def bilateral_solve(
    image,
    target: torch.Tensor,
    *,
    sigma_spatial: float = 16,
    sigma_luma: float = 16,
    sigma_chroma: float = 8,
    lam: float = 256,
    iterations: int = 25,
) -> torch.Tensor:
    """Refine a mask ``target (H, W)`` in [0, 1] along the edges of ``image`` (PIL, H x W).

    Returns the refined binary mask as float: the solved map thresholded at 0.5, holes
    filled, its largest connected component; the unrefined target when the refinement
    disagrees with it (IoU < 0.5), as TokenCut does.
    """
    img = np.asarray(image.convert("RGB"))
    if img.shape[:2] != tuple(target.shape):
        raise ValueError(f"image {img.shape[:2]} and target {tuple(target.shape)} differ in size")
    S, blur = _grid(img, sigma_spatial, sigma_luma, sigma_chroma)
    nverts = S.shape[0]
    m = np.asarray(S.sum(1)).ravel()
    # Bistochastization (Barron & Poole, Alg. 1): Dn with Dn B Dn 1 ~ m.
    blur = blur + 2 * 5 * sparse.identity(nverts)
    n = np.ones(nverts)
    for _ in range(10):
        n = np.sqrt(n * m / (blur @ n))
    Dn, Dm = sparse.diags(n), sparse.diags(m)
    A_smooth = Dm - Dn @ blur @ Dn
    t = target.double().numpy().ravel()
    w = np.full_like(t, 0.999)
    A = lam * A_smooth + sparse.diags(np.maximum(S @ w, 1e-5))
    b = S @ (w * t)
    precond = sparse.diags(1 / np.maximum(A.diagonal(), 1e-5))
    y, _ = cg(A, b, x0=b / np.maximum(S @ w, 1e-5), M=precond, maxiter=iterations, rtol=1e-5)
    out = (S.T @ y).reshape(target.shape)
    binary = ndimage.binary_fill_holes(out > 0.5)
    labels, count = ndimage.label(binary)
    if count:
        sizes = ndimage.sum(binary, labels, range(1, count + 1))
        binary = labels == (1 + int(np.argmax(sizes)))
    ref = target.numpy() > 0.5
    union = (binary | ref).sum()
    iou = (binary & ref).sum() / union if union else 1.0
    result = binary if iou >= 0.5 else ref
    return torch.from_numpy(result.astype(np.float64))
