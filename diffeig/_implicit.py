"""The implicit backward of the partial eigensolvers: from the k pairs a solver returned,
``dL/dA = sym(P X^T)`` with ``P`` from masked reciprocal gaps within the k pairs and
shifted solves ``(A - theta_j) y_j = (I - X X^T) g_j`` for the rest of the space, by
batched conjugate gradients (Hestenes & Stiefel 1952; preconditioned where a multigrid
cycle is given). ``eigsh``, the dense, matrix-free and sparse NCut paths all call
:func:`partial_eigh_factor` (docs/math.md, "Iterative")."""

from __future__ import annotations

import math

import torch

from diffeig import _ops, _reference
from diffeig._lobpcg import (
    COMPACT_BELOW,
    BatchedOperator,
    Symmetric,
    _matmul,
    _project,
    report_failure,
)

__all__ = ["batched_cg", "batched_pcg", "partial_eigh_backward", "partial_eigh_factor"]


def batched_cg(op, rhs, *, tol: float, max_iter: int, ref_norm=None):
    """Solve ``op(Y) = rhs`` column by column (SPD ``op``), all columns and matrices at once.

    Returns ``(Y, iterations, max relative residual)``. A column stops when its residual
    is below ``tol`` relative to ``ref_norm`` (default: its right-hand side's norm), or
    when its curvature ``p^T op(p)`` is no longer positive (rounding at the end of
    convergence). With a :class:`BatchedOperator`, matrices whose columns all stopped
    leave the working set, so their products are no longer computed.
    """
    batch, (n, c) = rhs.shape[:-2], rhs.shape[-2:]
    B = math.prod(batch)
    compact = B > 1 and isinstance(op, BatchedOperator)
    if compact:
        op = op.restrict()
        rhs = rhs.reshape(B, n, c)
        if ref_norm is not None:
            ref_norm = ref_norm.expand(*batch, 1, c).reshape(B, 1, c)
    Y = torch.zeros_like(rhs)
    R = rhs.clone()
    P = R.clone()
    rr = (R * R).sum(-2)
    ref = rhs.norm(dim=-2) if ref_norm is None else ref_norm.squeeze(-2)
    stop = (tol * ref) ** 2
    active = rr > stop
    it, rows, out = 0, None, None
    for it in range(1, max_iter + 1):  # noqa: B007
        live = active.any(-1)
        n_live = int(live.sum())
        if n_live == 0:
            break
        if compact and n_live <= COMPACT_BELOW * live.numel():
            if out is None:
                rows = torch.arange(B, device=rhs.device)
                out = (torch.empty_like(Y), torch.empty_like(rr))
            out[0].index_copy_(0, rows, Y)
            out[1].index_copy_(0, rows, rr)
            idx = live.nonzero().squeeze(-1)
            rows = rows[idx]
            Y, R, P, rr, stop, active = (
                t.index_select(0, idx) for t in (Y, R, P, rr, stop, active)
            )
            op = op.restrict(idx)
        # The vector updates of a step are one fused native op (diffeig::cg_step).
        Y, R, P, rr, active = _ops.cg_step(Y, R, P, op(P), rr, stop, active)
    if out is not None:
        out[0].index_copy_(0, rows, Y)
        out[1].index_copy_(0, rows, rr)
        Y, rr = out
    if compact:
        Y, rr, ref = Y.reshape(*batch, n, c), rr.reshape(*batch, c), ref.reshape(*batch, c)
    # Relative to the same reference as the stopping rule, so that rel <= tol is "converged".
    rel = rr.sqrt() / ref.clamp_min(torch.finfo(rhs.dtype).tiny)
    return Y, it, rel.amax().item() if rel.numel() else 0.0


def batched_pcg(op, rhs, prec, *, tol: float, max_iter: int, ref_norm=None):
    """Preconditioned CG for ``op(Y) = rhs`` (SPD ``op``, SPD ``prec ~ op^-1``), all
    columns and matrices at once; stopping as :func:`batched_cg`, whose return it shares.

    For operators that cover the whole batch in one product (a block-diagonal sparse
    matrix), so no matrix leaves the working set; stopped columns keep their values.
    """
    Y = torch.zeros_like(rhs)
    R = rhs.clone()
    Z = prec(R)
    P = Z.clone()
    rz = (R * Z).sum(-2)
    rr = (R * R).sum(-2)
    ref = rhs.norm(dim=-2) if ref_norm is None else ref_norm.squeeze(-2)
    stop = (tol * ref) ** 2
    active = rr > stop
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        if not bool(active.any()):
            break
        AP = op(P)
        pAp = (P * AP).sum(-2)
        # a column whose curvature is no longer positive has reached rounding: it stops
        ok = active & (pAp > 0)
        alpha = torch.where(ok, rz / torch.where(ok, pAp, 1), 0).unsqueeze(-2)
        Y = Y + alpha * P
        R = R - alpha * AP
        rr = torch.where(ok, (R * R).sum(-2), rr)
        active = ok & (rr > stop)
        Z = prec(R)
        rz_new = (R * Z).sum(-2)
        beta = torch.where(active, rz_new / torch.where(rz != 0, rz, 1), 0).unsqueeze(-2)
        P = torch.where(active.unsqueeze(-2), Z + beta * P, 0)
        rz = rz_new
    rel = rr.sqrt() / ref.clamp_min(torch.finfo(rhs.dtype).tiny)
    return Y, it, rel.amax().item() if rel.numel() else 0.0


def partial_eigh_factor(
    A: torch.Tensor,
    theta: torch.Tensor,
    X: torch.Tensor,
    grad_theta,
    grad_X,
    gap_rtol: float,
    gap_atol: float,
    *,
    largest: bool = False,
    cg_tol: float,
    cg_max_iter: int,
    diagonal: torch.Tensor | None = None,
    gap_scale: torch.Tensor | None = None,
    on_fail: str = "warn",
    preconditioner=None,
) -> torch.Tensor:
    """``P`` with ``dL/dA = sym(P X^T)``, from k known eigenpairs ``A X = X diag(theta)``.

    ``A`` is a tensor or a function ``Y -> A @ Y`` (matrix-free). ``diagonal`` (``(*, N)``,
    positive), an approximation of A's diagonal, turns on split Jacobi preconditioning of
    the solves: CG on ``S Q (A - l) Q S`` with ``S = diag^-1/2`` and ``Q = I - X X^T``,
    then ``y = Q S y'``. ``preconditioner`` (``Y -> T Y``, ``T`` an SPD approximation of
    ``A^+``, e.g. a multigrid cycle) instead: preconditioned CG with ``Q T Q``.

    Within the k pairs: masked reciprocal gaps (``X M``). For the rest of the space the
    shifted solves ``(A - theta_j) y_j = (I - X X^T) g_j``, ``y_j ⟂ X`` (positive definite
    there for the smallest pairs), by batched conjugate gradients: ``P = X M - Y``
    (design.md, "Iterative").

    ``gap_scale`` (``(*)``) is the magnitude of the whole spectrum the tie threshold is
    relative to (``gap_rtol * gap_scale``; see :func:`diffeig._reference.gap_mask`): the k
    known eigenvalues alone say nothing of it when they all lie near 0. ``on_fail``:
    what to do when a CG solve stops short of ``cg_tol`` (see :func:`report_failure`).
    """
    if grad_X is None:
        grad_X = torch.zeros_like(X)
    # A k x k problem: the reference formula (plain tensor ops, which functorch's
    # transforms can trace; the native op's registered autograd cannot run under them).
    M = _reference.eigh_backward_core(
        theta, X.mT @ grad_X, grad_theta, gap_rtol, gap_atol, gap_scale
    )
    # Only sym(M) reaches sym(P X^T) = X sym(M) X^T. Its antisymmetric part holds
    # X_ij / (l_j - l_i) terms that cancel for losses invariant within a near-tied pair,
    # but are huge there: kept in P, they would multiply the residual A X - X diag(l)
    # (about tol) wherever P meets A (the normalized cut's degree term).
    M = 0.5 * (M + M.mT)
    P = X @ M
    if bool((grad_X != 0).any()):
        s = -1.0 if largest else 1.0
        # The CG recurrences, the shift and the projector run in float64; the product
        # with A stays in A's dtype (its rounding, ~eps |A| |y|, is far below the
        # tolerance), so A is never copied.
        wide = torch.promote_types(X.dtype, torch.float64)
        th64 = theta.to(wide)
        # An exactly orthonormal basis of span(X) in float64: with X's own rounding the
        # projector leaks, and CG then chases components that A - l_j cannot reduce.
        X64 = torch.linalg.qr(X.to(wide)).Q

        if not callable(A):
            A = BatchedOperator(_matmul, Symmetric(A), batch_shape=A.shape[:-2])
        dtype = X.dtype
        # Isolated nodes (zero diagonal) keep a unit scale: their rows of A - l are -l
        # there, and 1 / sqrt(0) would blow the system up.
        sc = None
        if diagonal is not None:
            dg = diagonal.to(wide)
            sc = torch.where(dg > 0, dg, 1.0).rsqrt().unsqueeze(-1)

        def shifted(Y, A, th, Q, sc):
            # With sc: split Jacobi, sc (I - Q Q^T)(A - th)(I - Q Q^T) sc.
            Y = Y if sc is None else sc * Y
            AY = A(Y.to(dtype)).to(wide)
            Y = s * _project(AY - Y * th.unsqueeze(-2), Q)
            return Y if sc is None else sc * Y

        g64 = grad_X.to(wide)
        rhs = s * _project(g64, X64)
        rhs = rhs if sc is None else sc * rhs
        # Tolerance relative to the cotangent itself: when g_j lies in span(X) the
        # projected right-hand side is rounding noise, and there is nothing to solve.
        ref = (g64 if sc is None else sc * g64).norm(dim=-2, keepdim=True)
        # Only the columns with something to solve in some matrix enter the solves (a
        # loss on z2 alone leaves the trivial pair's column empty): the products with A
        # get narrower.
        need = (rhs.norm(dim=-2, keepdim=True) > cg_tol * ref).reshape(-1, X.shape[-1]).any(0)
        cols = None if bool(need.all()) else need.nonzero().squeeze(-1)
        if cols is not None:
            rhs, ref, th64 = rhs[..., cols], ref[..., cols], th64[..., cols]

        if isinstance(A, BatchedOperator):
            op = BatchedOperator(shifted, A, th64, X64, sc, batch_shape=X.shape[:-2])
        else:  # a plain function: no restriction to the unconverged matrices

            def op(Y):
                return shifted(Y, A, th64, X64, sc)

        if preconditioner is not None:

            def prec(R):
                return _project(preconditioner(R.to(dtype)).to(wide), X64)

            Y, it, rel = batched_pcg(op, rhs, prec, tol=cg_tol, max_iter=cg_max_iter, ref_norm=ref)
        else:
            Y, it, rel = batched_cg(op, rhs, tol=cg_tol, max_iter=cg_max_iter, ref_norm=ref)
        if sc is not None:
            Y = _project(sc * Y, X64)
        if cols is not None:
            Y = torch.zeros_like(g64).index_copy_(-1, cols, Y)
        if not rel <= cg_tol:
            report_failure(
                f"the backward's conjugate-gradient solves stopped after {it} iterations at a "
                f"relative residual of {rel:.2e} > tol = {cg_tol:.1e}: the gradient is "
                "inexact. The shifted systems are singular when the k-th and (k+1)-th "
                "eigenvalues tie (e.g. a graph with more than k connected components); "
                "raise max_iter or tol, or use method='dense'.",
                on_fail,
            )
        P = P - Y.to(X.dtype)
    return P


def partial_eigh_backward(A, theta, X, grad_theta, grad_X, gap_rtol, gap_atol, **kw):
    """``dL/dA = sym(P X^T)`` (see :func:`partial_eigh_factor`)."""
    P = partial_eigh_factor(A, theta, X, grad_theta, grad_X, gap_rtol, gap_atol, **kw)
    gA = P @ X.mT
    return 0.5 * (gA + gA.mT)
