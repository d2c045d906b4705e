"""What every NCut solver shares: the sign rule, the trivial pair's couplings, the
cotangents of ``z = D^-1/2 u`` and the spectrum's bound."""

from __future__ import annotations

import torch

__all__ = ["sign_flips", "drop_trivial_coupling", "ncut_grad_inputs", "ncut_spectral_bound"]


def sign_flips(Z: torch.Tensor, rule: str | None) -> torch.Tensor:
    """``(*, 1, k)`` signs (+-1) that make each column of ``Z`` follow ``rule``."""
    if rule is None:
        return torch.ones_like(Z[..., :1, :])
    if rule == "max":
        idx = Z.abs().argmax(-2, keepdim=True)
        ref = torch.gather(Z, -2, idx)
    else:  # "sum"
        ref = Z.sum(-2, keepdim=True)
    return torch.where(ref < 0, -torch.ones_like(ref), torch.ones_like(ref))


def ncut_grad_inputs(grad_lam, grad_Z, V, d, k: int, normalized: bool):
    """Cotangents of the symmetric eigenproblem, and the part of dL/dd that z = D^-1/2 u adds."""
    Vk = V[..., :k]
    if grad_Z is None:
        grad_Z = torch.zeros_like(Vk)
    if normalized:
        dis = d.rsqrt()
        grad_U = grad_Z * dis.unsqueeze(-1)
        # z_is = dis_i u_is: d loss / d dis_i = sum_s gZ_is u_is, and d dis / d d = -dis^3 / 2.
        grad_d = -0.5 * dis**3 * (grad_Z * Vk).sum(-1)
    else:
        grad_U = grad_Z
        grad_d = None
    return grad_U, grad_d


def drop_trivial_coupling(grad_Z, Vk):
    """``D - W``: remove from the cotangents the couplings of the trivial pair (column 0 of
    the k returned vectors ``Vk``, the constant vector) with the others.

    z_2 ... z_k lose their component along u1, and z_1 its components along z_2 ... z_k.
    Both are exact: u1 is the constant vector for every W, so ``u1 . dz_j = -z_j . du1 = 0``
    and a cotangent of u1 itself contributes nothing; where l_2 ties l_1 these couplings
    are masked anyway. Left in, they enter the backward as ``(u1 . g_j) / (l_j - l_1)`` and
    cancel in dL/dW only up to rounding: where l_2 is small against the spectrum (a nearly
    disconnected graph) the leftover was the size of the whole gradient of a saturated
    mask (4 % of it, against 1e-8 once removed).
    """
    if grad_Z.shape[-1] < 2:
        return grad_Z
    u1, rest = Vk[..., :1], Vk[..., 1:]
    g1, g = grad_Z[..., :1], grad_Z[..., 1:]
    g = g - u1 * (u1 * g).sum(-2, keepdim=True)
    g1 = g1 - rest @ (rest.mT @ g1)
    return torch.cat([g1, g], -1)


def ncut_spectral_bound(d: torch.Tensor, normalized: bool) -> torch.Tensor:
    """Gershgorin's bound of the Laplacian's spectrum, ``(*)``: 2 for the normalized
    cut, ``2 max(d)`` for ``D - W``. The iterative solvers' residuals and tie thresholds
    are relative to it."""
    return torch.full_like(d[..., 0], 2.0) if normalized else 2 * d.amax(-1)
