"""k-way segments from k eigenvectors: Yu & Shi's multiclass spectral rounding."""

from __future__ import annotations

import math

import torch

from diffeig._checks import check_kway

__all__ = ["kway"]

# Rounding stops when the objective changes by less than float64's eps (as scikit-learn),
# or after this many rotations.
MAX_ROTATIONS = 20


def kway(
    Z: torch.Tensor,
    k: int,
    *,
    start: int | None = None,
    generator: torch.Generator | None = None,
    max_iter: int = MAX_ROTATIONS,
) -> torch.Tensor:
    """Segment nodes into ``k`` groups from the first ``k`` eigenvectors of a graph's NCut.

    The discretization of Yu & Shi ("Multiclass spectral clustering", ICCV 2003), as
    scikit-learn's ``sklearn.cluster._spectral.discretize``: each eigenvector is scaled to
    norm ``sqrt(N)`` and signed so that its first entry is negative, each node's row is
    normalized onto the unit sphere, and the nearest partition matrix and an orthogonal
    rotation are found in turn (one SVD of a ``k x k`` matrix a round) until the
    objective ``2 (N - trace)`` stops changing or ``max_iter`` rounds have run. The
    rotation starts from one node's row (``start``, else drawn from ``generator``) and
    then, for each further column, the row least aligned with those taken so far.

    Args:
        Z: ``(N, m)`` or ``(B, N, m)`` eigenvectors, ascending, the trivial one first
            (:func:`diffeig.sym_eigh_ncut`'s output, ``m >= k``).
        k: number of segments, ``2 <= k <= m``; the first ``k`` columns are used.
        start: the node whose row starts the rotation (scikit-learn draws it with
            ``random_state.randint(N)``); default: drawn from ``generator``.
        generator: a ``torch.Generator`` for the start (default: the global one).
        max_iter: rounds of rotation at most (scikit-learn's ``n_iter_max``).

    Returns:
        ``(N,)`` or ``(B, N)`` int64 labels in ``[0, k)``.

    Example:
        >>> import torch, diffeig
        >>> f = torch.zeros(30, 3, dtype=torch.float64)
        >>> f[:10, 0] = f[10:20, 1] = f[20:, 2] = 1
        >>> W = diffeig.ncut.affinity(f, tau=0.5, eps=1e-3, mode="binary")
        >>> _, Z = diffeig.sym_eigh_ncut(W, 3)
        >>> diffeig.ncut.kway(Z, 3, start=0).reshape(3, 10)[:, 0].unique().numel()
        3
    """
    k = check_kway(Z, k, start, max_iter)
    if Z.dim() == 3:
        return torch.stack(
            [kway(z, k, start=start, generator=generator, max_iter=max_iter) for z in Z]
        )
    if start is None:
        start = int(torch.randint(Z.shape[0], (), generator=generator))
    return _round(Z[:, :k].detach().double().cpu(), int(start), max_iter).to(Z.device)


def _embedding(Z: torch.Tensor) -> torch.Tensor:
    """scikit-learn's normalization: columns to norm sqrt(N), first entry <= 0, then each
    row onto the unit sphere (a zero row stays zero)."""
    n = Z.shape[0]
    V = Z / Z.norm(dim=0).clamp_min(torch.finfo(Z.dtype).tiny) * math.sqrt(n)
    V = V * torch.where(V[0] != 0, -torch.sign(V[0]), torch.ones_like(V[0]))
    return V / V.norm(dim=1, keepdim=True).clamp_min(torch.finfo(Z.dtype).tiny)


def _round(Z: torch.Tensor, start: int, max_iter: int) -> torch.Tensor:
    V = _embedding(Z)
    n, k = V.shape
    R = torch.zeros(k, k, dtype=V.dtype)
    R[:, 0] = V[start]
    c = torch.zeros(n, dtype=V.dtype)
    for j in range(1, k):  # the rows least aligned with those taken
        c += (V @ R[:, j - 1]).abs()
        R[:, j] = V[int(c.argmin())]
    last = 0.0
    eps = torch.finfo(torch.float64).eps
    for rounds in range(1, max_iter + 2):
        labels = (V @ R).argmax(1)
        onehot = torch.zeros(n, k, dtype=V.dtype)
        onehot[torch.arange(n), labels] = 1.0
        U, S, Vh = torch.linalg.svd(onehot.T @ V)
        objective = 2.0 * (n - float(S.sum()))
        if abs(objective - last) < eps or rounds > max_iter:
            break
        last = objective
        R = Vh.T @ U.T
    return labels
