"""The iterative NCut: the k smallest pairs by LOBPCG with the trivial pair deflated
exactly (one graph's Fiedler pair by Lanczos), backward by shifted conjugate-gradient
solves, and the ``auto`` rule that picks between it and the dense solve."""

from __future__ import annotations

import torch

from diffeig import _ops
from diffeig._checks import check_solver_options, values_readable
from diffeig._eigsh import auto_method
from diffeig._implicit import partial_eigh_factor
from diffeig._lobpcg import (
    DENSE_BELOW,
    BatchedOperator,
    Symmetric,
    Unconverged,
    default_block,
    default_tol,
    resolved_gap_rtol,
    run_lobpcg,
)
from diffeig.ncut import _common

__all__ = [
    "TiedSpectrum",
    "choose_method",
    "laplacian_operator",
    "lanczos_ncut_pairs",
    "lobpcg_ncut_factors",
    "lobpcg_ncut_pairs",
    "uses_lanczos",
    "solve_lobpcg",
]


def choose_method(method: str, W: torch.Tensor, k: int) -> tuple[str, float | None]:
    """``'dense'`` or ``'lobpcg'`` for ``method``, and the tie tolerance that makes
    ``'auto'`` fall back to the dense solve (``None`` unless ``method='auto'``).

    ``'auto'`` takes the faster solver for this device, N and k (the trivial pair is
    deflated exactly: LOBPCG iterates on k - 1 pairs), and returns what ``'dense'``
    returns: where the k-th eigenvalue ties the next (to ``sqrt(eps)`` of the spectrum's
    bound) the k-th vector is any of a subspace, and LAPACK's choice is the answer (the
    binary graph of an all-similar image)."""
    if method != "auto":
        return method, None
    return auto_method(W.shape[-1], k - 1, W.device), torch.finfo(W.dtype).eps ** 0.5


def _scale_rows(R, s):
    return R * s


# LOBPCG's block for the NCut in float64 by the number of pairs it iterates on (others,
# and float32: the default, diffeig._eigsh.default_block). With the one Fiedler pair of
# k = 2, one guard vector (block 2) beats the default five: each iteration costs half as
# much and takes 9.6 instead of 8.7 iterations per graph (N = 196, batch 256; N = 784:
# 11.1 and 9.8, random starts). The price is accuracy at the same residual: z2's error is
# the residual over l3 - l2 rather than over l7 - l2 (the guards' Ritz vectors take the
# eigenvectors between out of it). In float64 that leaves the recipe's gradients within
# 4.2e-7 of the dense path's on the hardest graphs tried (2.6e-8 with block 5; pass
# tol=1e-10 for 1.4e-8 at about 10 % more time); in float32, whose tolerance is 7e-5, it
# would cost a factor of ten (1.7e-2), so float32 keeps the default block.
NCUT_BLOCK = {torch.float64: {1: 2}}


def _certified(theta, info, tie) -> bool:
    """Whether every gap between consecutive returned eigenvalues, and the gap to the next
    one, is resolved: larger than ``tie`` plus both Ritz values' residual bounds (each lies
    within its residual of an eigenvalue), with the next one's Ritz pair converged enough
    to bound it (``LobpcgInfo.certified``). Only then is each returned vector the unique
    one the dense solve returns."""
    if info.next_eigenvalue is None or not bool(info.certified.all()):
        return False
    th = torch.cat([theta, info.next_eigenvalue.unsqueeze(-1)], -1)
    r = info.residuals[..., : th.shape[-1]]
    gaps = th[..., 1:] - th[..., :-1]
    return bool((gaps > tie.unsqueeze(-1) + r[..., 1:] + r[..., :-1]).all())


def _block(d, iterated: int, certify: bool) -> int | None:
    """LOBPCG's block for ``iterated`` pairs (None: the default). To certify the gap after
    them, the block holds at least ``iterated + 1`` random columns besides the degree
    start: the start can be orthogonal to a whole tied eigenspace (on a symmetric grid it
    is), and a block whose random part has fewer columns than the eigenspace's dimension
    can only ever hold as many of its directions (the tied partner of z2 was skipped)."""
    block = NCUT_BLOCK.get(d.dtype, {}).get(iterated)
    if certify:
        block = max(block or default_block(iterated, d.shape[-1]), iterated + 2)
    return block


class TiedSpectrum(Exception):
    """Raised (and caught) inside ``method="auto"``: the k-th eigenvalue ties the next, or
    LOBPCG would cost more than the dense solve; auto then solves densely."""


# auto's LOBPCG stops after this many iterations, or one per AUTO_NODES_PER_ITERATION nodes
# if more, and hands the graphs to the dense solve: certified runs of the recipe's graphs
# take 8 - 16, and a LOBPCG iteration costs about a dense solve's N / 8-th part or less
# (four clusters of 60 nodes joined by 1e-11 took 754 iterations, 1.7 s, where the dense
# solve takes 0.01 s).
AUTO_MIN_ITERATIONS = 40
AUTO_NODES_PER_ITERATION = 8


def auto_budget(n: int) -> int:
    """The iterations ``method='auto'`` gives LOBPCG on graphs of ``n`` nodes."""
    return max(AUTO_MIN_ITERATIONS, n // AUTO_NODES_PER_ITERATION)


def lobpcg_ncut_pairs(
    L,
    d,
    k,
    normalized,
    sign,
    tol,
    max_iter,
    on_fail,
    tie_rtol=None,
    preconditioner=None,
    block=None,
    start=None,
    fallback=True,
):
    """The k smallest NCut pairs by LOBPCG: ``(lam, U, Z)``, U the symmetric problem's.

    ``L`` is the Laplacian as a tensor or a function ``X -> L @ X``; ``d`` the degrees;
    ``preconditioner``: ``R -> T R`` with ``T ~ L^+`` (default: Jacobi for ``D - W``,
    none for the normalized Laplacian, whose diagonal is 1); ``block``: LOBPCG's block
    (default: :data:`NCUT_BLOCK`, else :func:`diffeig._lobpcg.default_block`);
    ``start``: ``(*, N, s)`` guesses of the vectors (default: the degrees).
    ``tie_rtol``: raise :class:`TiedSpectrum` where the (k+1)-th eigenvalue's bound lies
    within ``tie_rtol`` of the spectrum's bound above the k-th (the k-th vector is then not
    unique, and which one a solver returns is its rounding), or where LOBPCG has not
    converged within :func:`auto_budget` iterations (the dense solve is then cheaper).
    ``fallback``: as :func:`diffeig._lobpcg.run_lobpcg`.
    """
    # The trivial pair is known exactly: l = 0 with u = D^1/2 1 (normalized) or 1.
    u1 = _common.trivial_vector(d, normalized)
    if k == 1:
        lam, U = torch.zeros_like(d[..., :1]), u1
    else:
        # Gershgorin bounds |L|: 2 for the normalized Laplacian, 2 max(d) for D - W, whose
        # diagonal D makes Jacobi preconditioning undo the spread of the degrees.
        scale = _common.ncut_spectral_bound(d, normalized)
        # max(d) / d: Jacobi up to a factor, O(1) at any scale of W; isolated nodes
        # (d = 0, possible for D - W) are left unpreconditioned.
        precond = preconditioner
        if precond is None and not normalized:
            dmax = d.amax(-1, keepdim=True)
            dinv = torch.where(d > 0, dmax / torch.where(d > 0, d, 1), 1).unsqueeze(-1)
            precond = BatchedOperator(_scale_rows, dinv, batch_shape=d.shape[:-1])
        auto = tie_rtol is not None
        try:
            theta, X, info = run_lobpcg(
                L,
                k - 1,
                largest=False,
                constraints=u1,
                tol=tol,
                max_iter=min(max_iter, auto_budget(d.shape[-1])) if auto else max_iter,
                on_fail="defer" if auto else on_fail,
                scale=scale,
                preconditioner=precond,
                like=d,
                # The degrees start the search: on graphs with clusters of unequal size they
                # differ between the clusters, as z2 does (iterations per graph on the
                # recipe's graphs: 11.1 -> 7.9 at N = 784).
                start=d.unsqueeze(-1) if start is None else start,
                block=block or _block(d, k - 1, certify=auto),
                certify=auto,
                # z2 of a near-disconnected graph: l2 relative to itself, not only to the bound
                eigenvalue_rtol=True,
                fallback=fallback,
            )
        except Unconverged:
            raise TiedSpectrum from None
        if (
            tie_rtol is not None
            and info.residuals is not None
            and not _certified(theta, info, tie_rtol * scale)
        ):
            raise TiedSpectrum
        if not auto and info.converged:  # an unconverged solve has said so already
            warn_unresolved_boundary(theta, info, dense=fallback)
        lam = torch.cat([torch.zeros_like(theta[..., :1]), theta], -1)
        U = torch.cat([u1, X], -1)
    return _signed_pairs(lam, U, d, normalized, sign)


class UnresolvedPair(RuntimeWarning):
    """The k-th pair LOBPCG returned is not resolved from the next one."""


# Warn where the k-th vector's error bound (its residual over the gap to the next Ritz
# value) exceeds this: a boundary tie 3e-10 wide left l2 1.4e-2 off, silently. The bound
# is pessimistic (a 2e-11 gap with 1e-12 residuals gave a vector 6e-6 off, bound 1e-2), so
# only what is likely wrong by a tenth is said.
UNRESOLVED = 0.1


def warn_unresolved_boundary(theta: torch.Tensor, info, dense: bool = True) -> None:
    """Warn (:class:`UnresolvedPair`) where the k-th returned vector's error bound
    ``r_k / (theta_{k+1} - theta_k)`` (residual over the gap to the first guard's Ritz
    value) exceeds :data:`UNRESOLVED`. The guard's Ritz value lies above the (k+1)-th
    eigenvalue, so the gap is an upper bound and a large ratio proves the k-th and (k+1)-th
    pairs (near) tied at the solver's tolerance: the vector is then any of their span and,
    where they are not exactly tied, its eigenvalue too. ``dense``: whether the dense
    solve is a way out (not for a sparse W)."""
    import warnings

    nxt, res = info.next_eigenvalue, info.residuals
    if nxt is None or res is None or not values_readable(theta) or theta.shape[-1] == 0:
        return
    k = theta.shape[-1]
    gap = (nxt - theta[..., -1]).clamp_min(torch.finfo(theta.dtype).tiny)
    bound = res[..., k - 1] / gap
    worst = float(bound.amax()) if bound.numel() else 0.0
    if worst > UNRESOLVED:
        warnings.warn(
            f"sym_eigh_ncut: the k-th eigenpair is not resolved from the (k+1)-th at this "
            f"tolerance (residual over gap {worst:.1e}): its vector is any of their span. Pass "
            + (
                "a smaller tol, method='dense', or method='auto' (which solves such graphs densely)"
                if dense
                else "a smaller tol, or ask for k + 1 pairs"
            ),
            UnresolvedPair,
            stacklevel=5,
        )


def _signed_pairs(lam, U, d, normalized, sign):
    """``(lam, U, Z)`` with each vector's sign set by ``sign`` and ``Z`` the returned
    vectors (``D^-1/2 U`` for the normalized cut)."""
    dis = d.rsqrt() if normalized else None
    U = U * _common.sign_flips(U * dis.unsqueeze(-1) if normalized else U, sign)
    Z = U * dis.unsqueeze(-1) if normalized else U.clone()
    return lam, U, Z


# Most Lanczos steps (vectors kept) before the Fiedler pair falls back to LOBPCG: the
# hardest token graphs measured took 50 (i.i.d. features, N = 3,600).
LANCZOS_MAX_STEPS = 256
# The start's random part, relative to the degrees' part (both unit vectors): enough to
# give every eigenvector a share of the start (an island's pair that the degrees miss).
LANCZOS_NOISE = 0.1


def fiedler_resolved(l2: float, residual: float, tol: float) -> bool:
    """Whether one Krylov vector's Fiedler value is certain to ``sqrt(tol)`` of itself.

    Lanczos from one start vector cannot separate l2 from an eigenvalue closer to it than
    its residual (three clusters joined by 1e-9, two of them near mirror images: l2 and l3
    0.3 % apart): its Ritz vector is then a mix of both, its Ritz value between them, and
    its next Ritz value far away, so its own stopping rule passes (l2 came back 1.4 % off
    and z2 at sin 0.95). The Ritz value lies within the residual of an eigenvalue whatever
    hides near it, so a residual below ``sqrt(tol) l2`` bounds l2's error; above it (l2
    itself near the residual: near-disconnected graphs) the pair is handed to LOBPCG,
    whose block of random columns sees every direction of a near-tied pair."""
    return residual <= tol**0.5 * l2


def uses_lanczos(W: torch.Tensor, k: int, normalized: bool, tie_rtol) -> bool:
    """Whether the Fiedler pair of one graph is found by Lanczos
    (:func:`lanczos_ncut_pairs`) rather than LOBPCG: one dense graph (no batch), the
    normalized cut, k = 2, no certified gap asked for (``method='lobpcg'``; ``'auto'``
    certifies the gap above l2, which a single Krylov vector cannot), and N past five
    times LOBPCG's default block (27 nodes and more; smaller graphs keep LOBPCG's path,
    which solves them densely below its own cut-off)."""
    n = W.shape[-1]
    return (
        W.dim() == 2
        and k == 2
        and normalized
        and tie_rtol is None
        and n - 1 > DENSE_BELOW * default_block(1, n - 1)
    )


def lanczos_ncut_pairs(W, d, sign, tol, max_iter, on_fail, max_steps=LANCZOS_MAX_STEPS):
    """The trivial and the Fiedler pair of one graph's normalized cut, ``(lam, U, Z)`` as
    :func:`lobpcg_ncut_pairs`, by Lanczos on ``D^-1/2 W D^-1/2`` (largest, with the
    trivial vector ``D^1/2 1`` deflated exactly): one product ``W @ v`` a step, the
    whole iteration in one native call (``diffeig::ncut_lanczos``).

    Started from the degrees (which differ between clusters, as z2 does) plus a seeded
    random part; stopped by LOBPCG's rule for ``eigenvalue_rtol`` (residual within
    ``tol`` of the bound 2, and l2 within ``tol`` of itself). Where it has not converged
    in ``max_steps`` steps (and ``max_iter``), or where its l2 is so small that a near-tied pair
    could hide in its residual (:func:`fiedler_resolved`), LOBPCG takes over from its
    Ritz vector."""
    tol = default_tol(d.dtype) if tol is None else tol
    u1 = _common.trivial_vector(d, True)
    g = torch.Generator(device="cpu").manual_seed(0)
    noise = torch.randn(d.shape[-1], generator=g, dtype=d.dtype).to(d.device)
    v0 = d / d.norm() + LANCZOS_NOISE * noise / noise.norm()
    steps = min(max_steps, max_iter)
    x, info = _ops.ncut_lanczos(W, d.rsqrt(), u1[..., 0], v0, tol, steps)
    theta, _, res, _, converged = info.tolist()
    if not converged:
        lap = laplacian_operator(W, d, True)
        start = x.unsqueeze(-1)
        return lobpcg_ncut_pairs(lap, d, 2, True, sign, tol, max_iter, on_fail, start=start)
    if not fiedler_resolved(1 - theta, res, tol):
        # LOBPCG as for a batch, not from the Ritz vector: started there, the mix of a
        # near-tied pair passes its test at once (its guard sees no close eigenvalue yet)
        lap = laplacian_operator(W, d, True)
        return lobpcg_ncut_pairs(lap, d, 2, True, sign, tol, max_iter, on_fail)
    lam = torch.tensor([0.0, 1 - theta], dtype=d.dtype, device=d.device)
    return _signed_pairs(lam, torch.cat([u1, x.unsqueeze(-1)], -1), d, True, sign)


def lobpcg_ncut_factors(
    L,
    d,
    lam,
    U,
    grad_lam,
    grad_Z,
    normalized,
    gaps,
    cg_tol,
    max_iter,
    on_fail="warn",
    preconditioner=None,
):
    """``(P, c, g)`` with ``dL/dW = -c c^T o sym(P U^T) + sym(g 1^T)`` (symmetric part),
    i.e. ``ncut_grad_assemble(P, U, c, g)``, from the k pairs alone (shifted solves,
    preconditioned by ``preconditioner`` ``~ L^+`` where given, else Jacobi for D - W)."""
    apply = L if callable(L) else (lambda Y: L @ Y)
    k = U.shape[-1]
    true_lam = lam
    grad_lam = torch.zeros_like(lam) if grad_lam is None else grad_lam
    grad_Z = torch.zeros_like(U) if grad_Z is None else grad_Z
    grad_lam, grad_Z, gd = _common.trivial_pair_cotangents(grad_lam, grad_Z, U, d, normalized)
    lam = _common.far_trivial(lam)
    grad_U, grad_d = _common.ncut_grad_inputs(grad_lam, grad_Z, U, d, k, normalized)
    # dL/dL_sym = sym(P U^T), never formed.
    # D - W: Jacobi-preconditioned solves (its diagonal ~ D spreads with the degrees).
    P = partial_eigh_factor(
        L,
        lam,
        U,
        grad_lam,
        grad_U,
        *gaps,
        cg_tol=cg_tol,
        cg_max_iter=max_iter,
        diagonal=None if normalized or preconditioner is not None else d,
        gap_scale=_common.ncut_spectral_bound(d, normalized),
        on_fail=on_fail,
        preconditioner=preconditioner,
    )
    if not normalized:
        return P, torch.ones_like(d), (P * U).sum(-1)
    # sum_j gL_ij W_ij dis_j from dis_i W_ij dis_j = delta_ij - L_ij, L U = U diag(l) and
    # one product L P: s_i = (P_i . U_i (1 - l) + U_i . (P - L P)_i) / dis_i.
    dis = d.rsqrt()
    s = ((P * U * (1 - true_lam.unsqueeze(-2))).sum(-1) + (U * (P - apply(P))).sum(-1)) / dis
    return P, dis, grad_d + 0.5 * dis**3 * s + gd


def _normalized_laplacian(X, W, dis):
    return X - dis * (W(dis * X) if callable(W) else W @ (dis * X))


def _unnormalized_laplacian(X, W, d):
    return d * X - (W(X) if callable(W) else W @ X)


def laplacian_operator(W, d: torch.Tensor, normalized: bool):
    """``X -> L @ X`` from ``W`` (a tensor, or a function ``X -> W @ X``) and its degrees,
    without forming ``L``: one product with W per application. For a tensor W it is a
    :class:`diffeig._lobpcg.BatchedOperator`, which the solvers restrict to the matrices
    still iterating."""
    if normalized:
        fn, vec = _normalized_laplacian, d.rsqrt().unsqueeze(-1)
    else:
        fn, vec = _unnormalized_laplacian, d.unsqueeze(-1)
    if callable(W):
        return lambda X: fn(X, W, vec)
    return BatchedOperator(fn, Symmetric(W), vec, batch_shape=d.shape[:-1])


class _NCutLobpcg(torch.autograd.Function):
    """The k smallest NCut pairs by LOBPCG on ``X -> L @ X`` (L never formed); backward
    by shifted solves through the same products with W."""

    # forward / setup_context / vmap: so that torch.func.vmap (and grad) apply. The
    # degrees and orthonormal vectors the backward needs are returned as extra,
    # non-differentiable outputs (the public function drops them).

    @staticmethod
    def forward(W, k, normalized, sign, gaps, solver):
        tol, max_iter, on_fail, cg_tol, tie_rtol = solver
        # W is symmetric (checked); the backward returns the symmetric gradient.
        d = W.sum(-1)
        if uses_lanczos(W, k, normalized, tie_rtol):
            lam, U, Z = lanczos_ncut_pairs(W, d, sign, tol, max_iter, on_fail)
        else:
            lap = laplacian_operator(W, d, normalized)
            lam, U, Z = lobpcg_ncut_pairs(
                lap, d, k, normalized, sign, tol, max_iter, on_fail, tie_rtol
            )
        lam = _common.refine_small_eigenvalues(lam, Z, W, d, normalized)
        return lam, Z, d, U

    @staticmethod
    def setup_context(ctx, inputs, output):
        W, _, normalized, _, gaps, solver = inputs
        lam, _, d, U = output
        ctx.mark_non_differentiable(d, U)
        ctx.save_for_backward(W, d, lam, U)
        ctx.args = (normalized, gaps, solver[3], solver[1], solver[2])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_lam, grad_Z, *_):
        W, d, lam, U = ctx.saved_tensors
        if grad_lam is None and grad_Z is None:
            return None, None, None, None, None, None
        if grad_lam is None:
            grad_lam = torch.zeros_like(lam)
        if grad_Z is None:
            grad_Z = torch.zeros_like(U)
        gW = _NCutLobpcgGrad.apply(W.detach(), d, lam, U, grad_lam, grad_Z, ctx.args)
        return gW, None, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, W, k, normalized, sign, gaps, solver):
        # The solver is batched already: move the mapped dimension to the front.
        out = _NCutLobpcg.apply(W.movedim(in_dims[0], 0), k, normalized, sign, gaps, solver)
        return out, (0, 0, 0, 0)


class _NCutLobpcgGrad(torch.autograd.Function):
    """dL/dW of :class:`_NCutLobpcg` (shifted CG solves with data-dependent stopping),
    as a function with its own vmap rule, so that ``vmap(grad(f))`` runs it batched."""

    @staticmethod
    def forward(W, d, lam, U, grad_lam, grad_Z, args):
        _common.warn_ill_conditioned(lam, d, args[0], args[1][0])
        lap = laplacian_operator(W, d, args[0])
        P, c, g = lobpcg_ncut_factors(lap, d, lam, U, grad_lam, grad_Z, *args)
        return _ops.ncut_grad_assemble(P, U, c, g)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("sym_eigh_ncut(method='lobpcg') does not support double backward")

    @staticmethod
    def vmap(info, in_dims, W, d, lam, U, grad_lam, grad_Z, args):
        tensors = _ops._batched_first(info, in_dims[:6], (W, d, lam, U, grad_lam, grad_Z))
        return _NCutLobpcgGrad.apply(*tensors, args), 0


def solve_lobpcg(W, k, normalized, sign, gap_rtol, gap_atol, tol, max_iter, on_fail, tie_rtol=None):
    """``(eigenvalues, eigenvectors)`` by LOBPCG on ``X -> L @ X``; ``tie_rtol`` as
    :func:`lobpcg_ncut_pairs` (raises :class:`TiedSpectrum`)."""
    check_solver_options(tol, max_iter, on_fail)
    cg_tol = default_tol(W.dtype) if tol is None else tol
    gap_rtol = resolved_gap_rtol(gap_rtol, tol, W.dtype)
    lam, Z, *_ = _NCutLobpcg.apply(
        W, k, normalized, sign, (gap_rtol, gap_atol), (tol, max_iter, on_fail, cg_tol, tie_rtol)
    )
    return lam, Z
