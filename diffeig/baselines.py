"""The pseudo-inverse eigenvector gradient (Magnus & Neudecker; the DNCut paper's Eqn. 7).

The baseline that ``diffeig.sym_eigh_ncut``'s backward replaces:
``dv_k = (l_k I - A)^+ dA v_k``, so ``gA = sym((l_k I - A)^+ g_k v_k^T)``: one N x N
pseudo-inverse (an SVD) per used eigenvector per matrix, O(N^3) each. Kept for the
timing table (``benchmarks/backward_timing.py``) and as an independent check, in two
variants: as the paper runs it (an SVD pseudo-inverse for every returned eigenvector),
and its strongest form (``hermitian=True``: an eigh, about 4x cheaper on symmetric
matrices; ``used_only=True``: only the eigenvectors whose cotangent is not zero).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffeig import _reference
from diffeig._checks import check_affinity, check_columns, check_k, check_ncut_options
from diffeig._implicit.ncut import ncut_grad_inputs
from diffeig.ncut._dense import ncut_forward

__all__ = ["pinv_eigh_backward", "sym_eigh_ncut_pinv"]


def pinv_eigh_backward(
    A: torch.Tensor,
    eigenvalues: torch.Tensor,
    eigenvectors: torch.Tensor,
    grad_eigenvectors: torch.Tensor,
    indices: Sequence[int],
    *,
    hermitian: bool = False,
) -> torch.Tensor:
    """``gA = sum_t sym((l_t I - A)^+ g_t v_t^T)`` over the eigenvectors ``indices``.

    Args:
        A: ``(*, N, N)`` symmetric matrices.
        eigenvalues: ``(*, N)`` all eigenvalues of ``A``.
        eigenvectors: ``(*, N, N)`` all eigenvectors (columns).
        grad_eigenvectors: ``(*, N, m)`` cotangents of the ``m`` eigenvectors ``indices``.
        indices: which eigenvectors the cotangents belong to.
        hermitian: use ``torch.linalg.pinv(..., hermitian=True)`` (an eigh) instead of the
            SVD the paper's formula implies.

    Returns:
        ``(*, N, N)`` symmetric gradient w.r.t. ``A``.
    """
    indices = list(indices)
    check_columns(grad_eigenvectors, indices)
    n = A.shape[-1]
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    gA = torch.zeros_like(A)
    for t, idx in enumerate(indices):
        shifted = eigenvalues[..., idx, None, None] * eye - A
        pinv = torch.linalg.pinv(shifted, hermitian=hermitian)
        g = grad_eigenvectors[..., t : t + 1]
        v = eigenvectors[..., idx : idx + 1]
        gA = gA + (pinv @ g) @ v.mT
    return 0.5 * (gA + gA.mT)


class _NCutPinv(torch.autograd.Function):
    """``sym_eigh_ncut`` with the pseudo-inverse backward (same forward, same numbers)."""

    @staticmethod
    def forward(W, k, normalized, sign, hermitian, used_only):
        return ncut_forward(W, k, normalized, sign)

    @staticmethod
    def setup_context(ctx, inputs, output):
        W, k, normalized, _, hermitian, used_only = inputs
        _, _, lam, V, d = output
        ctx.mark_non_differentiable(lam, V, d)
        ctx.save_for_backward(W, lam, V, d)
        ctx.args = (k, normalized, hermitian, used_only)
        ctx.set_materialize_grads(False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_lam, grad_Z, *_):
        W, lam, V, d = ctx.saved_tensors
        k, normalized, hermitian, used_only = ctx.args
        Vk = V[..., :k]
        grad_U, grad_d = ncut_grad_inputs(grad_lam, grad_Z, V, d, k, normalized)
        L = _reference.laplacian(W, normalized)[0]
        used = list(range(k))
        if used_only:  # the columns whose cotangent is not zero in some matrix
            used = (grad_U != 0).flatten(0, -3).any(0).any(0).nonzero().flatten().tolist()
        gL = pinv_eigh_backward(L, lam, V, grad_U[..., used], used, hermitian=hermitian)
        if grad_lam is not None:
            gL = gL + (Vk * grad_lam.unsqueeze(-2)) @ Vk.mT
        G = _reference.laplacian_backward(gL, grad_d, W, d, normalized)
        return 0.5 * (G + G.mT), None, None, None, None, None


def sym_eigh_ncut_pinv(
    W: torch.Tensor,
    k: int = 2,
    *,
    laplacian: str = "ncut",
    sign: str | None = "max",
    hermitian: bool = False,
    used_only: bool = False,
):
    """:func:`diffeig.sym_eigh_ncut` whose backward is the pseudo-inverse formula.

    Same forward and outputs; the backward runs one pseudo-inverse per returned
    eigenvector (the generic Eqn. 7 cannot know which ones the loss uses), or with
    ``used_only`` only per eigenvector whose cotangent is not zero, then the chain rule
    through the degrees. ``hermitian``: an eigh-based pseudo-inverse instead of the SVD.
    The defaults are the paper's variant; ``hermitian=True, used_only=True`` the
    strongest. For benchmarks and cross-checks.
    """
    check_ncut_options(laplacian, sign)
    normalized = laplacian == "ncut"
    check_affinity(W, normalized=normalized)
    check_k(k, W.shape[-1])
    lam, Z, *_ = _NCutPinv.apply(W, k, normalized, sign, hermitian, used_only)
    return lam, Z
