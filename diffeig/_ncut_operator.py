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

from diffeig.ncut import _ncut_grad_inputs, _sign

__all__ = ["ncut_operator"]


class _NCutOperator(torch.autograd.Function):
    @staticmethod
    def forward(ctx, raw_matmul, shape, k, normalized, sign, gaps, solver, *params):
        import warnings

        from diffeig._lobpcg import lobpcg

        tol, max_iter, on_fail, cg_tol = solver

        def matmul(X):
            return raw_matmul(X, *params)

        dtype, device = params[0].dtype, params[0].device
        ones = torch.ones(*shape, 1, dtype=dtype, device=device)
        d = matmul(ones)[..., 0]
        if not bool((d > 0).all()) and normalized:
            raise ValueError("W has nodes with zero degree: the normalized cut needs D > 0")
        dis = d.rsqrt() if normalized else None

        def lap(X):
            if normalized:
                return X - dis.unsqueeze(-1) * matmul(dis.unsqueeze(-1) * X)
            return d.unsqueeze(-1) * X - matmul(X)

        u1 = d.sqrt() if normalized else torch.ones_like(d)
        u1 = (u1 / u1.norm(dim=-1, keepdim=True)).unsqueeze(-1)
        if k == 1:
            lam, U = torch.zeros_like(d[..., :1]), u1
        else:
            scale = torch.full_like(d[..., 0], 2.0) if normalized else 2 * d.amax(-1)
            dinv = None if normalized else (1 / d).unsqueeze(-1)
            X0 = torch.randn(
                *shape,
                min(shape[-1] - 1, k - 1 + max(k - 1, 4)),
                dtype=dtype,
                generator=torch.Generator().manual_seed(0),
            ).to(device)
            theta, X, info = lobpcg(
                lap,
                X0,
                k - 1,
                constraints=u1,
                tol=tol,
                max_iter=max_iter,
                scale=scale,
                preconditioner=None if dinv is None else (lambda R: R * dinv),
            )
            if not info.converged:
                msg = (
                    f"LOBPCG did not converge in {info.iterations} iterations: the largest "
                    f"relative residual is {info.max_residual:.2e} > tol."
                )
                if on_fail == "raise":
                    raise RuntimeError(msg)
                warnings.warn(msg, RuntimeWarning, stacklevel=3)
            lam = torch.cat([torch.zeros_like(theta[..., :1]), theta], -1)
            U = torch.cat([u1, X], -1)
        U = U * _sign(U * dis.unsqueeze(-1) if normalized else U, sign)
        Z = U * dis.unsqueeze(-1) if normalized else U.clone()
        ctx.raw_matmul, ctx.lap = raw_matmul, lap
        ctx.args = (normalized, gaps, cg_tol, max_iter, len(params))
        ctx.save_for_backward(d, lam, U, *params)
        ctx.set_materialize_grads(False)
        return lam, Z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_lam, grad_Z):
        from diffeig._lobpcg import partial_eigh_factor

        d, lam, U, *params = ctx.saved_tensors
        normalized, (gap_rtol, gap_atol), cg_tol, max_iter, _ = ctx.args
        k = U.shape[-1]
        grad_U, grad_d = _ncut_grad_inputs(grad_lam, grad_Z, U, d, k, normalized)
        P = partial_eigh_factor(
            ctx.lap,
            lam,
            U,
            grad_lam,
            grad_U,
            gap_rtol,
            gap_atol,
            cg_tol=cg_tol,
            cg_max_iter=max_iter,
        )
        if normalized:
            dis = d.rsqrt()
            LP = ctx.lap(P)
            s = ((P * U * (1 - lam.unsqueeze(-2))).sum(-1) + (U * (P - LP)).sum(-1)) / dis
            gd = grad_d + 0.5 * dis**3 * s
            c = dis.unsqueeze(-1)
        else:
            gd = (P * U).sum(-1)
            c = torch.ones_like(d).unsqueeze(-1)
        A = torch.cat([-(c * P), gd.unsqueeze(-1)], -1)
        B = torch.cat([c * U, torch.ones_like(gd).unsqueeze(-1)], -1)
        with torch.enable_grad():
            detached = [p.detach().requires_grad_(p.requires_grad) for p in params]
            # Re-run the user's function on leaves that stand for the parameters.
            out = ctx.raw_matmul(B, *detached)
            wanted = [p for p in detached if p.requires_grad]
            grads = torch.autograd.grad(out, wanted, grad_outputs=A, allow_unused=True)
        it = iter(grads)
        return (None,) * 7 + tuple(next(it) if p.requires_grad else None for p in detached)


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
    from diffeig._eigh import gap_tolerances
    from diffeig._eigsh import check_solver_options
    from diffeig._lobpcg import default_tol
    from diffeig.ncut import _check_k, _check_options

    _check_options(laplacian, sign)
    check_solver_options(tol, max_iter, on_fail)
    if not params:
        raise ValueError("params must hold at least one tensor (the ones W depends on)")
    shape = tuple(int(s) for s in shape)
    _check_k(k, shape[-1])
    dtype = params[0].dtype
    gaps = gap_tolerances(gap_eps, shape[-1], dtype)
    cg_tol = default_tol(dtype) if tol is None else tol
    return _NCutOperator.apply(
        matmul, shape, k, laplacian == "ncut", sign, gaps, (tol, max_iter, on_fail, cg_tol), *params
    )
