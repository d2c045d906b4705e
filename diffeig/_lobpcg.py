"""Batched LOBPCG for the k extreme eigenpairs of symmetric matrices, and its backward.

Everything is a batched tensor operation (no Python loop over the batch): per iteration
one product ``A @ W`` with the (N x m) residual block, a Gram matrix, and two small
batched ``eigh`` of size <= 3m. Rayleigh-Ritz works on the Gram matrix of the raw basis
``[X, W, P]`` whitened through its eigendecomposition, so directions that became
linearly dependent (the usual LOBPCG breakdown) are dropped per matrix by a mask instead
of per-matrix control flow.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffeig import _ops, _reference

__all__ = [
    "BatchedOperator",
    "Symmetric",
    "LobpcgInfo",
    "default_tol",
    "lobpcg",
    "partial_eigh_backward",
    "partial_eigh_factor",
    "report_failure",
    "spectral_bound",
]


class BatchedOperator:
    """``Y -> fn(Y, *data)`` for a batch of operators, restrictable to some of them.

    Every tensor in ``data`` has the batch's leading dimensions ``batch_shape`` (or
    broadcasts to them); an entry may also be another :class:`BatchedOperator` (an
    operator built on one), a :class:`Symmetric` batch of matrices, or ``None``.
    :meth:`restrict` indexes them all, so the iterative solvers can drop matrices that
    converged and stop paying for their products: a batch costs the sum of its matrices'
    iterations, not its slowest matrix's iterations times its size.
    """

    def __init__(self, fn, *data, batch_shape):
        self.fn, self.data, self.batch_shape = fn, data, tuple(batch_shape)

    def __call__(self, Y):
        return self.fn(Y, *self.data)

    def restrict(self, index: torch.Tensor | None = None) -> BatchedOperator:
        """The same operators with the batch flattened to one dimension and, given a 1-D
        ``index`` into it, only those matrices. Tensors are indexed (copied: they are
        small); a :class:`Symmetric` batch is not copied, only its index changes."""
        nb = len(self.batch_shape)

        def take(t):
            if t is None:
                return None
            if isinstance(t, (BatchedOperator, Symmetric)):
                return t.restrict(index)
            t = t.expand(*self.batch_shape, *t.shape[nb:])
            t = t.reshape(-1, *t.shape[nb:])
            return t if index is None else t.index_select(0, index)

        size = math.prod(self.batch_shape) if index is None else index.numel()
        return BatchedOperator(self.fn, *(take(t) for t in self.data), batch_shape=(size,))


class Symmetric:
    """A batch of symmetric matrices ``(*, N, N)`` for products ``S @ Y``, ``Y (*, N, m)``.

    Products go through ``diffeig::sym_matmul``: on CPU from N = 512 on it reads each
    matrix's lower triangle only (half of its bytes; the solvers' products are
    bandwidth-bound), and after :meth:`restrict` it multiplies the selected matrices in
    place, never copying them. The matrices must be symmetric (the callers check it): from
    N = 512 on the upper triangle is not read, as in ``torch.linalg.eigh``.
    """

    def __init__(self, A: torch.Tensor, index: torch.Tensor | None = None):
        self.base = A.reshape(-1, *A.shape[-2:]).contiguous()  # the batch, flattened
        self.index = index

    def restrict(self, index: torch.Tensor | None = None) -> Symmetric:
        """Matrices ``index`` (1-D, into the flattened batch, or into the current
        selection once restricted)."""
        if index is None:
            return self
        return Symmetric(self.base, index if self.index is None else self.index[index])

    def __matmul__(self, Y: torch.Tensor) -> torch.Tensor:
        out = _ops.sym_matmul(self.base, Y.reshape(-1, *Y.shape[-2:]), self.index)
        return out.reshape(Y.shape)


def _restrictable(*ops) -> bool:
    return all(op is None or isinstance(op, BatchedOperator) for op in ops)


# A working set is compacted when at most this share of its matrices is still iterating.
# Compacting is cheap (the matrices themselves are never copied: Symmetric batches only
# change their index), so it happens as soon as a twentieth of them converged: at 0.5 the
# recipe's batches paid 8 - 12 % more time (benchmarks/README.md).
COMPACT_BELOW = 0.95


@dataclass
class LobpcgInfo:
    """Convergence report of :func:`lobpcg`.

    ``converged``: every matrix reached ``tol``. ``restarts``: how many times a matrix was
    restarted on an ill-conditioned basis. ``fallbacks``: matrices that LOBPCG did not
    solve (not converged, or Ritz values outside the spectrum's bounds) and that were
    solved densely instead. ``failed``: per matrix, whether LOBPCG failed on it.
    ``matrix_iterations``: per matrix, the iterations that updated it (a matrix stops
    being iterated once its pairs converged). ``next_eigenvalue``: per matrix, the Ritz
    value of the first guard vector (with k + 1 <= block), a bound on the (k+1)-th
    eigenvalue from beyond the wanted ones (above them for the smallest): where it is
    within rounding of the k-th, the k-th eigenvalue is tied."""

    iterations: int
    max_residual: float
    converged: bool
    restarts: int = 0
    fallbacks: int = 0
    failed: torch.Tensor | None = None
    matrix_iterations: torch.Tensor | None = None
    next_eigenvalue: torch.Tensor | None = None


def default_tol(dtype: torch.dtype) -> float:
    """Relative residual tolerance: ``eps ** 0.6``, at least 1e-9.

    In float32 that is 7e-5: eigenvector errors ``tol / gap`` stay near 1e-5 in cosine for
    NCut gaps of a few 1e-2. In float64 the Gram-matrix Rayleigh-Ritz stalls near 1e-10,
    so 1e-9 is the floor.
    """
    return max(torch.finfo(dtype).eps ** 0.6, 1e-9)


def _safe_norm(Y):
    """Column norms, with 1 for (numerically) zero columns so that they stay zero."""
    n = Y.norm(dim=-2, keepdim=True)
    return torch.where(n > torch.finfo(Y.dtype).eps * n.amax(-1, keepdim=True).clamp_min(1), n, 1)


def _orthonormalize(X):
    """``X L^-T`` with ``L L^T = X^T X`` (Cholesky): orthonormal columns spanning X. A
    matrix whose factorization fails keeps its X."""
    L, info = torch.linalg.cholesky_ex(X.mT @ X)
    ok = (info == 0)[..., None, None]
    L = torch.where(ok, L, torch.eye(L.shape[-1], dtype=L.dtype, device=L.device))
    return torch.where(ok, torch.linalg.solve_triangular(L, X.mT, upper=False).mT, X)


def _matmul(Y, A):
    return A @ Y


def _project(Y, C):
    """Remove from Y its components along the orthonormal columns of C."""
    if C is None:
        return Y
    if C.shape[-1] == 1:  # one vector (the NCut's trivial one): element-wise beats bmm
        return Y - C * (C * Y).sum(-2, keepdim=True)
    return Y - C @ (C.mT @ Y)


def lobpcg(
    matmul: Callable[[torch.Tensor], torch.Tensor],
    X0: torch.Tensor,
    k: int,
    *,
    largest: bool = False,
    constraints: torch.Tensor | None = None,
    tol: float | None = None,
    max_iter: int = 1000,
    scale: torch.Tensor | None = None,
    preconditioner: Callable[[torch.Tensor], torch.Tensor] | None = None,
    check_every: int | None = None,
):
    """k extreme eigenpairs of a batch of symmetric operators.

    Args:
        matmul: ``Y -> A @ Y`` for ``(*, N, m)`` blocks.
        X0: ``(*, N, m)`` initial block, ``m >= k`` (extra columns are guard vectors).
        k: number of pairs returned.
        largest: the largest instead of the smallest eigenvalues.
        constraints: ``(*, N, r)`` orthonormal vectors the solution stays orthogonal to
            (known eigenvectors, deflated).
        tol: converged when ``|A x - theta x| <= tol * scale`` for the k wanted pairs
            (default :func:`default_tol`: 1e-9 in float64, 7e-5 in float32).
        max_iter: iteration limit.
        scale: ``(*)`` spectral scale of each matrix (default: the largest |Ritz value|).
        preconditioner: ``R -> T R``, an SPD approximation of ``A^-1`` (up to a positive
            factor per matrix: the block is normalized after it) applied to the
            residuals (e.g. Jacobi, ``diag(A)^-1``).
        check_every: read the convergence test back to the host every this many
            iterations (default: 1 on CPU, 4 on CUDA, where each read is a synchronization;
            per-matrix freezing keeps converged matrices unchanged in between).

    Returns:
        ``(theta (*, k), X (*, N, k), LobpcgInfo)``.
    """
    dtype = X0.dtype
    if check_every is None:
        check_every = 4 if X0.device.type == "cuda" else 1
    if tol is None:
        tol = default_tol(dtype)
    sign = -1.0 if largest else 1.0
    batch, (n, m) = X0.shape[:-2], X0.shape[-2:]
    B = math.prod(batch)
    inv = None
    if scale is not None:
        # Iterate on A / scale, whose spectrum lies in [-1, 1]: the residual test and the
        # Gram matrices are then the same at any scale of A (at 1e-200 the squared
        # residuals of A itself underflow to 0 and a random block "converges").
        scale = scale.detach().to(dtype)
        inv = torch.where(scale > 0, 1 / scale, 1.0)[..., None, None]

    def signed_scaled(Y, A, inv):
        AY = A(Y)
        AY = -AY if largest else AY
        return AY if inv is None else AY * inv

    # With a BatchedOperator (and a restrictable preconditioner) the iteration runs on a
    # flat batch (B, N, m), and matrices that converged leave the working set.
    compact = B > 1 and isinstance(matmul, BatchedOperator) and _restrictable(preconditioner)
    if compact:
        op = BatchedOperator(signed_scaled, matmul, inv, batch_shape=batch).restrict()
        prec = None if preconditioner is None else preconditioner.restrict()
        X0 = X0.reshape(B, n, m)
        if constraints is not None:
            constraints = constraints.expand(*batch, n, constraints.shape[-1]).reshape(B, n, -1)
    else:

        def op(Y):
            return signed_scaled(Y, matmul, inv)

        prec = preconditioner

    def rayleigh_ritz(S, AS, m):
        G = S.mT @ S
        H = S.mT @ AS
        H = 0.5 * (H + H.mT)
        e, U = torch.linalg.eigh(0.5 * (G + G.mT))
        # Directions whose Gram eigenvalue is below eps^(3/4) of the largest carry H with
        # a relative error above eps^(1/4): kept, they feed rounding noise back into the
        # basis, and a near-disconnected graph then diverges once its residual stalls.
        floor = max(S.shape[-1] * torch.finfo(dtype).eps * 10, torch.finfo(dtype).eps ** 0.75)
        keep = e > e[..., -1:] * floor
        T = U * torch.where(keep, e.clamp_min(torch.finfo(dtype).tiny).rsqrt(), 0).unsqueeze(-2)
        Hs = T.mT @ H @ T
        # Dropped directions get a Ritz value above every real one (Gershgorin), so they
        # are never selected.
        big = Hs.abs().sum(-1).amax(-1, keepdim=True) * 2 + 1
        Hs = Hs + torch.diag_embed(torch.where(keep, 0, big))
        th, C = torch.linalg.eigh(0.5 * (Hs + Hs.mT))
        # How much the whitening amplifies rounding: the implicit updates AX = AS C carry
        # AS's error times 1 / sqrt(smallest kept Gram eigenvalue), every iteration. Past
        # eps^-1/4 (a Gram ratio below sqrt(eps)) a matrix whose residual also stopped
        # falling is restarted.
        smallest = torch.where(keep, e, e[..., -1:]).amin(-1)
        ill = smallest < e[..., -1] * torch.finfo(dtype).eps ** 0.5
        return th[..., :m], T @ C[..., :m], ill

    X = _project(X0, constraints)
    X = torch.linalg.qr(X).Q
    AX = op(X)
    theta, C, _ = rayleigh_ritz(X, AX, m)
    X, AX = X @ C, AX @ C
    P = AP = None
    it, max_res, converged, restarts = 0, math.inf, False, 0
    ill = pending = torch.zeros(X.shape[:-2], dtype=torch.bool, device=X.device)
    prev = torch.full(X.shape[:-2], math.inf, dtype=dtype, device=X.device)
    iters = torch.zeros(X.shape[:-2], dtype=torch.long, device=X.device)
    # The working set: rows of the flat batch still iterating, and where the others went.
    rows, out = None, None

    def relative_residuals(R, theta):
        res = R[..., :k].norm(dim=-2)
        if scale is None:
            return res / theta.abs().amax(-1).clamp_min(torch.finfo(dtype).tiny).unsqueeze(-1)
        return res  # the operator is A / scale

    for it in range(1, max_iter + 1):  # noqa: B007
        R = AX - X * theta.unsqueeze(-2)
        rel = relative_residuals(R, theta)
        # A matrix whose basis was ill-conditioned and whose residual stopped falling is
        # restarted (below); an ill-conditioned basis alone is common near convergence.
        worst = rel.amax(-1)
        pending = pending | (ill & (worst >= prev))
        prev = worst
        check = it % check_every == 0 or it == max_iter
        if check and bool(pending.any()):
            # AS C carries AS's rounding amplified by the whitening, and that error
            # compounds each iteration until the Ritz values leave the spectrum (the
            # divergence on TokenCut-like graphs): X re-orthonormalized, A X computed
            # afresh, P dropped.
            X2 = _orthonormalize(X)
            AX2 = op(X2)
            bad = pending[..., None, None]
            X, AX = torch.where(bad, X2, X), torch.where(bad, AX2, AX)
            theta = torch.where(pending.unsqueeze(-1), (X * AX).sum(-2), theta)
            if P is not None:
                P, AP = torch.where(bad, 0, P), torch.where(bad, 0, AP)
            restarts += int(pending.sum())
            pending = torch.zeros_like(pending)
            R = AX - X * theta.unsqueeze(-2)
            rel = relative_residuals(R, theta)
        done = (rel <= tol).all(-1)  # per matrix
        if check:
            max_res = rel.amax().item()  # the only host synchronization
            if max_res <= tol:
                converged = True
                break
            if compact and int((~done).sum()) <= COMPACT_BELOW * done.numel():
                # Converged matrices leave the working set (their products would be
                # wasted): their pairs are kept in `out`, the rest is indexed once.
                if out is None:
                    rows = torch.arange(B, device=X.device)
                    out = (X.new_empty(B, n, m), AX.new_empty(B, n, m), theta.new_empty(B, m))
                    out += (iters.new_empty(B),)
                for buf, t in zip(out, (X, AX, theta, iters)):
                    buf.index_copy_(0, rows, t)
                live = (~done).nonzero().squeeze(-1)
                rows = rows[live]
                X, AX, theta, R, ill, pending, prev, iters, done = (
                    t.index_select(0, live)
                    for t in (X, AX, theta, R, ill, pending, prev, iters, done)
                )
                if P is not None:
                    P, AP = P.index_select(0, live), AP.index_select(0, live)
                if constraints is not None:
                    constraints = constraints.index_select(0, live)
                op = op.restrict(live)
                prec = None if prec is None else prec.restrict(live)
        iters = iters + (~done).long()
        # Converged matrices keep their pairs: iterating on a residual at rounding level
        # only feeds noise into the basis.
        keep = done[..., None, None]
        X_old, AX_old, theta_old = X, AX, theta
        Wb = _project(R if prec is None else prec(R), constraints)
        Wb = Wb / _safe_norm(Wb)
        AW = op(Wb)
        if P is None:
            S, AS = torch.cat([X, Wb], -1), torch.cat([AX, AW], -1)
        else:
            nP = _safe_norm(P)
            S, AS = torch.cat([X, Wb, P / nP], -1), torch.cat([AX, AW, AP / nP], -1)
        theta, C, ill = rayleigh_ritz(S, AS, m)
        X, AX = S @ C, AS @ C
        P, AP = S[..., m:] @ C[..., m:, :], AS[..., m:] @ C[..., m:, :]
        X, AX = torch.where(keep, X_old, X), torch.where(keep, AX_old, AX)
        theta = torch.where(done.unsqueeze(-1), theta_old, theta)
        P, AP = torch.where(keep, 0, P), torch.where(keep, 0, AP)
        if constraints is not None:  # keep rounding from leaking into the deflated space
            X = _project(X, constraints)
    if out is not None:
        for buf, t in zip(out, (X, AX, theta, iters)):
            buf.index_copy_(0, rows, t)
        X, AX, theta, iters = out
    # Per matrix: the wanted pairs converged, and (on A / scale, whose spectrum lies in
    # [-1, 1]) no Ritz value left the spectrum's bounds: what a divergence looks like.
    res = relative_residuals(AX - X * theta.unsqueeze(-2), theta)
    if scale is None:
        inside = torch.ones_like(res[..., 0], dtype=torch.bool)
    else:
        inside = (theta[..., :k].abs() <= 1 + 100 * tol).all(-1)
    failed = ~((res <= tol).all(-1) & inside & torch.isfinite(theta[..., :k]).all(-1))
    info = LobpcgInfo(
        iterations=it,
        max_residual=max_res,
        converged=converged and not bool(failed.any()),
        restarts=restarts,
        failed=failed.reshape(batch),
        matrix_iterations=iters.reshape(batch),
    )
    theta, X = theta.reshape(*batch, m), X.reshape(*batch, n, m)
    if scale is not None:
        theta = theta * scale.unsqueeze(-1)
    if m > k:  # the first guard vector's Ritz value: a bound on the (k+1)-th eigenvalue
        info.next_eigenvalue = sign * theta[..., k]
    return sign * theta[..., :k], X[..., :k], info


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


def report_failure(msg: str, on_fail: str, stacklevel: int = 3) -> None:
    """Raise ``RuntimeError`` (``on_fail='raise'``) or warn (``'warn'``) about a solver
    that stopped short of its tolerance: one rule for the forward and the backward."""
    if on_fail == "raise":
        raise RuntimeError(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=stacklevel + 1)


def spectral_bound(A: torch.Tensor) -> torch.Tensor:
    """``(*)`` largest absolute row sum of each ``(*, N, N)`` matrix: Gershgorin's bound
    of its spectral radius, from one read of A (chunked so that the ``|A|`` temporary is
    recycled rather than page-faulted anew)."""
    flat = A.detach().reshape(-1, *A.shape[-2:])
    if flat.shape[0] == 0 or A.shape[-1] == 0:
        return A.new_zeros(A.shape[:-2])
    return torch.cat([c.abs().sum(-1).amax(-1) for c in flat.split(32)]).reshape(A.shape[:-2])


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
) -> torch.Tensor:
    """``P`` with ``dL/dA = sym(P X^T)``, from k known eigenpairs ``A X = X diag(theta)``.

    ``A`` is a tensor or a function ``Y -> A @ Y`` (matrix-free). ``diagonal`` (``(*, N)``,
    positive), an approximation of A's diagonal, turns on split Jacobi preconditioning of
    the solves: CG on ``S Q (A - l) Q S`` with ``S = diag^-1/2`` and ``Q = I - X X^T``,
    then ``y = Q S y'``.

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
