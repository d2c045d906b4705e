"""The dense NCut solve: one ``torch.linalg.eigh`` of the Laplacian, and the O(N^2 k)
backward that re-uses its eigenvectors (the DNCut paper's Eqn. 8, fused kernels)."""

from __future__ import annotations

import torch

from diffeig import _ops
from diffeig._reference import torch_eigh
from diffeig.ncut import _common

__all__ = ["ncut_forward", "solve_dense"]


def ncut_forward(W, k: int, normalized: bool, sign: str | None):
    """Shared by the O(N^2 k) and the pseudo-inverse variants: the same numbers."""
    L, d = _ops.laplacian(W, normalized)
    lam, V = torch_eigh(L)
    Vk = V[..., :k]
    dis = d.rsqrt() if normalized else None
    s = _common.sign_flips(Vk * dis.unsqueeze(-1) if normalized else Vk, sign)
    # Flip the columns of V itself, so that the backward sees one consistent basis.
    Vk.mul_(s)
    Z = Vk * dis.unsqueeze(-1) if normalized else Vk.clone()
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
        if grad_Z is None:
            grad_Z = V.new_zeros((*V.shape[:-1], k))
        if grad_lam is None:
            grad_lam = lam.new_zeros((*lam.shape[:-1], k))
        if not normalized:
            grad_Z = _common.drop_trivial_coupling(grad_Z, V[..., :k])
        gW = _ops.ncut_backward(V, lam, d, grad_Z, grad_lam, normalized, gap_rtol, gap_atol)
        return gW, None, None, None, None, None


def solve_dense(W, k: int, normalized: bool, sign, gap_rtol: float, gap_atol: float):
    """``(eigenvalues (*, k), eigenvectors (*, N, k))`` by the dense solve."""
    lam, Z, *_ = _NCut.apply(W, k, normalized, sign, gap_rtol, gap_atol)
    return lam, Z
