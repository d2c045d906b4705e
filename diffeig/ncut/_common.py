"""What every NCut solver's forward shares: the sign rule, the trivial vector in closed
form, the scale-back, the refinement of small eigenvalues, and the spectrum's bound (from
:mod:`diffeig._implicit.ncut`, whose backward terms need it too)."""

from __future__ import annotations

import torch

from diffeig._checks import check_scaled_back, values_readable
from diffeig._implicit.ncut import ncut_spectral_bound
from diffeig._scaling import scale2
from diffeig._tolerances import SMALL_EIGENVALUE

__all__ = [
    "ncut_spectral_bound",
    "refine_small_eigenvalues",
    "sign_flips",
    "trivial_vector",
    "unscaled_pairs",
]


def sign_flips(Z: torch.Tensor, rule: str | None) -> torch.Tensor:
    """``(*, 1, k)`` signs (+-1) that make each column of ``Z`` follow ``rule``: ``'max'``,
    its entry of largest magnitude positive (the first of those tied with it to
    1e-6, ``sqrt(eps)`` in float32); ``'sum'``, its sum >= 0; ``None``, no flip."""
    if rule is None:
        return torch.ones_like(Z[..., :1, :])
    if rule == "max":
        # The first of the entries within 1e-6 (float32: sqrt(eps)) of the largest
        # magnitude: on mirror-symmetric graphs the largest is tied (+a and -a), and which
        # of them came out larger was the solver's error (LOBPCG's entries carry ~1e-8):
        # dense and LOBPCG picked opposite signs.
        a = Z.abs()
        rtol = max(1e-6, torch.finfo(Z.dtype).eps ** 0.5)
        tied = a >= a.amax(-2, keepdim=True) * (1 - rtol)
        idx = tied.to(torch.uint8).argmax(-2, keepdim=True)  # the first True
        ref = torch.gather(Z, -2, idx)
    else:  # "sum"
        ref = Z.sum(-2, keepdim=True)
    return torch.where(ref < 0, -torch.ones_like(ref), torch.ones_like(ref))


def trivial_vector(d: torch.Tensor, normalized: bool) -> torch.Tensor:
    """``(*, N, 1)``: the trivial eigenvector of the symmetric problem, exactly:
    ``D^1/2 1`` normalized (the normalized cut) or the constant ``1 / sqrt(N)`` (``D - W``),
    with eigenvalue 0 for every W."""
    u1 = d.sqrt() if normalized else torch.ones_like(d)
    return (u1 / u1.norm(dim=-1, keepdim=True)).unsqueeze(-1)


def unscaled_pairs(lam, Z, e: int, normalized: bool):
    """The pairs of ``2^e W`` from those of the unit-scale ``W`` they were solved at
    (``e`` even): the NCut's eigenvalues do not change and its D-orthonormal vectors scale
    by ``2^(-e/2)``; ``D - W``'s eigenvalues scale by ``2^e`` (refused past the dtype's
    range) and its orthonormal vectors not at all."""
    if not e:
        return lam, Z
    if normalized:
        return lam, scale2(Z, -e // 2)
    lam = scale2(lam, e)
    check_scaled_back(lam, e)
    return lam, Z


def refine_small_eigenvalues(lam, Z, W, d, normalized: bool):
    """The returned eigenvalues below ``SMALL_EIGENVALUE`` of the spectrum's bound,
    recomputed from their vectors by the edge form of the Rayleigh quotient,
    ``l = 1/2 sum_ik W_ik (z_i - z_k)^2 / z^T B z`` (B = D or I).

    Both solvers get l from ``z^T (D - W) z``, a difference of terms of size ``max(d)``:
    at ``l2 ~ 1e-9`` (two clusters joined by weak edges) that left LAPACK's l2 1e-4 and
    LOBPCG's 5e-6 off (relative), though their vectors agreed to 1e-13. The edge form is
    a sum of non-negative terms, accurate to the vector's own error. Graphs whose returned
    eigenvalues are all larger are not read again. ``lam`` ``(*, k)``, ``Z`` ``(*, N, k)``
    (column 0 the trivial pair, left as is)."""
    if lam.shape[-1] < 2 or not values_readable(W) or W.shape[-1] == 0:
        return lam
    small = lam[..., 1:] < SMALL_EIGENVALUE * ncut_spectral_bound(d, normalized).unsqueeze(-1)
    rows = small.reshape(-1, small.shape[-1]).any(-1).nonzero().squeeze(-1)
    if rows.numel() == 0:
        return lam
    n, k = W.shape[-1], lam.shape[-1]
    Wf = W.reshape(-1, n, n)  # read in place, graph by graph (a copy of W costs more
    # than the sum: allocating N x N float64 is 19 ms at N = 3600, reading it 1.5 ms)
    Zf = Z.reshape(-1, n, k).index_select(0, rows)[..., 1:]
    edge = torch.zeros(Zf.shape[0], k - 1, dtype=Z.dtype, device=Z.device)
    step = max(1, (1 << 20) // max(1, n * (k - 1)))  # rows per chunk: ~8 MB temporaries
    for b, row in enumerate(rows.tolist()):
        for i in range(0, n, step):
            diff = Zf[b, i : i + step, None, :] - Zf[b, None, :, :]
            diff.square_().mul_(Wf[row, i : i + step, :, None])
            edge[b] += diff.sum((0, 1))
    weight = d.reshape(-1, n).index_select(0, rows).unsqueeze(-1) if normalized else 1.0
    edge = 0.5 * edge / (Zf * Zf * weight).sum(-2)
    flat = lam.reshape(-1, k).clone()
    keep = small.reshape(-1, k - 1).index_select(0, rows)
    flat[rows, 1:] = torch.where(keep, edge, flat[rows, 1:])
    return flat.reshape(lam.shape)
