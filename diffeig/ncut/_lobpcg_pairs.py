"""The LOBPCG path of the iterative NCut: the k smallest pairs of ``L`` given as products
(``X -> L X``, L never formed) by LOBPCG (Knyazev 2001) with the trivial pair deflated
exactly (Shi & Malik 2000's ``D^1/2 1``), a certified gap where ``method='auto'`` asks
for one, and a warning where the k-th pair is not resolved from the next."""

from __future__ import annotations

import warnings

import torch

from diffeig._checks import values_readable
from diffeig._lobpcg import Unconverged, default_block, run_lobpcg
from diffeig._operators import BatchedOperator
from diffeig._tolerances import NCUT_BLOCK, UNRESOLVED
from diffeig.ncut import _common
from diffeig.ncut._choice import TiedSpectrum, auto_budget

__all__ = [
    "UnresolvedPair",
    "lobpcg_ncut_pairs",
    "signed_pairs",
    "warn_unresolved_boundary",
]


def _scale_rows(R, s):
    return R * s


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
    return signed_pairs(lam, U, d, normalized, sign)


class UnresolvedPair(RuntimeWarning):
    """The k-th pair LOBPCG returned is not resolved from the next one."""


def warn_unresolved_boundary(theta: torch.Tensor, info, dense: bool = True) -> None:
    """Warn (:class:`UnresolvedPair`) where the k-th returned vector's error bound
    ``r_k / (theta_{k+1} - theta_k)`` (residual over the gap to the first guard's Ritz
    value) exceeds :data:`UNRESOLVED`. The guard's Ritz value lies above the (k+1)-th
    eigenvalue, so the gap is an upper bound and a large ratio proves the k-th and (k+1)-th
    pairs (near) tied at the solver's tolerance: the vector is then any of their span and,
    where they are not exactly tied, its eigenvalue too. ``dense``: whether the dense
    solve is a way out (not for a sparse W)."""
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


def signed_pairs(lam, U, d, normalized, sign):
    """``(lam, U, Z)`` with each vector's sign set by ``sign`` and ``Z`` the returned
    vectors (``D^-1/2 U`` for the normalized cut)."""
    dis = d.rsqrt() if normalized else None
    U = U * _common.sign_flips(U * dis.unsqueeze(-1) if normalized else U, sign)
    Z = U * dis.unsqueeze(-1) if normalized else U.clone()
    return lam, U, Z
