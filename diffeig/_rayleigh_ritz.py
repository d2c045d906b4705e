"""The small dense steps of a LOBPCG iteration (Knyazev 2001, sec. 4): Rayleigh-Ritz on
a whitened basis, Cholesky orthonormalization, and column norms safe for zero columns.
Batched over matrices; each works on ``(*, N, s)`` bases with ``s`` a few block sizes."""

from __future__ import annotations

import torch

__all__ = ["orthonormalize", "rayleigh_ritz", "safe_norm"]


def safe_norm(Y):
    """Column norms, with 1 for (numerically) zero columns so that they stay zero."""
    n = Y.norm(dim=-2, keepdim=True)
    return torch.where(n > torch.finfo(Y.dtype).eps * n.amax(-1, keepdim=True).clamp_min(1), n, 1)


def orthonormalize(X):
    """``X L^-T`` with ``L L^T = X^T X`` (Cholesky): orthonormal columns spanning X. A
    matrix whose factorization fails keeps its X."""
    L, info = torch.linalg.cholesky_ex(X.mT @ X)
    ok = (info == 0)[..., None, None]
    L = torch.where(ok, L, torch.eye(L.shape[-1], dtype=L.dtype, device=L.device))
    return torch.where(ok, torch.linalg.solve_triangular(L, X.mT, upper=False).mT, X)


def rayleigh_ritz(S, AS, m):
    """The m smallest Ritz pairs of ``A`` on the basis ``S`` (``AS = A S``), batched.

    The Gram matrix of the raw basis is whitened through its eigendecomposition, so that
    directions which became linearly dependent are dropped per matrix by a mask. Returns
    ``(theta (*, m), C (*, s, m), ill (*))``: the Ritz values, the coefficients of the
    Ritz vectors ``S C``, and whether the basis was ill-conditioned.
    """
    dtype = S.dtype
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
