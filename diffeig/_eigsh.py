"""``diffeig.eigsh``: k extreme eigenpairs without a full eigendecomposition."""

from __future__ import annotations

import torch

from diffeig._eigh import _check_square, _torch_eigh, gap_tolerances
from diffeig._lobpcg import (
    BatchedOperator,
    LobpcgInfo,
    Symmetric,
    _matmul,
    _project,
    default_tol,
    lobpcg,
    partial_eigh_backward,
    report_failure,
    spectral_bound,
)
from diffeig._ops import _batched_first
from diffeig.ncut import check_symmetric

__all__ = ["eigsh", "LobpcgInfo"]


class _PartialEigh(torch.autograd.Function):
    """k eigenpairs of a dense symmetric ``A`` from any solver; backward by shifted solves.

    forward / setup_context / vmap (and a backward that is itself a function with a vmap
    rule), so that torch.func.vmap, grad and vmap(grad) run the batched solver.
    """

    @staticmethod
    def forward(A, solve, largest, gap_rtol, gap_atol, cg_tol, cg_max_iter, on_fail):
        return solve(A.detach())

    @staticmethod
    def setup_context(ctx, inputs, output):
        A, _, *args = inputs
        theta, X = output
        ctx.save_for_backward(A, theta, X)
        ctx.args = tuple(args)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_theta, grad_X):
        A, theta, X = ctx.saved_tensors
        if grad_theta is None and grad_X is None:
            return (None,) * 8
        grad_theta = torch.zeros_like(theta) if grad_theta is None else grad_theta
        grad_X = torch.zeros_like(X) if grad_X is None else grad_X
        gA = _PartialEighGrad.apply(A.detach(), theta, X, grad_theta, grad_X, ctx.args)
        return (gA,) + (None,) * 7

    @staticmethod
    def vmap(info, in_dims, A, solve, *args):
        (A,) = _batched_first(info, in_dims[:1], (A,))
        return _PartialEigh.apply(A, solve, *args), (0, 0)


class _PartialEighGrad(torch.autograd.Function):
    @staticmethod
    def forward(A, theta, X, grad_theta, grad_X, args):
        largest, gap_rtol, gap_atol, cg_tol, cg_max_iter, on_fail = args
        return partial_eigh_backward(
            A,
            theta,
            X,
            grad_theta,
            grad_X,
            gap_rtol,
            gap_atol,
            largest=largest,
            cg_tol=cg_tol,
            cg_max_iter=cg_max_iter,
            # ties are judged against the whole spectrum's magnitude, as the dense path does
            gap_scale=spectral_bound(A),
            on_fail=on_fail,
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("diffeig.eigsh does not support double backward")

    @staticmethod
    def vmap(info, in_dims, A, theta, X, grad_theta, grad_X, args):
        tensors = _batched_first(info, in_dims[:5], (A, theta, X, grad_theta, grad_X))
        return _PartialEighGrad.apply(*tensors, args), 0


def check_solver_options(tol, max_iter, on_fail) -> None:
    """The iterative solver's options, as ``eigsh`` and ``sym_eigh_ncut`` take them."""
    if on_fail not in ("warn", "raise"):
        raise ValueError(f"on_fail must be 'warn' or 'raise', got {on_fail!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    if tol is not None and not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")


def default_block(k: int, n: int) -> int:
    """Block size: k wanted columns plus guard vectors, which speed up convergence."""
    return min(n, k + max(k, 4))


def initial_block(shape, dtype, device, seed: int = 0, start=None, constraints=None):
    """Random ``(*, N, m)`` columns (seeded: the same start every call), the first ones
    replaced by ``start`` ``(*, N, s)`` where its part orthogonal to ``constraints`` is not
    negligible (a start that lies in the deflated space would bring it back in)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    X = torch.randn(shape, generator=g, dtype=dtype).to(device)
    if start is not None:
        s = start.to(dtype).expand(*shape[:-1], start.shape[-1])
        sp = _project(s, constraints)
        norm = sp.norm(dim=-2, keepdim=True)
        ok = norm > torch.finfo(dtype).eps ** 0.5 * s.norm(dim=-2, keepdim=True)
        r = s.shape[-1]
        X[..., :r] = torch.where(ok, sp / torch.where(ok, norm, 1) * shape[-2] ** 0.5, X[..., :r])
    return X


def run_lobpcg(
    A,
    k,
    *,
    largest,
    constraints,
    tol,
    max_iter,
    on_fail,
    scale=None,
    preconditioner=None,
    like=None,
    start=None,
    block=None,
):
    """LOBPCG on ``A``: a dense ``(*, N, N)`` tensor (dense eigh instead when the block
    would not be small), or a function ``Y -> A @ Y`` with ``like`` a ``(*, N)`` tensor
    giving the batch shape, dtype and device (then ``scale`` is required). ``start``:
    ``(*, N, s)`` guesses of the wanted vectors, the first columns of the initial block;
    ``block``: the block size (default :func:`default_block`)."""
    dense = not callable(A)
    like = A[..., 0] if dense else like
    n = like.shape[-1]
    if like.device.type == "meta":
        raise ValueError(
            "LOBPCG reads values to test convergence, so it cannot run on meta tensors; "
            "method='dense' infers shapes there"
        )
    if like.numel() == 0:  # an empty batch
        theta, X = like.new_zeros(*like.shape[:-1], k), like.new_zeros(*like.shape, k)
        return theta, X, LobpcgInfo(iterations=0, max_residual=0.0, converged=True)
    r = 0 if constraints is None else constraints.shape[-1]
    m = default_block(k, n - r) if block is None else min(block, n - r)
    if n - r <= DENSE_BELOW * m:
        # The iteration would cost about as much as a dense solve, and Rayleigh-Ritz on a
        # basis that nearly spans the space is fragile (a 26 x 26 matrix diverged).
        lam, V = _dense_pairs(_materialize(A, like), k, largest, constraints)
        return lam, V, LobpcgInfo(iterations=0, max_residual=0.0, converged=True)
    if start is not None:
        start = start[..., : m - 1]  # at least one random column
    X0 = initial_block(
        (*like.shape, m), like.dtype, like.device, start=start, constraints=constraints
    )
    if scale is None:  # Gershgorin: an upper bound of |A|_2, so tol is relative to A
        scale = spectral_bound(A)
    theta, X, info = lobpcg(
        BatchedOperator(_matmul, Symmetric(A), batch_shape=A.shape[:-2]) if dense else A,
        X0,
        k,
        largest=largest,
        constraints=constraints,
        tol=tol,
        max_iter=max_iter,
        scale=scale,
        preconditioner=preconditioner,
    )
    failed = info.failed
    if bool(failed.any()):
        count, total = int(failed.sum()), failed.numel()
        msg = (
            f"LOBPCG did not converge on {count} of {total} matrices in {info.iterations} "
            f"iterations (largest relative residual {info.max_residual:.2e} > tol, or Ritz "
            "values outside the spectrum's bounds)"
        )
        if dense or n <= MAX_FALLBACK_N:
            Ad = A[failed] if dense else _materialize(A, like)[failed]
            C = None if constraints is None else constraints[failed]
            lam, V = _dense_pairs(Ad, k, largest, C)
            theta, X = theta.clone(), X.clone()
            theta[failed], X[failed] = lam.to(theta.dtype), V.to(X.dtype)
            info.fallbacks = count
            msg += "; those were solved densely (torch.linalg.eigh), so the results are exact."
        else:
            msg += ". Raise max_iter or tol, or use method='dense'."
        report_failure(msg, on_fail, stacklevel=4)
    return theta, X, info


# method="auto": the N from which LOBPCG (forward + backward) beats the dense solve, by
# the number of pairs LOBPCG iterates on (the NCut's trivial pair is deflated, not
# iterated). Measured on a 2-core CPU in float64 (benchmarks/README.md, "method='auto'"):
# training-like unnormalized graphs, batches of 2-64, the loss on every returned vector.
# Between the points N* is interpolated linearly in the number of pairs; beyond, it grows
# as the last segment does.
AUTO_CROSSOVER_CPU = ((1, 100), (2, 500), (4, 650), (7, 2000))


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


# Use the dense solve when N (less the deflated constraints) is at most this many times
# the LOBPCG block.
DENSE_BELOW = 5
# Matrix-free operators are materialized for a dense fallback only up to this N.
MAX_FALLBACK_N = 8192


def _materialize(A, like):
    """``A`` as a dense ``(*, N, N)`` tensor (a function is applied to the identity)."""
    if not callable(A):
        return A
    n = like.shape[-1]
    eye = torch.eye(n, dtype=like.dtype, device=like.device).expand(*like.shape[:-1], n, n)
    M = A(eye.contiguous())
    return 0.5 * (M + M.mT)


def _dense_pairs(A, k, largest, constraints):
    """The k extreme pairs of dense symmetric ``A`` orthogonal to the orthonormal
    ``constraints`` (an invariant subspace of A, e.g. known eigenvectors): they are the
    extreme pairs of ``A + s C C^T`` with the constraints shifted past the spectrum, so a
    degenerate eigenspace that meets them still gives vectors orthogonal to them."""
    if constraints is not None:
        shift = 2 * spectral_bound(A) + 1
        shift = -shift if largest else shift
        A = A + shift[..., None, None] * (constraints @ constraints.mT)
    return _dense(A, k, largest)


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
    than N (``3 (k + guard) >= N``) LOBPCG falls back to the dense solve.

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
    _check_square(A, "A", (torch.float32, torch.float64))
    check_symmetric(A, "A")
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
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, N] = [1, {n}], got {k!r}")
    if method not in ("lobpcg", "dense", "auto"):
        raise ValueError(f"method must be 'lobpcg', 'dense' or 'auto', got {method!r}")
    if method == "auto":
        method = auto_method(n, k, A.device)
    check_solver_options(tol, max_iter, on_fail)
    gap_rtol, gap_atol = gap_tolerances(gap_eps, n, A.dtype)
    cg_tol = default_tol(A.dtype) if tol is None else tol
    infos = []

    def solve(A_):
        if method == "dense":
            theta, X = _dense(A_, k, largest)
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

    theta, X = _PartialEigh.apply(A, solve, largest, gap_rtol, gap_atol, cg_tol, max_iter, on_fail)
    return (theta, X, infos[0]) if return_info else (theta, X)


def _dense(A, k, largest):
    lam, V = _torch_eigh(A)
    if largest:
        return lam[..., -k:].flip(-1), V[..., -k:].flip(-1)
    return lam[..., :k], V[..., :k]


def _generalized(A, k, B, **kw):
    """``A x = l B x`` by reduction to a standard problem (see :func:`eigsh`)."""
    if not isinstance(B, torch.Tensor):
        raise ValueError(f"B must be a tensor, got {type(B).__name__}")
    if B.dtype != A.dtype or B.device != A.device:
        raise ValueError(
            f"B must have A's dtype {A.dtype} and device {A.device}, got {B.dtype}, {B.device}"
        )
    if B.shape == A.shape[:-1]:  # a diagonal
        if B.device.type != "meta" and not bool((B > 0).all()):
            raise ValueError("B given as a diagonal (*, N) must be positive")
        s = B.rsqrt()
        C = A * s.unsqueeze(-1) * s.unsqueeze(-2)
        out = eigsh(C, k, **kw)
        X = out[1] * s.unsqueeze(-1)
        return (out[0], X, *out[2:])
    if B.shape != A.shape:
        raise ValueError(
            f"B must have shape {tuple(A.shape)} (dense) or {tuple(A.shape[:-1])} "
            f"(diagonal), got {tuple(B.shape)}"
        )
    check_symmetric(B, "B")
    L, info = torch.linalg.cholesky_ex(B)
    if bool((info != 0).any()):
        raise ValueError(
            "B must be symmetric positive definite (its Cholesky factorization failed)"
        )
    # C = L^{-1} A L^{-T}, symmetrized against rounding; X = L^{-T} U.
    Y = torch.linalg.solve_triangular(L, A, upper=False)
    C = torch.linalg.solve_triangular(L, Y.mT, upper=False)
    C = 0.5 * (C + C.mT)
    out = eigsh(C, k, **kw)
    X = torch.linalg.solve_triangular(L.mT, out[1], upper=True)
    return (out[0], X, *out[2:])
