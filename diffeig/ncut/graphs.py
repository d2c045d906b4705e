"""Affinity graphs for the normalized cut: token affinities from features (cosine, as
DNCut and TokenCut), and the Gaussian kernel of classical spectral clustering."""

from __future__ import annotations

import torch

from diffeig._checks import check_choice, check_features, check_gaussian

__all__ = ["affinity", "gaussian_affinity"]


def affinity(
    features: torch.Tensor,
    *,
    tau: float = 0.0,
    eps: float = 1e-6,
    mode: str = "weighted",
    normalize: bool = True,
) -> torch.Tensor:
    """Token affinities from features: cosine similarity, thresholded.

    ``A = f f^T`` with ``f`` L2-normalized over channels (``normalize=False``: the
    features as given, raw dot products), symmetrized exactly.
    ``mode='weighted'``: ``W = A where A > tau else eps`` (the DNCut training graph,
    ``tau=0``, ``eps=1e-6``), differentiable in ``features``. ``mode='binary'``:
    ``W = 1 where A > tau else eps`` (TokenCut: ``tau=0.2``, ``eps=1e-5``), piecewise
    constant, so its gradient is zero.

    Args:
        features: ``(*, N, C)``.
        tau: similarity threshold.
        eps: weight of the pairs at or below ``tau`` (keeps the graph connected).
        mode: ``'weighted'`` or ``'binary'``.
        normalize: L2-normalize the features first (default).

    Returns:
        ``(*, N, N)`` affinity of the features' dtype.
    """
    check_features(features, tau=tau, eps=eps)
    check_choice("mode", mode, ("weighted", "binary"))
    f = torch.nn.functional.normalize(features, dim=-1) if normalize else features
    A = f @ f.mT
    A = 0.5 * (A + A.mT)
    keep = A > tau
    if mode == "weighted":
        return torch.where(keep, A, torch.full_like(A, eps))
    return torch.where(keep, torch.ones_like(A), torch.full_like(A, eps)).detach()


def gaussian_affinity(
    features: torch.Tensor, *, sigma: float, topk: int | None = None
) -> torch.Tensor:
    r"""The Gaussian (RBF) kernel of classical spectral clustering, optionally sparsified.

    ``W_ij = exp(-|x_i - x_j|^2 / sigma^2)``: scikit-learn's
    ``rbf_kernel(X, gamma=1 / sigma**2)`` (diagonal 1). With ``topk``, each node keeps its
    ``topk`` largest weights to other nodes, and the graph is kept symmetric by the union
    of the neighbourhoods (``W_ij`` stays where j is among i's or i among j's, as
    scikit-learn's kNN graphs are symmetrized); every other off-diagonal weight is 0.
    Differentiable in ``features`` (the neighbourhoods are piecewise constant).

    Args:
        features: ``(*, N, C)`` points.
        sigma: kernel width, > 0.
        topk: neighbours kept per node, ``1 <= topk < N``, or ``None`` (dense).

    Returns:
        ``(*, N, N)`` symmetric affinity of the features' dtype, in (0, 1].

    Example:
        >>> import torch, diffeig
        >>> x = torch.randn(50, 2, dtype=torch.float64)
        >>> W = diffeig.ncut.gaussian_affinity(x, sigma=0.5, topk=8)
        >>> lam, z = diffeig.sym_eigh_ncut(W + 1e-9, 2)
    """
    check_features(features, tau=0.0, eps=0.0)
    check_gaussian(sigma, topk, features.shape[-2])
    # |x_i - x_j|^2 = |x_i|^2 + |x_j|^2 - 2 x_i . x_j, clamped at 0 against rounding and
    # exactly 0 on the diagonal
    sq = (features * features).sum(-1)
    d2 = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * features @ features.mT).clamp_min(0)
    d2 = 0.5 * (d2 + d2.mT)
    d2 = d2 - torch.diag_embed(torch.diagonal(d2, dim1=-2, dim2=-1))
    W = torch.exp(-d2 / sigma**2)
    if topk is None:
        return W
    n = W.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=W.device)
    others = W.detach().masked_fill(eye, -1.0)
    idx = others.topk(topk, dim=-1).indices
    keep = torch.zeros_like(eye).expand(W.shape).clone().scatter_(-1, idx, True)
    keep = keep | keep.mT | eye
    return torch.where(keep, W, torch.zeros_like(W))
