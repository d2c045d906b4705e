"""Matrix-free NCut: the affinity is given as a function ``X -> W @ X``.

For graphs too large to store densely (pixel-level affinities). The forward is LOBPCG on
the Laplacian applied through the function; the backward never forms dL/dW: it is
``-D^-1/2 sym(P U^T) D^-1/2 + sym(gd 1^T)``, so for a symmetric perturbation dW
``<dL/dW, dW> = sum(A o (dW B))`` with ``A = [-D^-1/2 P, gd]`` and ``B = [D^-1/2 U, 1]``:
one vector-Jacobian product of the user's function with k + 1 columns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from diffeig._checks import (
    check_degrees,
    check_k,
    check_ncut_options,
    check_not_meta,
    check_operator_output,
    check_params,
    check_solver_options,
)
from diffeig._eigh import gap_tolerances
from diffeig._implicit import laplacian_operator, ncut_factors
from diffeig._tolerances import SolverOptions, resolved_gap_rtol
from diffeig.ncut._lobpcg_pairs import lobpcg_ncut_pairs

__all__ = ["ncut_operator"]


class _NCutOperator(torch.autograd.Function):
    @staticmethod
    def forward(ctx, raw_matmul, shape, k, normalized, sign, options, *params):
        o = options
        like = params[0]
        ones = torch.ones(*shape, 1, dtype=like.dtype, device=like.device)
        d = raw_matmul(ones, *params)
        check_operator_output(d, ones)
        d = d[..., 0]
        check_not_meta(d, "ncut_operator")
        check_degrees(d, normalized=normalized)
        lap = laplacian_operator(lambda X: raw_matmul(X, *params), d, normalized)
        lam, U, Z = lobpcg_ncut_pairs(lap, d, k, normalized, sign, o.tol, o.max_iter, o.on_fail)
        ctx.raw_matmul, ctx.lap = raw_matmul, lap
        ctx.normalized, ctx.options = normalized, options
        ctx.save_for_backward(d, lam, U, *params)
        ctx.set_materialize_grads(False)
        return lam, Z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_lam, grad_Z):
        d, lam, U, *params = ctx.saved_tensors
        P, c, g = ncut_factors(ctx.lap, d, lam, U, grad_lam, grad_Z, ctx.normalized, ctx.options)
        c = c.unsqueeze(-1)
        A = torch.cat([-(c * P), g.unsqueeze(-1)], -1)
        B = torch.cat([c * U, torch.ones_like(g).unsqueeze(-1)], -1)
        with torch.enable_grad():
            # Re-run the user's function on leaves that stand for the parameters.
            leaves = [p.detach().requires_grad_(p.requires_grad) for p in params]
            out = ctx.raw_matmul(B, *leaves)
            wanted = [p for p in leaves if p.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad_outputs=A, allow_unused=True))
        return (None,) * 6 + tuple(next(grads) if p.requires_grad else None for p in leaves)


def ncut_operator(
    matmul: Callable[..., torch.Tensor],
    params: Sequence[torch.Tensor],
    shape: Sequence[int],
    k: int = 2,
    *,
    laplacian: str = "ncut",
    sign: str | None = "max",
    gap_eps: float | None = None,
    tol: float | None = None,
    max_iter: int = 1000,
    on_fail: str = "warn",
):
    """``sym_eigh_ncut`` for an affinity given as a function, never stored densely.

    Args:
        matmul: ``matmul(X, *params) -> W @ X`` for ``X`` of shape ``(*, N, m)``, with ``W``
            symmetric and non-negative, differentiable in ``params``.
        params: the tensors ``W`` depends on; gradients flow to them.
        shape: ``(*, N)``, the batch shape and the number of nodes.
        k, laplacian, sign, gap_eps, tol, max_iter, on_fail: as :func:`diffeig.sym_eigh_ncut`
            with ``method='lobpcg'``.

    Returns:
        ``(eigenvalues (*, k), eigenvectors (*, N, k))``.
    """
    check_ncut_options(laplacian, sign)
    check_solver_options(tol, max_iter, on_fail)
    check_params(params)
    shape = tuple(int(s) for s in shape)
    k = check_k(k, shape[-1])
    dtype = params[0].dtype
    gap_rtol, gap_atol = gap_tolerances(gap_eps, shape[-1], dtype)
    options = SolverOptions(
        tol=tol,
        max_iter=max_iter,
        on_fail=on_fail,
        gap_rtol=resolved_gap_rtol(gap_rtol, tol, dtype),
        gap_atol=gap_atol,
    )
    return _NCutOperator.apply(matmul, shape, k, laplacian == "ncut", sign, options, *params)
