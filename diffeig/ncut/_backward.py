"""The NCut's implicit backward: ``dL/dW`` from the k pairs an iterative solver returned,
for dense, matrix-free and sparse W alike.

The generic part, the shifted solves and the gradient factor ``P``, is
:func:`diffeig._implicit.partial_eigh_factor`; here the NCut's own terms around it
(``docs/math.md``, "Iterative"): the trivial pair in closed form, ``z = D^-1/2 u`` and
the degree term, then the assembly of ``dL/dW`` (dense: ``diffeig::ncut_grad_assemble``;
sparse: at the stored entries only).
"""

from __future__ import annotations

import torch

from diffeig import _ops
from diffeig._implicit import partial_eigh_factor
from diffeig.ncut import _common
from diffeig.ncut._lobpcg_pairs import laplacian_operator

__all__ = ["ASSEMBLY_CHUNK", "assemble_at_edges", "dense_ncut_grad", "ncut_factors"]


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
    grad_lam, grad_Z, gd = _common.trivial_pair_cotangents(grad_lam, grad_Z, U, d, normalized)
    lam = _common.far_trivial(lam)
    grad_U, grad_d = _common.ncut_grad_inputs(grad_lam, grad_Z, U, d, k, normalized)
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
        gap_scale=_common.ncut_spectral_bound(d, normalized),
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
    _common.warn_ill_conditioned(lam, d, normalized, options.gap_rtol)
    lap = laplacian_operator(W, d, normalized)
    P, c, g = ncut_factors(lap, d, lam, U, grad_lam, grad_Z, normalized, options)
    return _ops.ncut_grad_assemble(P, U, c, g)


# Edges per chunk of the sparse assembly (its temporaries are a few floats per edge).
ASSEMBLY_CHUNK = 1 << 22


def assemble_at_edges(row, col, P, U, c, g):
    """``dL/dW`` at the stored entries ``(row, col)`` (global node indices of the batch):
    ``-c_i c_j (P_i . U_j + P_j . U_i) / 2 + (g_i + g_j) / 2``, what
    ``diffeig._reference.ncut_grad_assemble`` gives on the pattern, in ``O(nnz k)``."""
    k = U.shape[-1]
    P, U, c, g = P.reshape(-1, k), U.reshape(-1, k), c.reshape(-1), g.reshape(-1)
    out = torch.empty(row.numel(), dtype=U.dtype, device=U.device)
    for s in range(0, out.numel(), ASSEMBLY_CHUNK):
        r, q = row[s : s + ASSEMBLY_CHUNK], col[s : s + ASSEMBLY_CHUNK]
        pu = (P[r] * U[q]).sum(-1) + (P[q] * U[r]).sum(-1)
        out[s : s + ASSEMBLY_CHUNK] = -0.5 * c[r] * c[q] * pu + 0.5 * (g[r] + g[q])
    return out
