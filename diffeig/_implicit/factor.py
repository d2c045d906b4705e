"""The gradient factor of a partial eigensolver's pairs, ``dL/dA = sym(P X^T)``: masked
reciprocal gaps within the k pairs, and for the rest of the space the shifted solves
``(A - theta_j) y_j = (I - X X^T) g_j`` (the eigenvector derivative of Magnus 1985,
Theorem 1, with the pseudo-inverse applied by solves) by :func:`~diffeig._implicit.cg.batched_cg`;
and :class:`ImplicitGrad`, the autograd Function every iterative backward runs."""

from __future__ import annotations

import torch

from diffeig import _ops, _reference
from diffeig._checks import report_failure
from diffeig._implicit.cg import batched_cg
from diffeig._operators import BatchedOperator, Symmetric, matrix_times, project

__all__ = ["ImplicitGrad", "partial_eigh_backward", "partial_eigh_factor"]


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
            A = BatchedOperator(matrix_times, Symmetric(A), batch_shape=A.shape[:-2])
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
            Y = s * project(AY - Y * th.unsqueeze(-2), Q)
            return Y if sc is None else sc * Y

        g64 = grad_X.to(wide)
        rhs = s * project(g64, X64)
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

        prec = None
        if preconditioner is not None:

            def prec(R):
                return project(preconditioner(R.to(dtype)).to(wide), X64)

        Y, it, rel = batched_cg(
            op, rhs, tol=cg_tol, max_iter=cg_max_iter, ref_norm=ref, preconditioner=prec
        )
        if sc is not None:
            Y = project(sc * Y, X64)
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


class ImplicitGrad(torch.autograd.Function):
    """``dL/dA`` of a partial eigensolver's pairs, ``grad_fn(*tensors, args)``, as a Function
    of its own: the one shape behind the backward of :func:`diffeig.eigsh` and of every
    iterative NCut path. Its vmap rule runs the batched backward under
    ``vmap(grad(f))``; it has no derivative itself (the shifted solves stop on data).
    ``args``: the solver's :class:`~diffeig._tolerances.SolverOptions` and flags, passed
    whole to ``grad_fn``."""

    @staticmethod
    def forward(grad_fn, args, *tensors):
        return grad_fn(*tensors, args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(
            "the iterative solvers (diffeig.eigsh, sym_eigh_ncut(method='lobpcg'), sparse W, "
            "ncut_operator) do not support double backward; use method='dense'"
        )

    @staticmethod
    def vmap(info, in_dims, grad_fn, args, *tensors):
        tensors = _ops._batched_first(info, in_dims[2:], tensors)
        return ImplicitGrad.apply(grad_fn, args, *tensors), 0
