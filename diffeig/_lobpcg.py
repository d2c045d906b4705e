"""Batched LOBPCG for the k extreme eigenpairs of symmetric matrices (Knyazev 2001).

The engine every iterative solver of diffeig runs on: :func:`lobpcg` (the iteration, in
named steps) and :func:`run_lobpcg` (initial block, non-convergence report and dense
fallback). The backward of what it solves is :mod:`diffeig._implicit`.

Everything is a batched tensor operation (no Python loop over the batch): per iteration
one product ``A @ W`` with the (N x m) residual block, a Gram matrix, and two small
batched ``eigh`` of size <= 3m. Rayleigh-Ritz works on the Gram matrix of the raw basis
``[X, W, P]`` whitened through its eigendecomposition, so directions that became
linearly dependent (the usual LOBPCG breakdown) are dropped per matrix by a mask instead
of per-matrix control flow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffeig._checks import check_not_meta, report_failure
from diffeig._operators import (
    BatchedOperator,
    Symmetric,
    dense_pairs,
    materialize,
    matrix_times,
    project,
    scaled_operators,
    spectral_bound,
)
from diffeig._rayleigh_ritz import orthonormalize, rayleigh_ritz, safe_norm
from diffeig._tolerances import (
    CERTIFY_GAP_FRACTION,
    COMPACT_BELOW,
    DENSE_BELOW,
    MAX_FALLBACK_N,
    default_tol,
    eigenvalue_converged,
    stall_floor,
)

__all__ = [
    "LobpcgInfo",
    "Unconverged",
    "default_block",
    "initial_block",
    "lobpcg",
    "run_lobpcg",
]


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
    within rounding of the k-th, the k-th eigenvalue is tied. ``residuals``: per matrix
    and column of the block (wanted, then guards), ``|A x - theta x|``: the Ritz values lie
    within these of eigenvalues of A, so gaps below them are not resolved. ``certified``:
    with ``certify=True``, per matrix, whether the first guard pair converged enough to
    bound the gap above the k-th pair (:func:`lobpcg`)."""

    iterations: int
    max_residual: float
    converged: bool
    restarts: int = 0
    fallbacks: int = 0
    failed: torch.Tensor | None = None
    matrix_iterations: torch.Tensor | None = None
    next_eigenvalue: torch.Tensor | None = None
    residuals: torch.Tensor | None = None
    certified: torch.Tensor | None = None


class _Iterate:
    """LOBPCG's state for a batch: the Ritz block ``X`` (and ``A X``), its values, the
    search directions ``P`` (and ``A P``), and per matrix the restart bookkeeping and
    iteration count. Once matrices converge they are locked: their pairs move to ``out``
    and the state keeps only the rows still iterating (``rows``)."""

    def __init__(self, op, X0, constraints, k, scale, tol, eigenvalue_rtol=False):
        self.k, self.scale, self.constraints = k, scale, constraints
        self.tol, self.eigenvalue_rtol = tol, eigenvalue_rtol
        m = X0.shape[-1]
        X = project(X0, constraints)
        X = torch.linalg.qr(X).Q
        AX = op(X)
        theta, C, _ = rayleigh_ritz(X, AX, m)
        self.X, self.AX, self.theta = X @ C, AX @ C, theta
        self.P = self.AP = None
        shape, dev = X.shape[:-2], X.device
        self.ill = self.pending = torch.zeros(shape, dtype=torch.bool, device=dev)
        self.prev = torch.full(shape, math.inf, dtype=X.dtype, device=dev)
        self.iters = torch.zeros(shape, dtype=torch.long, device=dev)
        self.rows = self.out = None

    # -- convergence -------------------------------------------------------------------

    def residuals(self):
        """``(R, rel)``: the residual block and the wanted pairs' relative residuals."""
        R = self.AX - self.X * self.theta.unsqueeze(-2)
        return R, self.relative(R, self.theta)

    def relative(self, R, theta):
        res = R[..., : self.k].norm(dim=-2)
        if self.scale is None:
            tiny = torch.finfo(R.dtype).tiny
            return res / theta.abs().amax(-1).clamp_min(tiny).unsqueeze(-1)
        return res  # the operator is A / scale

    def done(self, rel, R, certify: bool):
        """Per matrix: every wanted pair converged, and with ``certify`` the first guard
        pair too, or to a tenth of its gap above the k-th pair (CERTIFY_GAP_FRACTION):
        an unconverged guard Ritz value bounds the (k+1)-th eigenvalue from above only,
        and says nothing of a tie below it."""
        done = (rel <= self.tol).all(-1)
        if self.eigenvalue_rtol:
            done = done & self.small_converged(rel)
        if certify:
            done = done & self.certified(R)
        return done

    def small_converged(self, rel):
        """Each wanted Ritz value within ``tol`` of its eigenvalue *relative to itself*:
        its error is about ``r^2 / gap`` (gap to the next Ritz value), so a pair is also
        converged once ``r^2 <= tol * theta * gap``, or at ``tol^(4/3)``, about where the
        iteration's rounding stalls. Only small eigenvalues (next to the deflated 0 of a
        near-disconnected graph) need more than the absolute test: at l2 ~ 1e-9 of the
        bound, ``r <= tol`` left l2 2e-5 off."""
        k = self.k
        th = self.theta
        gap = (th[..., 1 : k + 1] - th[..., :k]).clamp_min(0)
        if gap.shape[-1] < k:  # no guard: the gap to the spectrum's bound (1 on A / scale)
            gap = torch.cat([gap, (1 - th[..., k - 1 : k]).clamp_min(0)], -1)
        ok = eigenvalue_converged(rel, th[..., :k].abs(), gap, self.tol, stall_floor(self.tol))
        return ok.all(-1)

    def certified(self, R):
        k = self.k
        rg = self.relative(R[..., k : k + 1], self.theta[..., k : k + 1])[..., 0]
        gap = self.theta[..., k] - self.theta[..., k - 1]
        return (rg <= self.tol) | (rg <= CERTIFY_GAP_FRACTION * gap)

    def note_stalls(self, rel):
        """A matrix whose basis was ill-conditioned and whose residual stopped falling is
        marked for a restart; an ill-conditioned basis alone is common near convergence."""
        worst = rel.amax(-1)
        self.pending = self.pending | (self.ill & (worst >= self.prev))
        self.prev = worst

    # -- restart -------------------------------------------------------------------------

    def restart(self, op):
        """Restart the marked matrices: X re-orthonormalized, A X computed afresh, P dropped.

        A S C carries A S's rounding amplified by the whitening, and that error compounds
        each iteration until the Ritz values leave the spectrum (the divergence on
        TokenCut-like graphs). Returns the number restarted."""
        pending = self.pending
        X2 = orthonormalize(self.X)
        AX2 = op(X2)
        bad = pending[..., None, None]
        self.X, self.AX = torch.where(bad, X2, self.X), torch.where(bad, AX2, self.AX)
        self.theta = torch.where(pending.unsqueeze(-1), (self.X * self.AX).sum(-2), self.theta)
        if self.P is not None:
            self.P, self.AP = torch.where(bad, 0, self.P), torch.where(bad, 0, self.AP)
        self.pending = torch.zeros_like(pending)
        return int(pending.sum())

    # -- locking -------------------------------------------------------------------------

    _PER_MATRIX = ("X", "AX", "theta", "ill", "pending", "prev", "iters")

    def lock(self, done, op, prec, R):
        """Converged matrices leave the working set (their products would be wasted):
        their pairs are kept in ``out``, the rest is indexed once. Returns the restricted
        ``(op, prec, R, done)``."""
        if self.out is None:
            B, n, m = self.X.shape
            self.rows = torch.arange(B, device=self.X.device)
            self.out = (self.X.new_empty(B, n, m), self.AX.new_empty(B, n, m))
            self.out += (self.theta.new_empty(B, m), self.iters.new_empty(B))
        self._store()
        live = (~done).nonzero().squeeze(-1)
        self.rows = self.rows[live]
        for name in self._PER_MATRIX:
            setattr(self, name, getattr(self, name).index_select(0, live))
        if self.P is not None:
            self.P, self.AP = self.P.index_select(0, live), self.AP.index_select(0, live)
        if self.constraints is not None:
            self.constraints = self.constraints.index_select(0, live)
        prec = None if prec is None else prec.restrict(live)
        return op.restrict(live), prec, R.index_select(0, live), done.index_select(0, live)

    def _store(self):
        for buf, t in zip(self.out, (self.X, self.AX, self.theta, self.iters)):
            buf.index_copy_(0, self.rows, t)

    def unlock(self):
        """Every matrix's pairs back in batch order."""
        if self.out is not None:
            self._store()
            self.X, self.AX, self.theta, self.iters = self.out

    # -- one iteration -------------------------------------------------------------------

    def step(self, R, done, op, prec):
        """One LOBPCG update of the matrices not ``done``: Rayleigh-Ritz on
        ``[X, T R, P]`` (T the preconditioner). Converged matrices keep their pairs:
        iterating on a residual at rounding level only feeds noise into the basis."""
        m = self.X.shape[-1]
        self.iters = self.iters + (~done).long()
        keep = done[..., None, None]
        X_old, AX_old, theta_old = self.X, self.AX, self.theta
        Wb = project(R if prec is None else prec(R), self.constraints)
        # Without its components along X (twice: one pass of classical Gram-Schmidt
        # leaves rounding-level ones). A strong preconditioner (T ~ A^-1) amplifies the
        # directions of the smallest converged pairs in every column of T R (an island's
        # vector by 1e8 on a pixel graph); the Gram whitening then dropped what was left as
        # noise and LOBPCG stalled (no convergence in 1000 iterations where 12 suffice).
        for _ in range(2):
            Wb = Wb - X_old @ (X_old.mT @ Wb)
        Wb = Wb / safe_norm(Wb)
        AW = op(Wb)
        if self.P is None:
            S, AS = torch.cat([self.X, Wb], -1), torch.cat([self.AX, AW], -1)
        else:
            nP = safe_norm(self.P)
            S = torch.cat([self.X, Wb, self.P / nP], -1)
            AS = torch.cat([self.AX, AW, self.AP / nP], -1)
        theta, C, self.ill = rayleigh_ritz(S, AS, m)
        X, AX = S @ C, AS @ C
        P, AP = S[..., m:] @ C[..., m:, :], AS[..., m:] @ C[..., m:, :]
        self.X, self.AX = torch.where(keep, X_old, X), torch.where(keep, AX_old, AX)
        self.theta = torch.where(done.unsqueeze(-1), theta_old, theta)
        self.P, self.AP = torch.where(keep, 0, P), torch.where(keep, 0, AP)
        if self.constraints is not None:  # keep rounding from leaking into the deflated space
            self.X = project(self.X, self.constraints)

    # -- result --------------------------------------------------------------------------

    def failed(self, res):
        """Per matrix: not every wanted pair converged (``res``: the final relative
        residuals), or (on A / scale, whose spectrum lies in [-1, 1]) a Ritz value left
        the spectrum's bounds: what a divergence looks like, or a non-finite value."""
        k, tol = self.k, self.tol
        if self.scale is None:
            inside = torch.ones_like(res[..., 0], dtype=torch.bool)
        else:
            inside = (self.theta[..., :k].abs() <= 1 + 100 * tol).all(-1)
        return ~((res <= tol).all(-1) & inside & torch.isfinite(self.theta[..., :k]).all(-1))


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
    certify: bool = False,
    eigenvalue_rtol: bool = False,
):
    """k extreme eigenpairs of a batch of symmetric operators.

    One iteration, per matrix still iterating: residuals and the convergence test;
    a restart where the basis went ill-conditioned and the residual stalled
    (:meth:`_Iterate.restart`); locking of converged matrices out of the working set
    (:meth:`_Iterate.lock`); Rayleigh-Ritz on ``[X, T R, P]`` (:meth:`_Iterate.step`).

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
        certify: iterate each matrix also until its first guard pair (``m > k`` needed)
            converged to ``tol``, or to a tenth of its gap above the k-th pair, so that
            ``LobpcgInfo.next_eigenvalue`` and ``residuals`` bound the gap after the k-th
            eigenvalue (``method='auto'`` uses it to decide whether LOBPCG's k-th vector
            is the dense solve's).
        eigenvalue_rtol: also stop each wanted pair only once its Ritz value is within
            ``tol`` of the eigenvalue relative to the eigenvalue itself (``r^2 / gap <=
            tol * theta``, floored at ``tol^(4/3)``): small eigenvalues (a
            near-disconnected graph's l2) get their relative accuracy. Needs ``scale``.

    Returns:
        ``(theta (*, k), X (*, N, k), LobpcgInfo)``.
    """
    dtype = X0.dtype
    if check_every is None:
        check_every = 4 if X0.device.type == "cuda" else 1
    if tol is None:
        tol = default_tol(dtype)
    batch, (n, m) = X0.shape[:-2], X0.shape[-2:]
    op, prec, X0, constraints, compact = scaled_operators(
        matmul, preconditioner, X0, constraints, largest, scale
    )
    state = _Iterate(op, X0, constraints, k, scale, tol, eigenvalue_rtol and scale is not None)
    it, max_res, converged, restarts = 0, math.inf, False, 0
    for it in range(1, max_iter + 1):  # noqa: B007
        R, rel = state.residuals()
        state.note_stalls(rel)
        check = it % check_every == 0 or it == max_iter
        if check and bool(state.pending.any()):
            restarts += state.restart(op)
            R, rel = state.residuals()
        done = state.done(rel, R, certify)  # per matrix
        if check:
            max_res = rel.amax().item()  # the only host synchronizations
            if bool(done.all()):
                converged = True
                break
            if compact and int((~done).sum()) <= COMPACT_BELOW * done.numel():
                op, prec, R, done = state.lock(done, op, prec, R)
        state.step(R, done, op, prec)
    state.unlock()
    R, rel = state.residuals()
    failed = state.failed(rel)
    residuals = R.norm(dim=-2).reshape(*batch, m)
    certified = state.certified(R).reshape(batch) if certify else None
    info = LobpcgInfo(
        iterations=it,
        max_residual=max_res,
        converged=converged and not bool(failed.any()),
        restarts=restarts,
        failed=failed.reshape(batch),
        matrix_iterations=state.iters.reshape(batch),
        certified=certified,
    )
    theta, X = state.theta.reshape(*batch, m), state.X.reshape(*batch, n, m)
    if scale is not None:
        theta = theta * scale.detach().to(dtype).unsqueeze(-1)
        residuals = residuals * scale.detach().to(dtype).unsqueeze(-1)
    info.residuals = residuals
    sign = -1.0 if largest else 1.0
    if m > k:  # the first guard vector's Ritz value: a bound on the (k+1)-th eigenvalue
        info.next_eigenvalue = sign * theta[..., k]
    return sign * theta[..., :k], X[..., :k], info


# ------------------------------------------------------------------------- the driver


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
        sp = project(s, constraints)
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
    certify=False,
    eigenvalue_rtol=False,
    fallback=True,
):
    """LOBPCG on ``A``: a dense ``(*, N, N)`` tensor (dense eigh instead when the block
    would not be small), or a function ``Y -> A @ Y`` with ``like`` a ``(*, N)`` tensor
    giving the batch shape, dtype and device (then ``scale`` is required). ``start``:
    ``(*, N, s)`` guesses of the wanted vectors, the first columns of the initial block;
    ``block``: the block size (default :func:`default_block`); ``certify``,
    ``eigenvalue_rtol``: as :func:`lobpcg`. Matrices it does not converge on are solved
    densely (``A`` materialized up to :data:`MAX_FALLBACK_N`) unless ``fallback=False``
    (sparse operators, which are never formed); ``on_fail``: ``'warn'`` or ``'raise'``
    about them, or ``'defer'`` to raise :class:`Unconverged` without solving them."""
    dense = not callable(A)
    like = A[..., 0] if dense else like
    n = like.shape[-1]
    check_not_meta(like, "LOBPCG")
    if like.numel() == 0:  # an empty batch
        theta, X = like.new_zeros(*like.shape[:-1], k), like.new_zeros(*like.shape, k)
        return theta, X, LobpcgInfo(iterations=0, max_residual=0.0, converged=True)
    r = 0 if constraints is None else constraints.shape[-1]
    m = default_block(k, n - r) if block is None else min(block, n - r)
    if n - r <= DENSE_BELOW * m:
        # The iteration would cost about as much as a dense solve, and Rayleigh-Ritz on a
        # basis that nearly spans the space is fragile (a 26 x 26 matrix diverged).
        lam, V = dense_pairs(materialize(A, like), k, largest, constraints)
        return lam, V, LobpcgInfo(iterations=0, max_residual=0.0, converged=True)
    if start is not None:
        start = start[..., : m - 1]  # at least one random column
    X0 = initial_block(
        (*like.shape, m), like.dtype, like.device, start=start, constraints=constraints
    )
    if scale is None:  # Gershgorin: an upper bound of |A|_2, so tol is relative to A
        scale = spectral_bound(A)
    theta, X, info = lobpcg(
        BatchedOperator(matrix_times, Symmetric(A), batch_shape=A.shape[:-2]) if dense else A,
        X0,
        k,
        largest=largest,
        constraints=constraints,
        tol=tol,
        max_iter=max_iter,
        scale=scale,
        preconditioner=preconditioner,
        certify=certify,
        eigenvalue_rtol=eigenvalue_rtol,
    )
    failed = info.failed
    if bool(failed.any()):
        count, total = int(failed.sum()), failed.numel()
        msg = (
            f"LOBPCG did not converge on {count} of {total} matrices in {info.iterations} "
            f"iterations (largest relative residual {info.max_residual:.2e} > tol, or Ritz "
            "values outside the spectrum's bounds)"
        )
        if on_fail == "defer":
            raise Unconverged(msg)
        if fallback and (dense or n <= MAX_FALLBACK_N):
            Ad = A[failed] if dense else materialize(A, like)[failed]
            C = None if constraints is None else constraints[failed]
            lam, V = dense_pairs(Ad, k, largest, C)
            theta, X = theta.clone(), X.clone()
            theta[failed], X[failed] = lam.to(theta.dtype), V.to(X.dtype)
            info.fallbacks = count
            msg += "; those were solved densely (torch.linalg.eigh), so the results are exact."
        elif fallback:
            msg += ". Raise max_iter or tol, or use method='dense'."
        else:
            msg += "; the returned pairs are its last iterate. Raise max_iter or tol."
        report_failure(msg, on_fail, stacklevel=4)
    return theta, X, info


class Unconverged(RuntimeError):
    """LOBPCG stopped short on some matrices, with ``on_fail='defer'`` (the caller
    decides: ``method='auto'`` solves them densely instead)."""
