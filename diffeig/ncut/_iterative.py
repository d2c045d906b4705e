"""The iterative NCut of a dense W as one autograd Function: the forward takes one graph's
Fiedler pair by Lanczos (:mod:`~diffeig.ncut._lanczos`) and everything else by LOBPCG
(:mod:`~diffeig.ncut._lobpcg_pairs`), as :mod:`~diffeig.ncut._choice` rules; the
backward is :class:`diffeig._implicit.ImplicitGrad` running
the NCut terms of :func:`diffeig._implicit.ncut.dense_ncut_grad`."""

from __future__ import annotations

import torch

from diffeig._checks import check_solver_options
from diffeig._implicit import ImplicitGrad, dense_ncut_grad, laplacian_operator
from diffeig._tolerances import SolverOptions, resolved_gap_rtol
from diffeig.ncut import _common
from diffeig.ncut._choice import TiedSpectrum, choose_method, uses_lanczos
from diffeig.ncut._lanczos import lanczos_ncut_pairs
from diffeig.ncut._lobpcg_pairs import lobpcg_ncut_pairs

__all__ = ["TiedSpectrum", "choose_method", "solve_lobpcg"]


class _NCutLobpcg(torch.autograd.Function):
    """The k smallest NCut pairs by LOBPCG on ``X -> L @ X`` (L never formed); backward
    by shifted solves through the same products with W.

    forward / setup_context / vmap, so that torch.func.vmap (and grad) apply. The degrees
    and orthonormal vectors the backward needs are returned as extra, non-differentiable
    outputs (the public function drops them)."""

    @staticmethod
    def forward(W, k, normalized, sign, options):
        # W is symmetric (checked); the backward returns the symmetric gradient.
        d = W.sum(-1)
        o = options
        if uses_lanczos(W, k, normalized, o.tie_rtol):
            lam, U, Z = lanczos_ncut_pairs(W, d, sign, o.tol, o.max_iter, o.on_fail)
        else:
            lap = laplacian_operator(W, d, normalized)
            lam, U, Z = lobpcg_ncut_pairs(
                lap, d, k, normalized, sign, o.tol, o.max_iter, o.on_fail, o.tie_rtol
            )
        lam = _common.refine_small_eigenvalues(lam, Z, W, d, normalized)
        return lam, Z, d, U

    @staticmethod
    def setup_context(ctx, inputs, output):
        W, _, normalized, _, options = inputs
        lam, _, d, U = output
        ctx.mark_non_differentiable(d, U)
        ctx.save_for_backward(W, d, lam, U)
        ctx.args = (normalized, options)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_lam, grad_Z, *_):
        W, d, lam, U = ctx.saved_tensors
        if grad_lam is None and grad_Z is None:
            return None, None, None, None, None
        if grad_lam is None:
            grad_lam = torch.zeros_like(lam)
        if grad_Z is None:
            grad_Z = torch.zeros_like(U)
        tensors = (W.detach(), d, lam, U, grad_lam, grad_Z)
        return ImplicitGrad.apply(dense_ncut_grad, ctx.args, *tensors), None, None, None, None

    @staticmethod
    def vmap(info, in_dims, W, k, normalized, sign, options):
        # The solver is batched already: move the mapped dimension to the front.
        out = _NCutLobpcg.apply(W.movedim(in_dims[0], 0), k, normalized, sign, options)
        return out, (0, 0, 0, 0)


def solve_lobpcg(W, k, normalized, sign, gap_rtol, gap_atol, tol, max_iter, on_fail, tie_rtol=None):
    """``(eigenvalues, eigenvectors)`` by LOBPCG on ``X -> L @ X``; ``tie_rtol`` as
    :func:`~diffeig.ncut._lobpcg_pairs.lobpcg_ncut_pairs` (raises :class:`TiedSpectrum`)."""
    check_solver_options(tol, max_iter, on_fail)
    options = SolverOptions(
        tol=tol,
        max_iter=max_iter,
        on_fail=on_fail,
        gap_rtol=resolved_gap_rtol(gap_rtol, tol, W.dtype),
        gap_atol=gap_atol,
        tie_rtol=tie_rtol,
    )
    lam, Z, *_ = _NCutLobpcg.apply(W, k, normalized, sign, options)
    return lam, Z
