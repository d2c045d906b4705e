"""The dense NCut solve: one ``torch.linalg.eigh`` of the Laplacian, and the O(N^2 k)
backward that re-uses its eigenvectors (the DNCut paper's Eqn. 8, fused kernels)."""

from __future__ import annotations

import torch

from diffeig import _ops
from diffeig._implicit.ncut import (
    far_trivial,
    sym_outer_sum,
    trivial_pair_cotangents,
    warn_ill_conditioned,
)
from diffeig._reference import torch_eigh
from diffeig.ncut import _common

__all__ = ["ncut_forward", "solve_dense"]


def ncut_forward(W, k: int, normalized: bool, sign: str | None):
    """Shared by the O(N^2 k) and the pseudo-inverse variants: the same numbers."""
    L, d = _ops.laplacian(W, normalized)
    # The trivial pair is exact (l1 = 0, u1 = D^1/2 1 or 1, normalized): it is shifted to
    # the top of the spectrum (sigma = 2 bound + 1 > 2 l_max), so the other vectors come
    # out orthogonal to it even where l2 ~ 0 (a near-disconnected graph), instead of
    # LAPACK's rotation of the two near-zero pairs.
    u1 = _common.trivial_vector(d, normalized)
    sigma = 2 * _common.ncut_spectral_bound(d, normalized) + 1
    v = u1 * sigma.sqrt()[..., None, None]
    v = v.reshape(-1, *v.shape[-2:])
    L = torch.baddbmm(L.reshape(-1, *L.shape[-2:]), v, v.mT).reshape(L.shape)
    lam, V = torch_eigh(L)
    lam = torch.cat([torch.zeros_like(lam[..., :1]), lam[..., :-1]], -1)
    V = torch.cat([u1, V[..., :-1]], -1)
    Vk = V[..., :k]
    dis = d.rsqrt() if normalized else None
    s = _common.sign_flips(Vk * dis.unsqueeze(-1) if normalized else Vk, sign)
    # Flip the columns of V itself, so that the backward sees one consistent basis.
    Vk.mul_(s)
    Z = Vk * dis.unsqueeze(-1) if normalized else Vk.clone()
    lam_k = _common.refine_small_eigenvalues(lam[..., :k], Z, W, d, normalized)
    if lam_k is not lam[..., :k]:  # the backward's gaps see the refined values too
        lam = torch.cat([lam_k, lam[..., k:]], -1)
    return lam[..., :k].clone(), Z, lam, V, d


class _NCut(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(W, k, normalized, sign, gap_rtol, gap_atol):
        return ncut_forward(W, k, normalized, sign)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, k, normalized, _, gap_rtol, gap_atol = inputs
        _, _, lam, V, d = output
        ctx.mark_non_differentiable(lam, V, d)
        ctx.save_for_backward(lam, V, d)
        ctx.args = (k, normalized, gap_rtol, gap_atol)
        # The non-differentiable outputs (full spectrum, degrees) never get a cotangent:
        # don't let autograd fill an N x N zero tensor for them.
        ctx.set_materialize_grads(False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_lam, grad_Z, *_):
        lam, V, d = ctx.saved_tensors
        k, normalized, gap_rtol, gap_atol = ctx.args
        warn_ill_conditioned(lam[..., :k], d, normalized, gap_rtol)
        if grad_Z is None:
            grad_Z = V.new_zeros((*V.shape[:-1], k))
        if grad_lam is None:
            grad_lam = lam.new_zeros((*lam.shape[:-1], k))
        grad_lam, grad_Z, gd = trivial_pair_cotangents(grad_lam, grad_Z, V[..., :k], d, normalized)
        lam = far_trivial(lam)
        gW = _ops.ncut_backward(V, lam, d, grad_Z, grad_lam, normalized, gap_rtol, gap_atol)
        if gd is not None:
            gW = gW + sym_outer_sum(gd)
        return gW, None, None, None, None, None


def solve_dense(W, k: int, normalized: bool, sign, gap_rtol: float, gap_atol: float):
    """``(eigenvalues (*, k), eigenvectors (*, N, k))`` by the dense solve."""
    lam, Z, *_ = _NCut.apply(W, k, normalized, sign, gap_rtol, gap_atol)
    return lam, Z
