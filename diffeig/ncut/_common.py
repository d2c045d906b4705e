"""What every NCut solver shares: the sign rule, the trivial pair in closed form, the
cotangents of ``z = D^-1/2 u`` and the spectrum's bound."""

from __future__ import annotations

import torch

from diffeig._checks import check_scaled_back, values_readable
from diffeig._scaling import scale2
from diffeig._tolerances import SMALL_EIGENVALUE

__all__ = [
    "far_trivial",
    "ncut_grad_inputs",
    "ncut_spectral_bound",
    "refine_small_eigenvalues",
    "sign_flips",
    "sym_outer_sum",
    "trivial_pair_cotangents",
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


def ncut_grad_inputs(grad_lam, grad_Z, V, d, k: int, normalized: bool):
    """Cotangents of the symmetric eigenproblem, and the part of dL/dd that z = D^-1/2 u adds."""
    Vk = V[..., :k]
    if grad_Z is None:
        grad_Z = torch.zeros_like(Vk)
    if normalized:
        dis = d.rsqrt()
        grad_U = grad_Z * dis.unsqueeze(-1)
        # z_is = dis_i u_is: d loss / d dis_i = sum_s gZ_is u_is, and d dis / d d = -dis^3 / 2.
        grad_d = -0.5 * dis**3 * (grad_Z * Vk).sum(-1)
    else:
        grad_U = grad_Z
        grad_d = None
    return grad_U, grad_d


def trivial_vector(d: torch.Tensor, normalized: bool) -> torch.Tensor:
    """``(*, N, 1)``: the trivial eigenvector of the symmetric problem, exactly:
    ``D^1/2 1`` normalized (the normalized cut) or the constant ``1 / sqrt(N)`` (``D - W``),
    with eigenvalue 0 for every W."""
    u1 = d.sqrt() if normalized else torch.ones_like(d)
    return (u1 / u1.norm(dim=-1, keepdim=True)).unsqueeze(-1)


def trivial_pair_cotangents(grad_lam, grad_Z, U, d, normalized: bool):
    """Take the trivial pair out of the eigen backward and return its exact part.

    The trivial pair is known in closed form (l1 = 0; ``u1 = sqrt(d / vol)``, vol = sum d,
    or the constant), so its gradient needs no eigen-gap: through the eigen backward it
    would couple with z2 by ``1 / (l2 - l1)``, which on a near-disconnected graph divides
    rounding by ~1e-12 (|dL/dW| up to 3.5e3 where the exact value is 1e-4) or is masked
    (dropping a true term). Here:

    - l1's cotangent is dropped (l1 is 0 for every W);
    - u1's cotangent g1 enters through ``u1 = sqrt(d / vol)``:
      ``dL/dd_i = g1_i / (2 sqrt(d_i vol)) - (g1 . sqrt(d)) / (2 vol^3/2)`` (0 for ``D - W``);
    - every other u_j stays orthogonal to u1 (``u1 . u_j = 0`` for every W), so the
      component of its cotangent along u1, ``a_j = g_j . u1``, enters as
      ``-a_j u_j . du1``: ``dL/dd_i = -sum_j a_j u_ji / (2 sqrt(d_i vol))``.

    ``grad_Z`` are cotangents of the returned vectors (``z = D^-1/2 u`` for the normalized
    cut), ``U`` the symmetric problem's k vectors (column 0 the trivial one). Returns
    ``(grad_lam, grad_Z, gd)`` for the eigen backward of the pairs 2..k, with column 0's
    cotangents zero and the others orthogonal to u1, and ``gd`` (``(*, N)``, or ``None``
    for ``D - W``) to add to dL/dd. Column 0 must then be kept away from the others' gaps
    (:func:`far_trivial`), where rounding of the zeroed couplings would be amplified.
    """
    grad_lam = grad_lam.clone()
    grad_lam[..., 0] = 0
    u1 = U[..., :1]
    if not normalized:
        g = grad_Z[..., 1:]
        g = g - u1 * (u1 * g).sum(-2, keepdim=True)
        return grad_lam, torch.cat([torch.zeros_like(grad_Z[..., :1]), g], -1), None
    dis = d.rsqrt()
    gU = grad_Z * dis.unsqueeze(-1)
    g1, g = gU[..., 0], gU[..., 1:]
    a = (u1 * g).sum(-2)  # (*, k - 1)
    vol = d.sum(-1, keepdim=True)
    half_sq = 0.5 * (d * vol).rsqrt()
    gd = half_sq * (g1 - (U[..., 1:] @ a.unsqueeze(-1)).squeeze(-1))
    gd = gd - 0.5 * (g1 * d.sqrt()).sum(-1, keepdim=True) / vol**1.5
    gU = torch.cat([torch.zeros_like(gU[..., :1]), g - u1 * a.unsqueeze(-2)], -1)
    new_Z = gU * d.sqrt().unsqueeze(-1)
    # The chain rule of z = dis u (dis = d^-1/2), which the backward applies to the
    # cotangents it is given, belongs to the original ones.
    gd = gd - 0.5 * dis**3 * ((grad_Z - new_Z) * U).sum(-1)
    return grad_lam, new_Z, gd


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


def far_trivial(lam: torch.Tensor) -> torch.Tensor:
    """The eigenvalues with l1 = 0 moved to ``-max(l)``: the backward then sees the trivial
    pair a whole spectrum away from the others, so the rounding left in its (zeroed)
    couplings is divided by ``l_j + max l`` instead of by ``l_j`` (the magnitude the tie
    threshold is relative to, ``max|l|``, does not change)."""
    lam = lam.clone()
    lam[..., 0] = -lam.detach().abs().amax(-1)
    return lam


def sym_outer_sum(gd: torch.Tensor) -> torch.Tensor:
    """``sym(gd 1^T)``: the symmetric dL/dW of a cotangent ``gd`` of the degrees."""
    return 0.5 * (gd.unsqueeze(-1) + gd.unsqueeze(-2))


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


class IllConditionedGradient(RuntimeWarning):
    """dL/dW of the NCut amplifies rounding by more than ``1 / sqrt(eps)``."""


def gradient_condition(
    lam: torch.Tensor, d: torch.Tensor, normalized: bool, tie: float = 0.0
) -> float:
    """An estimate of how much the NCut's backward amplifies relative perturbations, per
    batch the largest: the spectrum's bound over the smallest gap between the returned
    non-trivial eigenvalues that is not a tie (at most ``tie`` of the bound: masked, the
    eigen backward divides by the others), times
    ``sqrt(max d / min d)`` for the normalized cut (``z = D^-1/2 u`` divides by the
    smallest degree's root). 1 where nothing can be read (traced, empty)."""
    if not values_readable(lam) or not values_readable(d):
        return 1.0
    lam, d = lam.detach(), d.detach()
    bound = ncut_spectral_bound(d, normalized)
    worst = torch.ones_like(bound)
    if lam.shape[-1] > 2:
        gaps = (lam[..., 2:] - lam[..., 1:-1]).abs() / bound.unsqueeze(-1)
        gaps = torch.where(gaps > tie, gaps, torch.ones_like(gaps)).amin(-1)
        worst = 1 / gaps.clamp_min(torch.finfo(lam.dtype).tiny)
    if normalized:
        spread = d.amax(-1) / d.amin(-1).clamp_min(torch.finfo(d.dtype).tiny)
        worst = worst * spread.sqrt()
    return float(worst.amax()) if worst.numel() else 1.0


def warn_ill_conditioned(
    lam: torch.Tensor, d: torch.Tensor, normalized: bool, gap_rtol: float = 0.0
) -> None:
    """Warn (:class:`IllConditionedGradient`) where :func:`gradient_condition` exceeds
    ``1 / sqrt(eps)``: there rounding of W at eps is amplified past ``sqrt(eps)`` in dL/dW,
    and two correct solvers' gradients differ (a pixel of degree 2.5e-18 made the sparse
    and dense gradients differ by 63x, near-islands by 28 %)."""
    import warnings

    cond = gradient_condition(lam, d, normalized, gap_rtol)
    if cond > torch.finfo(lam.dtype).eps ** -0.5:
        warnings.warn(
            f"sym_eigh_ncut: dL/dW is ill-conditioned here (estimated amplification "
            f"{cond:.1e}: eigenvalue gaps or degrees far below the spectrum's scale); "
            "different solvers' gradients may disagree. Add a floor to the weights or "
            "drop nodes of near-zero degree",
            IllConditionedGradient,
            stacklevel=3,
        )


def ncut_spectral_bound(d: torch.Tensor, normalized: bool) -> torch.Tensor:
    """Gershgorin's bound of the Laplacian's spectrum, ``(*)``: 2 for the normalized
    cut, ``2 max(d)`` for ``D - W``. The iterative solvers' residuals and tie thresholds
    are relative to it."""
    return torch.full_like(d[..., 0], 2.0) if normalized else 2 * d.amax(-1)
