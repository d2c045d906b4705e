"""Affinity graphs for the normalized cut: token affinities from features (cosine, as
DNCut and TokenCut), the Gaussian kernel of classical spectral clustering, and the sparse
pixel graph of Shi & Malik."""

from __future__ import annotations

import torch

from diffeig._checks import (
    check_choice,
    check_features,
    check_gaussian,
    check_pixel_affinity,
    values_readable,
)
from diffeig._sparse_checks import SPARSE_BYTES_PER_ENTRY, check_fits

__all__ = ["affinity", "gaussian_affinity", "pixel_affinity", "squared_distances"]


def affinity(
    features: torch.Tensor,
    *,
    tau: float = 0.0,
    eps: float = 1e-6,
    mode: str = "weighted",
    normalize: bool = True,
) -> torch.Tensor:
    """Token affinities from features: cosine similarity, thresholded.

    ``A = f f^T`` with ``f`` L2-normalized over channels (``normalize=False``: the
    features as given, raw dot products), symmetrized exactly.
    ``mode='weighted'``: ``W = A where A > tau else eps`` (the DNCut training graph,
    ``tau=0``, ``eps=1e-6``), differentiable in ``features``. ``mode='binary'``:
    ``W = 1 where A > tau else eps`` (TokenCut: ``tau=0.2``, ``eps=1e-5``), piecewise
    constant, so its gradient is zero.

    Args:
        features: ``(*, N, C)``.
        tau: similarity threshold.
        eps: weight of the pairs at or below ``tau`` (keeps the graph connected).
        mode: ``'weighted'`` or ``'binary'``.
        normalize: L2-normalize the features first (default).

    Returns:
        ``(*, N, N)`` affinity of the features' dtype.
    """
    check_features(features, tau=tau, eps=eps)
    check_choice("mode", mode, ("weighted", "binary"))
    f = torch.nn.functional.normalize(features, dim=-1) if normalize else features
    A = f @ f.mT
    A = 0.5 * (A + A.mT)
    keep = A > tau
    if mode == "weighted":
        return torch.where(keep, A, torch.full_like(A, eps))
    return torch.where(keep, torch.ones_like(A), torch.full_like(A, eps)).detach()


def gaussian_affinity(
    features: torch.Tensor, *, sigma: float, topk: int | None = None
) -> torch.Tensor:
    r"""The Gaussian (RBF) kernel of classical spectral clustering, optionally sparsified.

    ``W_ij = exp(-|x_i - x_j|^2 / sigma^2)``: scikit-learn's
    ``rbf_kernel(X, gamma=1 / sigma**2)`` (diagonal 1). With ``topk``, each node keeps its
    ``topk`` largest weights to other nodes, and the graph is kept symmetric by the union
    of the neighbourhoods (``W_ij`` stays where j is among i's or i among j's, as
    scikit-learn's kNN graphs are symmetrized); every other off-diagonal weight is 0.
    Differentiable in ``features`` (the neighbourhoods are piecewise constant). The
    distances are computed in float64 from centred points, with the pairs where the
    expansion cancels recomputed exactly (:func:`squared_distances`), so a common offset or
    a small spread loses nothing; any finite ``sigma > 0`` works (``W`` tends to the
    identity or to all ones at its extremes).

    Args:
        features: ``(*, N, C)`` points.
        sigma: kernel width, > 0.
        topk: neighbours kept per node, ``1 <= topk < N``, or ``None`` (dense).

    Returns:
        ``(*, N, N)`` symmetric affinity of the features' dtype, in (0, 1].

    Example:
        >>> import torch, diffeig
        >>> x = torch.randn(50, 2, dtype=torch.float64)
        >>> W = diffeig.ncut.gaussian_affinity(x, sigma=0.5, topk=8)
        >>> lam, z = diffeig.sym_eigh_ncut(W + 1e-9, 2)
    """
    check_features(features, tau=0.0, eps=0.0)
    check_gaussian(sigma, topk, features.shape[-2])
    d2 = squared_distances(features)
    # divided twice: sigma^2 itself may underflow or overflow where d2 / sigma^2 does not
    W = torch.exp(-(d2 / sigma) / sigma).to(features.dtype)
    if topk is None:
        return W
    n = W.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=W.device)
    others = W.detach().masked_fill(eye, -1.0)
    idx = others.topk(topk, dim=-1).indices
    keep = torch.zeros_like(eye).expand(W.shape).clone().scatter_(-1, idx, True)
    keep = keep | keep.mT | eye
    return torch.where(keep, W, torch.zeros_like(W))


# Pairs whose squared distance is below this share of |x_i|^2 + |x_j|^2 (after centring)
# lose more than ~1e3 eps of it to cancellation in the expansion; they are recomputed from
# their differences (as scikit-learn's euclidean_distances re-computes such pairs).
CANCELLATION = 1e-3
# Pairs recomputed per chunk (bounds the (chunk, C) temporaries of the differences).
PAIR_CHUNK = 1 << 16


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """``|x_i - x_j|^2`` of ``(*, N, C)`` points, ``(*, N, N)`` in float64 (float32 points
    are upcast, as scikit-learn does): symmetric, exactly 0 on the diagonal,
    differentiable. The points are centred first (a common offset, e.g. pixel coordinates
    + 4000, cancels in every distance); the expansion ``|x_i|^2 + |x_j|^2 - 2 x_i . x_j``
    gives the bulk in one product, and the pairs where it cancels (a distance below
    :data:`CANCELLATION` of the norms: points close together far from the centre) are
    recomputed from their differences."""
    x = x.double()
    x = x - x.mean(-2, keepdim=True)
    sq = (x * x).sum(-1)
    norms = sq.unsqueeze(-1) + sq.unsqueeze(-2)
    d2 = (norms - 2 * x @ x.mT).clamp_min(0)
    d2 = 0.5 * (d2 + d2.mT)
    n, c = x.shape[-2:]
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    if n > 1 and values_readable(x):
        xf, flat = x.reshape(-1, n, c), d2.reshape(-1, n, n)
        b, i, j = ((flat <= CANCELLATION * norms.detach().reshape(-1, n, n)) & ~eye).nonzero(
            as_tuple=True
        )
        if b.numel():
            exact = torch.cat(
                [
                    (xf[b[s:e], i[s:e]] - xf[b[s:e], j[s:e]]).square().sum(-1)
                    for s, e in _chunks(b.numel(), PAIR_CHUNK)
                ]
            )
            d2 = flat.index_put((b, i, j), exact).reshape(d2.shape)
    return d2.masked_fill(eye, 0.0)


def _chunks(n: int, size: int):
    return ((s, min(s + size, n)) for s in range(0, n, size))


# Entries of one band of pixel rows in pixel_affinity (its temporaries: a few numbers each).
AFFINITY_BAND = 1 << 21


def _offsets(radius: float, height: int, width: int) -> torch.Tensor:
    """``(K, 2)`` offsets ``(dy, dx)``, ``0 < dy^2 + dx^2 <= radius^2``, ``|dy| < height``,
    ``|dx| < width`` (a radius that covers the image gives the complete graph), sorted by
    ``dy * width + dx`` (so that each row's neighbours come out in column order)."""
    ry, rx = min(int(radius), height - 1), min(int(radius), width - 1)
    dy, dx = torch.meshgrid(torch.arange(-ry, ry + 1), torch.arange(-rx, rx + 1), indexing="ij")
    dy, dx = dy.reshape(-1), dx.reshape(-1)
    keep = (dy * dy + dx * dx <= radius * radius) & ((dy != 0) | (dx != 0))
    off = torch.stack([dy[keep], dx[keep]], -1)
    return off[torch.argsort(off[:, 0] * (2 * rx + 1) + off[:, 1])]


def pixel_affinity(
    image: torch.Tensor,
    *,
    radius: float = 5.0,
    sigma_color: float = 0.1,
    sigma_space: float = 4.0,
) -> torch.Tensor:
    """The sparse pixel graph of Shi & Malik's normalized cut, as a torch sparse tensor.

    ``W_pq = exp(-|I_p - I_q|^2 / sigma_color^2) * exp(-|p - q|^2 / sigma_space^2)`` for
    pixels ``p != q`` within Euclidean distance ``radius`` (78 neighbours per interior
    pixel at the default 5), 0 elsewhere: symmetric, non-negative, with about
    ``N * (pi radius^2 - 1)`` stored entries. Pixels are numbered row-major
    (``n = y * W + x``), so an eigenvector reshapes to ``(H, W)``.

    Args:
        image: ``(C, H, W)`` or ``(B, C, H, W)`` colours (RGB in [0, 1] for the default
            ``sigma_color``) or any per-pixel features, float32 or float64; the values are
            differentiable w.r.t. it.
        radius: neighbourhood radius in pixels (>= 1).
        sigma_color: the colour (feature) distance at which a weight falls to 1/e.
        sigma_space: the same for the pixel distance.

    Returns:
        A coalesced sparse COO tensor: ``(N, N)`` for one image, ``(B, N, N)`` for a
        batch (all images of one size), ``N = H W``; ``diffeig.sym_eigh_ncut`` takes it.
        Built without a loop over pixels: one shifted difference per neighbour offset.

    Example:
        >>> img = torch.rand(3, 32, 32, dtype=torch.float64)
        >>> W = diffeig.ncut.pixel_affinity(img, radius=3)
        >>> lam, z = diffeig.sym_eigh_ncut(W, k=2, method="lobpcg")
        >>> z[:, 1].reshape(32, 32)  # the Fiedler vector as an image
    """
    check_pixel_affinity(image, radius, sigma_color, sigma_space)
    single = image.dim() == 3
    x = image.unsqueeze(0) if single else image
    B, C, H, Wd = x.shape
    N = H * Wd
    dev = x.device
    off = _offsets(float(radius), H, Wd).to(dev)  # (K, 2)
    check_fits(
        B * N * off.shape[0] * SPARSE_BYTES_PER_ENTRY,
        f"pixel_affinity of {B} x {H} x {Wd} px at radius {radius} ({off.shape[0]} "
        "neighbours a pixel)",
        "downscale the image or use a smaller radius",
    )
    K = off.shape[0]
    dy, dx = off[:, 0], off[:, 1]
    nnz = int(((H - dy.abs()).clamp_min(0) * (Wd - dx.abs()).clamp_min(0)).sum())
    space = torch.exp(-(off * off).sum(-1).to(x.dtype) / sigma_space**2)  # (K,)
    # Built a band of pixel rows at a time, straight into the output (row-major over
    # pixels, then offsets: (row, col) sorted, i.e. coalesced order): the temporaries are
    # those of one band, not K per pixel of the whole image.
    idx = torch.empty(3 if not single else 2, B * nnz, dtype=torch.int64, device=dev)
    values = x.new_empty(B, nnz)
    xs = torch.arange(Wd, device=dev).view(1, Wd, 1)
    rows = max(1, AFFINITY_BAND // (Wd * K))
    pos = 0
    for y0 in range(0, H, rows):
        y1 = min(H, y0 + rows)
        ys = torch.arange(y0, y1, device=dev).view(-1, 1, 1)
        qy, qx = ys + dy.view(1, 1, K), xs + dx.view(1, 1, K)  # (h, 1, K), (1, W, K)
        valid = (qy >= 0) & (qy < H) & (qx >= 0) & (qx < Wd)  # (h, W, K)
        p = (ys * Wd + xs).expand(valid.shape)[valid]
        q = (qy * Wd + qx)[valid]
        # one shifted difference of the image per offset (strided slices, no gather): the
        # squared distance to the neighbour at (dy, dx), 0 where it falls outside the image
        dist2 = x.new_zeros(B, y1 - y0, Wd, K)
        for k, (oy, ox) in enumerate(off.tolist()):
            a0, a1 = max(y0, -oy), min(y1, H - oy)
            if a0 >= a1:
                continue
            a_x, b_x = slice(max(0, -ox), Wd - max(0, ox)), slice(max(0, ox), Wd + min(0, ox))
            diff = x[:, :, a0:a1, a_x] - x[:, :, a0 + oy : a1 + oy, b_x]
            dist2[:, a0 - y0 : a1 - y0, a_x, k] = diff.square().sum(1)
        n = p.numel()
        values[:, pos : pos + n] = (
            torch.exp(-dist2[:, valid] / sigma_color**2) * space.expand(valid.shape)[valid]
        )
        for b in range(B):
            at = slice(b * nnz + pos, b * nnz + pos + n)
            if not single:
                idx[0, at] = b
            idx[-2, at], idx[-1, at] = p, q
        pos += n
    if single:
        return torch.sparse_coo_tensor(
            idx, values[0], (N, N), is_coalesced=True, check_invariants=False
        )
    return torch.sparse_coo_tensor(
        idx, values.reshape(-1), (B, N, N), is_coalesced=True, check_invariants=False
    )
