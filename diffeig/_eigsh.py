"""``diffeig.eigsh``: k extreme eigenpairs without a full eigendecomposition."""

from __future__ import annotations

import torch

from diffeig._checks import (
    check_cholesky,
    check_generalized_B,
    check_k,
    check_method,
    check_solver_options,
    check_square,
    check_symmetric,
)
from diffeig._eigh import gap_tolerances
from diffeig._implicit import ImplicitGrad, partial_eigh_backward
from diffeig._lobpcg import LobpcgInfo, run_lobpcg
from diffeig._operators import dense_pairs, spectral_bound
from diffeig._ops import _batched_first
from diffeig._scaling import scale2, unit_scale
from diffeig._tolerances import (
    AUTO_CROSSOVER_CPU,
    SolverOptions,
    resolved_gap_rtol,
)

__all__ = ["eigsh", "LobpcgInfo"]


class _PartialEigh(torch.autograd.Function):
    """k eigenpairs of a dense symmetric ``A`` from any solver; backward by shifted solves.

    forward / setup_context / vmap (and a backward that is itself a Function with a vmap
    rule, :class:`diffeig._implicit.ImplicitGrad`), so that torch.func.vmap, grad and
    vmap(grad) run the batched solver.
    """

    @staticmethod
    def forward(A, solve, largest, options):
        return solve(A.detach())

    @staticmethod
    def setup_context(ctx, inputs, output):
        A, _, largest, options = inputs
        theta, X = output
        ctx.save_for_backward(A, theta, X)
        ctx.args = (largest, options)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_theta, grad_X):
        A, theta, X = ctx.saved_tensors
        if grad_theta is None and grad_X is None:
            return (None,) * 4
        grad_theta = torch.zeros_like(theta) if grad_theta is None else grad_theta
        grad_X = torch.zeros_like(X) if grad_X is None else grad_X
        tensors = (A.detach(), theta, X, grad_theta, grad_X)
        return ImplicitGrad.apply(_eigsh_grad, ctx.args, *tensors), None, None, None

    @staticmethod
    def vmap(info, in_dims, A, solve, largest, options):
        (A,) = _batched_first(info, in_dims[:1], (A,))
        return _PartialEigh.apply(A, solve, largest, options), (0, 0)


def _eigsh_grad(A, theta, X, grad_theta, grad_X, args):
    largest, options = args
    return partial_eigh_backward(
        A,
        theta,
        X,
        grad_theta,
        grad_X,
        *options.gaps,
        largest=largest,
        cg_tol=options.cg_tol(A.dtype),
        cg_max_iter=options.max_iter,
        # ties are judged against the whole spectrum's magnitude, as the dense path does
        gap_scale=spectral_bound(A),
        on_fail=options.on_fail,
    )


def auto_method(n: int, iterated: int, device: torch.device) -> str:
    """``'dense'`` or ``'lobpcg'``: the faster exact solver for ``iterated`` pairs of
    ``(*, n, n)`` matrices on ``device``: the one rule behind ``method='auto'``.

    On CPU LOBPCG wins from ``N*(pairs)`` on (``AUTO_CROSSOVER_CPU``). On other devices the
    dense solve until measured there (``make gpu-check`` records the figures). Both are
    exact to the same float64 tolerance (tests/test_auto.py), and LOBPCG falls back to the
    dense solve on any matrix it does not solve, so the choice only moves time."""
    if device.type != "cpu" or iterated < 1:
        return "dense"
    pts = AUTO_CROSSOVER_CPU
    for (p0, n0), (p1, n1) in zip(pts, pts[1:]):
        if iterated <= p1:
            cross = n0 + (n1 - n0) * (max(iterated, p0) - p0) / (p1 - p0)
            break
    else:
        (p0, n0), (p1, n1) = pts[-2], pts[-1]
        cross = n1 + (n1 - n0) * (iterated - p1) / (p1 - p0)
    return "lobpcg" if n >= cross else "dense"


def eigsh(
    A: torch.Tensor,
    k: int,
    *,
    largest: bool = False,
    B: torch.Tensor | None = None,
    method: str = "lobpcg",
    tol: float | None = None,
    max_iter: int = 1000,
    gap_eps: float | None = None,
    on_fail: str = "warn",
    return_info: bool = False,
):
    r"""The k smallest (or largest) eigenpairs of symmetric matrices, differentiable.

    ``method='lobpcg'`` runs a batched block LOBPCG (guard vectors, per-matrix
    convergence on residual norms, no Python loop over the batch); ``method='dense'``
    takes them from ``torch.linalg.eigh``. When the block would not be much smaller
    than N (``N <= DENSE_BELOW * block``, ``DENSE_BELOW = 5``, block = k plus its guard
    vectors) LOBPCG falls back to the dense solve.

    Backward, from the k pairs alone (``docs/math.md``): masked reciprocal gaps within
    them, and for the rest of the space the shifted solves
    ``(A - l_j I) y_j = (I - X X^T) g_j``, ``y_j ⟂ X``, by batched conjugate gradients.
    The solves are positive definite for the smallest pairs (``largest=False``) when
    ``l_k < l_{k+1}``; a tie across the k-th pair makes them ill-conditioned.

    Args:
        A: ``(*, N, N)`` symmetric, float32 or float64.
        k: number of pairs, ``1 <= k <= N``.
        largest: the largest eigenvalues instead of the smallest.
        B: ``None``, or the SPD matrix of the generalized problem ``A x = l B x``: a
            ``(*, N, N)`` tensor, reduced by its Cholesky factor ``B = L L^T`` to
            ``L^{-1} A L^{-T}`` (an ``O(N^3)`` reduction, differentiable in ``B``), or a
            ``(*, N)`` positive diagonal, reduced by ``D^{-1/2} A D^{-1/2}`` in
            ``O(N^2)``. The eigenvectors are then B-orthonormal (``X^T B X = I``).
        method: ``'lobpcg'``, ``'dense'``, or ``'auto'``: the faster of the two for this
            device, N and k (:func:`diffeig._eigsh.auto_method`; both are exact).
        tol: LOBPCG stops when every wanted pair has ``|A x - l x| <= tol * s`` with
            ``s`` the largest absolute row sum of ``A`` (a bound on its norm); default
            1e-9 in float64, 7e-5 in float32. The backward's CG solves stop at
            ``tol * |g_j|``.
        max_iter: iteration limit of LOBPCG and of the CG solves.
        gap_eps: tie threshold of the backward (as :func:`diffeig.eigh`).
        on_fail: ``'warn'`` (default) or ``'raise'`` when LOBPCG did not converge.
        return_info: also return a :class:`LobpcgInfo`.

    Returns:
        ``(eigenvalues (*, k), eigenvectors (*, N, k))``, ascending for ``largest=False``
        and descending for ``largest=True``; with ``return_info``, also the info.
    """
    check_square(A, "A")
    bounds = check_symmetric(A, "A")
    if B is not None:
        return _generalized(
            A,
            k,
            B,
            largest=largest,
            method=method,
            tol=tol,
            max_iter=max_iter,
            gap_eps=gap_eps,
            on_fail=on_fail,
            return_info=return_info,
        )
    n = A.shape[-1]
    k = check_k(k, n)
    check_method(method, ("lobpcg", "dense", "auto"))
    if method == "auto":
        method = auto_method(n, k, A.device)
    check_solver_options(tol, max_iter, on_fail)
    gap_rtol, gap_atol = gap_tolerances(gap_eps, n, A.dtype)
    # Solved at unit scale, eigenvalues scaled back exactly (as diffeig.eigh).
    e = unit_scale(None if bounds is None else max(abs(bounds[0]), abs(bounds[1])))
    if e:
        A, gap_atol = scale2(A, -e), scale2(gap_atol, -e)
    if method == "lobpcg":
        gap_rtol = resolved_gap_rtol(gap_rtol, tol, A.dtype)
    options = SolverOptions(
        tol=tol, max_iter=max_iter, on_fail=on_fail, gap_rtol=gap_rtol, gap_atol=gap_atol
    )
    infos = []

    def solve(A_):
        if method == "dense":
            theta, X = dense_pairs(A_, k, largest, None)
            info = LobpcgInfo(iterations=0, max_residual=0.0, converged=True)
        else:
            theta, X, info = run_lobpcg(
                A_,
                k,
                largest=largest,
                constraints=None,
                tol=tol,
                max_iter=max_iter,
                on_fail=on_fail,
            )
        infos.append(info)
        return theta.contiguous(), X.contiguous()

    theta, X = _PartialEigh.apply(A, solve, largest, options)
    if e:
        theta = scale2(theta, e)
    return (theta, X, infos[0]) if return_info else (theta, X)


def _generalized(A, k, B, **kw):
    """``A x = l B x`` by reduction to a standard problem (see :func:`eigsh`)."""
    diagonal, magnitude = check_generalized_B(A, B)
    # B at unit scale (s a power of 4): eigenvalues scale by 1 / s, vectors by 1 / sqrt(s).
    e = unit_scale(magnitude, power=4)
    if e:
        out = _generalized(A, k, scale2(B, -e), **kw)
        return (scale2(out[0], -e), scale2(out[1], -e // 2), *out[2:])
    if diagonal:
        r = B.rsqrt()
        C = A * r.unsqueeze(-1) * r.unsqueeze(-2)
        out = eigsh(C, k, **kw)
        X = out[1] * r.unsqueeze(-1)
        return (out[0], X, *out[2:])
    L, info = torch.linalg.cholesky_ex(B)
    check_cholesky(info)
    # C = L^{-1} A L^{-T}, symmetrized against rounding; X = L^{-T} U.
    Y = torch.linalg.solve_triangular(L, A, upper=False)
    C = torch.linalg.solve_triangular(L, Y.mT, upper=False)
    C = 0.5 * (C + C.mT)
    out = eigsh(C, k, **kw)
    X = torch.linalg.solve_triangular(L.mT, out[1], upper=True)
    return (out[0], X, *out[2:])
