"""Affinity graphs for the normalized cut: token affinities from features."""

from __future__ import annotations

import torch

from diffeig._checks import check_choice, check_features

__all__ = ["affinity"]


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
