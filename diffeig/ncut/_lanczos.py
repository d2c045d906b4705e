"""The Lanczos path of the iterative NCut: one graph's Fiedler pair by Lanczos (Paige
1972; Parlett, *The Symmetric Eigenvalue Problem*, ch. 13) with full
reorthogonalization, the whole iteration in one native call, handed to LOBPCG where it
does not converge or where a near-tied pair could hide in its residual."""

from __future__ import annotations

import torch

from diffeig import _ops
from diffeig._implicit import laplacian_operator
from diffeig._tolerances import LANCZOS_MAX_STEPS, LANCZOS_NOISE, default_tol, stall_floor
from diffeig.ncut import _common
from diffeig.ncut._lobpcg_pairs import lobpcg_ncut_pairs, signed_pairs

__all__ = ["fiedler_resolved", "lanczos_ncut_pairs"]


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
    x, info = _ops.ncut_lanczos(W, d.rsqrt(), u1[..., 0], v0, tol, stall_floor(tol), steps)
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
    return signed_pairs(lam, torch.cat([u1, x.unsqueeze(-1)], -1), d, True, sign)
