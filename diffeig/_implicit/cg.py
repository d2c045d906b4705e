"""One conjugate-gradient solver for the implicit backward's shifted systems (Hestenes &
Stiefel 1952), preconditioned or not, on every column of a batch at once."""

from __future__ import annotations

import math

import torch

from diffeig import _ops, _reference
from diffeig._operators import BatchedOperator
from diffeig._tolerances import COMPACT_BELOW

__all__ = ["batched_cg"]


def batched_cg(op, rhs, *, tol: float, max_iter: int, ref_norm=None, preconditioner=None):
    """Solve ``op(Y) = rhs`` column by column (SPD ``op``), all columns and matrices at
    once, by conjugate gradients (Hestenes & Stiefel 1952), preconditioned where
    ``preconditioner`` (``R -> T R``, ``T`` SPD ``~ op^-1``) is given.

    Returns ``(Y, iterations, max relative residual)``. A column stops when its residual
    is below ``tol`` relative to ``ref_norm`` (default: its right-hand side's norm), or
    when its curvature ``p^T op(p)`` is no longer positive (rounding at the end of
    convergence). Without a preconditioner a step is one fused native op
    (``diffeig::cg_step``); with one, its two halves around the preconditioner
    (:func:`diffeig._reference.cg_advance`, :func:`~diffeig._reference.cg_direction`),
    which ``cg_step``'s twin is made of, so both are one algorithm. With a
    :class:`BatchedOperator` and no preconditioner, matrices whose columns all stopped
    leave the working set, so their products are no longer computed; a preconditioner
    covers the whole batch (a block-diagonal sparse operator), so it keeps every matrix.
    """
    batch, (n, c) = rhs.shape[:-2], rhs.shape[-2:]
    B = math.prod(batch)
    compact = B > 1 and isinstance(op, BatchedOperator) and preconditioner is None
    if compact:
        op = op.restrict()
        rhs = rhs.reshape(B, n, c)
        if ref_norm is not None:
            ref_norm = ref_norm.expand(*batch, 1, c).reshape(B, 1, c)
    Y = torch.zeros_like(rhs)
    R = rhs.clone()
    P = R.clone() if preconditioner is None else preconditioner(R)
    rr = (R * R).sum(-2)
    rz = rr if preconditioner is None else (R * P).sum(-2)
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
        if preconditioner is None:
            Y, R, P, rr, active = _ops.cg_step(Y, R, P, op(P), rr, stop, active)
            continue
        Y, R, rr, active = _reference.cg_advance(Y, R, P, op(P), rz, rr, active)
        active = active & (rr > stop)
        Z = preconditioner(R)
        rz_new = torch.where(active, (R * Z).sum(-2), rz)
        P = _reference.cg_direction(P, Z, rz_new, rz, active)
        rz = rz_new
    if out is not None:
        out[0].index_copy_(0, rows, Y)
        out[1].index_copy_(0, rows, rr)
        Y, rr = out
    if compact:
        Y, rr, ref = Y.reshape(*batch, n, c), rr.reshape(*batch, c), ref.reshape(*batch, c)
    # Relative to the same reference as the stopping rule, so that rel <= tol is "converged".
    rel = rr.sqrt() / ref.clamp_min(torch.finfo(rhs.dtype).tiny)
    return Y, it, rel.amax().item() if rel.numel() else 0.0
