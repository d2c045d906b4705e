"""The NCut's part of the implicit backward: ``dL/dW`` from the k pairs an iterative
solver returned, for dense, matrix-free and sparse W alike.

The generic part, the shifted solves and the gradient factor ``P``, is
:func:`diffeig._implicit.factor.partial_eigh_factor`; here the NCut's own terms around
it (``docs/math.md``, "Iterative"): the Laplacian as products with W, the trivial pair in
closed form (Shi & Malik 2000's ``D^1/2 1``), ``z = D^-1/2 u`` and the degree term, the
conditioning warning, then the assembly of ``dL/dW`` (dense: ``diffeig::ncut_grad_assemble``;
sparse: at the stored entries only).
"""

from __future__ import annotations

import warnings

import torch

from diffeig import _ops
from diffeig._checks import values_readable
from diffeig._implicit.factor import partial_eigh_factor
from diffeig._operators import BatchedOperator, Symmetric

__all__ = [
    "IllConditionedGradient",
    "assemble_at_edges",
    "dense_ncut_grad",
    "far_trivial",
    "gradient_condition",
    "laplacian_operator",
    "ncut_factors",
    "ncut_grad_inputs",
    "ncut_spectral_bound",
    "sym_outer_sum",
    "trivial_pair_cotangents",
    "warn_ill_conditioned",
]


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

    cond = gradient_condition(lam, d, normalized, gap_rtol)
    if cond > torch.finfo(lam.dtype).eps ** -0.5:
        flat = d.detach().reshape(-1)
        i = int(flat.argmin())
        n = d.shape[-1]
        where = f"node {i % n}" + (f" of graph {i // n}" if flat.numel() > n else "")
        warnings.warn(
            f"sym_eigh_ncut: dL/dW is ill-conditioned here (estimated amplification "
            f"{cond:.1e}: eigenvalue gaps or degrees far below the spectrum's scale; the "
            f"smallest degree is {float(flat[i]):.1e} at {where}, the largest "
            f"{float(flat.max()):.1e}); different solvers' gradients may disagree. Add a "
            "floor to the weights or drop nodes of near-zero degree",
            IllConditionedGradient,
            stacklevel=3,
        )


def ncut_spectral_bound(d: torch.Tensor, normalized: bool) -> torch.Tensor:
    """Gershgorin's bound of the Laplacian's spectrum, ``(*)``: 2 for the normalized
    cut, ``2 max(d)`` for ``D - W``. The iterative solvers' residuals and tie thresholds
    are relative to it."""
    return torch.full_like(d[..., 0], 2.0) if normalized else 2 * d.amax(-1)


def _normalized_laplacian(X, W, dis):
    return X - dis * (W(dis * X) if callable(W) else W @ (dis * X))


def _unnormalized_laplacian(X, W, d):
    return d * X - (W(X) if callable(W) else W @ X)


def laplacian_operator(W, d: torch.Tensor, normalized: bool):
    """``X -> L @ X`` from ``W`` (a tensor, or a function ``X -> W @ X``) and its degrees,
    without forming ``L``: one product with W per application. For a tensor W it is a
    :class:`diffeig._operators.BatchedOperator`, which the solvers restrict to the matrices
    still iterating."""
    if normalized:
        fn, vec = _normalized_laplacian, d.rsqrt().unsqueeze(-1)
    else:
        fn, vec = _unnormalized_laplacian, d.unsqueeze(-1)
    if callable(W):
        return lambda X: fn(X, W, vec)
    return BatchedOperator(fn, Symmetric(W), vec, batch_shape=d.shape[:-1])


def ncut_factors(L, d, lam, U, grad_lam, grad_Z, normalized: bool, options, preconditioner=None):
    """``(P, c, g)`` with ``dL/dW = -c c^T o sym(P U^T) + sym(g 1^T)`` (symmetric part),
    i.e. ``ncut_grad_assemble(P, U, c, g)``, from the k pairs alone (shifted solves,
    preconditioned by ``preconditioner`` ``~ L^+`` where given, else Jacobi for D - W).
    ``options``: the solve's :class:`~diffeig._tolerances.SolverOptions`."""
    apply = L if callable(L) else (lambda Y: L @ Y)
    k = U.shape[-1]
    true_lam = lam
    grad_lam = torch.zeros_like(lam) if grad_lam is None else grad_lam
    grad_Z = torch.zeros_like(U) if grad_Z is None else grad_Z
    grad_lam, grad_Z, gd = trivial_pair_cotangents(grad_lam, grad_Z, U, d, normalized)
    lam = far_trivial(lam)
    grad_U, grad_d = ncut_grad_inputs(grad_lam, grad_Z, U, d, k, normalized)
    # dL/dL_sym = sym(P U^T), never formed.
    # D - W: Jacobi-preconditioned solves (its diagonal ~ D spreads with the degrees).
    P = partial_eigh_factor(
        L,
        lam,
        U,
        grad_lam,
        grad_U,
        *options.gaps,
        cg_tol=options.cg_tol(U.dtype),
        cg_max_iter=options.max_iter,
        diagonal=None if normalized or preconditioner is not None else d,
        gap_scale=ncut_spectral_bound(d, normalized),
        on_fail=options.on_fail,
        preconditioner=preconditioner,
    )
    if not normalized:
        return P, torch.ones_like(d), (P * U).sum(-1)
    # sum_j gL_ij W_ij dis_j from dis_i W_ij dis_j = delta_ij - L_ij, L U = U diag(l) and
    # one product L P: s_i = (P_i . U_i (1 - l) + U_i . (P - L P)_i) / dis_i.
    dis = d.rsqrt()
    s = ((P * U * (1 - true_lam.unsqueeze(-2))).sum(-1) + (U * (P - apply(P))).sum(-1)) / dis
    return P, dis, grad_d + 0.5 * dis**3 * s + gd


def dense_ncut_grad(W, d, lam, U, grad_lam, grad_Z, args):
    """``dL/dW`` of a dense W's iterative NCut (the function that
    :class:`diffeig._implicit.ImplicitGrad` runs). ``args``: ``(normalized, options)``."""
    normalized, options = args
    warn_ill_conditioned(lam, d, normalized, options.gap_rtol)
    lap = laplacian_operator(W, d, normalized)
    P, c, g = ncut_factors(lap, d, lam, U, grad_lam, grad_Z, normalized, options)
    return _ops.ncut_grad_assemble(P, U, c, g)


def assemble_at_edges(M, P, U, c, g):
    """``dL/dW`` at the stored entries of the CSR matrix ``M`` (the batch's block-diagonal
    graph; its values are not read): ``-c_i c_j (P_i . U_j + P_j . U_i) / 2 +
    (g_i + g_j) / 2``, what ``diffeig._reference.ncut_grad_assemble`` gives on the
    pattern, in ``O(nnz k)``. One sampled product (``torch.sparse.sampled_addmm``) of
    ``(B N, 2k + 2)`` factors whose rows dot to that expression: ``[-cP/2, -cU/2, g/2,
    1/2] . [cU, cP, 1, g]``; 7x faster than gathering the factors per edge (448 px)."""
    k = U.shape[-1]
    P, U = P.reshape(-1, k), U.reshape(-1, k)
    c, g = c.reshape(-1, 1), g.reshape(-1, 1)
    half = torch.full_like(c, 0.5)
    left = torch.cat([-0.5 * c * P, -0.5 * c * U, 0.5 * g, half], 1)
    right = torch.cat([c * U, c * P, torch.ones_like(c), g], 1)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": ours to know
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse.sampled_addmm(M, left, right.mT, beta=0.0).values()
