"""MaskCut: several objects per image from repeated normalized cuts of one token graph.

MaskCut (Wang et al., "Cut and Learn", CVPR 2023; ``facebookresearch/CutLER``,
``maskcut/maskcut.py``, function ``maskcut_forward``) cuts an image's binary token graph
up to ``max_objects`` times. After each cut the tokens of the object it found are
masked out of the features (set to zero, so they keep only ``eps`` edges) and the graph
is cut again. Each rule below is CutLER's and is written once, here:

- :func:`binary_graph`: ``A = 1`` where the cosine similarity is above ``tau``
  (:func:`similar`), ``eps`` elsewhere (TokenCut's graph, ``get_affinity_matrix``);
- the cut: the Fiedler pair of ``(D - A) z = l D z`` (``second_smallest_eigenvector``,
  there ``scipy.linalg.eigh(D - A, D, subset_by_index=[1, 2])`` per image; here
  :func:`diffeig.sym_eigh_ncut` on all images of a batch together);
- :func:`foreground`: the split at the mean of ``z`` (``get_salient_areas``), reversed when
  :data:`BACKGROUND_CORNERS` or more corners are on the foreground side
  (``check_num_fg_corners``), else turned so that the largest ``|z|`` is foreground; then
  the 4-connected component holding the seed (TokenCut's ``detect_box``);
- :func:`keep`: from the second cut on, a mask whose IoU with the previous cut's is above
  :data:`MAX_OVERLAP`, or that covers :data:`MIN_COVER` of the grid or less, is dropped
  (an empty mask);
- the mask returned for a cut is its component minus the tokens earlier masks took.

The flip rule reads the sign of ``z``: where three or more corners fall on the
``z > mean`` side, CutLER's answer depends on the sign LAPACK happened to return. Here
``z`` is always signed so that its largest entry in magnitude is positive (``sign='max'``),
which makes the rule read: the seed's side, unless that side holds three or more
corners, then the other side. That is CutLER's answer for that sign (and for both signs
wherever they agree; ``scripts/make_maskcut_fixture.py`` records both).

CutLER's loop re-solves a graph that did not change (a dropped mask masks nothing out):
the same cut comes back, now compared with the empty mask. Here the previous cut is
re-used, with the same result and no solve.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

import diffeig
from diffeig._checks import check_choice, check_features
from diffeig._tolerances import MASK_TOL

__all__ = [
    "maskcut",
    "MaskCut",
    "similar",
    "binary_graph",
    "foreground",
    "keep",
    "iou",
    "MAX_OVERLAP",
    "MIN_COVER",
]

# CutLER's defaults (maskcut.py's command line: --tau 0.2, --N 3; get_affinity_matrix's eps).
TAU = 0.2
EPS = 1e-5
MAX_OBJECTS = 3
# A later mask is dropped when its IoU with the previous cut's mask is above this ...
MAX_OVERLAP = 0.5
# ... or when it covers this share of the token grid or less.
MIN_COVER = 0.01
# The z > mean side is background when it holds this many of the grid's 4 corners.
BACKGROUND_CORNERS = 3
METHODS = (None, "auto", "dense", "lobpcg")


class MaskCut(NamedTuple):
    """What :func:`maskcut` returns, for ``B`` images (no batch dimension for one image).

    ``masks``: ``(B, max_objects, h, w)`` bool, the objects in the order they were cut,
    disjoint; an empty mask where a cut found no further object. ``eigenvectors``:
    ``(B, max_objects, h, w)`` the Fiedler vector of each cut (D-orthonormal, signed so
    that its largest entry in magnitude is positive). ``eigenvalues``:
    ``(B, max_objects)`` the Fiedler value of each cut (the relaxed NCut value)."""

    masks: torch.Tensor
    eigenvectors: torch.Tensor
    eigenvalues: torch.Tensor


def similar(features: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """Which token pairs are alike: cosine similarity above ``tau``, ``(*, N, N)`` bool,
    computed in the features' dtype as CutLER computes it (``get_affinity_matrix``); a
    pair is alike where both of its entries say so."""
    f = torch.nn.functional.normalize(features, dim=-1)
    alike = (f @ f.mT) > tau
    return alike & alike.mT  # (a product f f^T can differ from its transpose by rounding)


def binary_graph(
    alike: torch.Tensor, taken: torch.Tensor, tau: float = TAU, eps: float = EPS
) -> torch.Tensor:
    """CutLER's and TokenCut's graph, float64: ``1`` for pairs :func:`similar` calls alike,
    ``eps`` for the others. A token already ``taken`` (``(*, N)`` bool) has its features
    zeroed: its cosine with every token is 0, so its row and column are ``eps`` (``1``
    where ``tau < 0``). Built from the similarities of the unmasked features, which do not
    change as tokens are taken: one product of the features per image, not one per cut."""
    masked = taken[..., :, None] | taken[..., None, :]
    one = (alike & ~masked) | masked if 0 > tau else alike & ~masked
    f64 = dict(dtype=torch.float64, device=alike.device)
    return torch.where(one, torch.ones((), **f64), torch.full((), eps, **f64))


def _first_max(v: np.ndarray) -> int:
    """``np.argmax`` up to rounding: the first entry within ``1e-9`` (relative) of the
    largest. Entries equal in exact arithmetic come out of different solvers equal only up
    to rounding; CutLER's ``np.argmax`` takes the first of those bitwise equal."""
    top = v.max()
    return int(np.flatnonzero(v >= top - 1e-9 * abs(top))[0])


def foreground(z: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """One cut's object on the token grid ``(h, w)`` from its Fiedler vector ``z`` ``(N,)``:
    the split at the mean, the flip rule (module docstring) and the 4-connected component
    of the seed (the largest entry of the foreground side's vector), as CutLER."""
    from scipy import ndimage

    h, w = grid
    side = z > z.mean()
    corners = side.reshape(h, w)[[0, 0, -1, -1], [0, -1, 0, -1]].sum()
    if corners >= BACKGROUND_CORNERS or not side[_first_max(np.abs(z))]:
        side, z = ~side, -z
    seed = _first_max(z)
    labels, _ = ndimage.label(side.reshape(h, w))  # 4-connectivity, as detect_box
    return labels == labels.flat[seed]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks, as TokenCut's ``metric.IoU`` (an empty union counts as 0)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def keep(mask: np.ndarray, previous: np.ndarray) -> bool:
    """Whether a later cut's mask is kept: its :func:`iou` with the previous cut's mask
    (empty if that was dropped) at most :data:`MAX_OVERLAP`, and it covers more than
    :data:`MIN_COVER` of the grid."""
    return iou(mask, previous) <= MAX_OVERLAP and mask.mean() > MIN_COVER


def _check(features, grid, max_objects, tau, eps, method) -> tuple[int, int]:
    check_features(features, tau=tau, eps=eps)
    if features.dim() not in (2, 3) or not features.is_floating_point():
        raise ValueError(
            f"features must be a float tensor (N, C) or (B, N, C), got "
            f"{features.dtype} of shape {tuple(features.shape)}"
        )
    try:
        h, w = (int(g) for g in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be (h, w), got {grid!r}") from None
    n = features.shape[-2]
    if h < 1 or w < 1 or h * w != n:
        raise ValueError(f"grid {grid!r} must have h * w = N = {n} tokens")
    if n < 3:
        raise ValueError(f"a cut needs at least 3 tokens, got N = {n}")
    if isinstance(max_objects, bool) or not isinstance(max_objects, int) or max_objects < 1:
        raise ValueError(f"max_objects must be an int >= 1, got {max_objects!r}")
    if eps <= 0:
        raise ValueError(f"eps must be positive (it keeps the graph connected), got {eps!r}")
    check_choice("method", method, METHODS)
    return h, w


@torch.no_grad()
def maskcut(
    features: torch.Tensor,
    grid: tuple[int, int],
    *,
    max_objects: int = MAX_OBJECTS,
    tau: float = TAU,
    eps: float = EPS,
    method: str | None = None,
) -> MaskCut:
    """Up to ``max_objects`` object masks per image by MaskCut (module docstring).

    Args:
        features: token features ``(N, C)`` of one image or ``(B, N, C)`` of a batch, in
            row-major order of the token grid.
        grid: ``(h, w)`` with ``h * w = N``.
        max_objects: cuts per image (CutLER's ``--N``).
        tau: similarity threshold of the binary graph.
        eps: weight of the pairs at or below ``tau``, > 0.
        method: the eigen solver, :func:`diffeig.sym_eigh_ncut`'s ``method``; ``None``
            (default) is ``'auto'``: batched LOBPCG (Lanczos for one image) where that is
            faster, the dense solve for small graphs and where the Fiedler value is tied.

    Returns:
        :class:`MaskCut` ``(masks, eigenvectors, eigenvalues)``.

    Raises:
        ValueError: for a bad shape, grid, option or non-finite features.

    Example:
        >>> import torch
        >>> from diffeig.dncut import maskcut
        >>> f = torch.zeros(8, 8, 3); f[..., 0] = 1; f[1:4, 1:4] = torch.tensor([0., 1, 0])
        >>> f[5:7, 4:7] = torch.tensor([0., 0, 1])
        >>> masks = maskcut(f.reshape(64, 3), (8, 8), max_objects=2).masks
        >>> [int(m.sum()) for m in masks]
        [9, 6]
    """
    h, w = _check(features, grid, max_objects, tau, eps, method)
    single = features.dim() == 2
    out = cuts(features[None] if single else features, (h, w), max_objects, tau, eps,
               fiedler_solver(method))  # fmt: skip
    return MaskCut(*(t[0] for t in out)) if single else out


def fiedler_solver(method: str | None = None):
    """The Fiedler pairs of a batch of graphs ``(B, N, N)`` by :func:`diffeig.sym_eigh_ncut`
    (all together, signed ``'max'``, to :data:`~diffeig._tolerances.MASK_TOL`):
    ``W -> (l2 (B,), z2 (B, N))``."""

    def solve(W: torch.Tensor):
        lam, Z = diffeig.sym_eigh_ncut(W, 2, sign="max", method=method or "auto", tol=MASK_TOL)
        return lam[..., 1], Z[..., 1]

    return solve


def cuts(feats: torch.Tensor, grid, max_objects: int, tau: float, eps: float, solve) -> MaskCut:
    """MaskCut's loop on a batch ``(B, N, C)`` with the eigen solver ``solve``
    (:func:`fiedler_solver`'s contract; the benchmark passes scipy's), unchecked."""
    h, w = grid
    B, N, _ = feats.shape
    masks = np.zeros((B, max_objects, N), dtype=bool)
    vectors = torch.zeros(B, max_objects, N, dtype=torch.float64)
    values = torch.zeros(B, max_objects, dtype=torch.float64)
    painting = torch.zeros(B, N, dtype=torch.bool, device=feats.device)
    W = binary_graph(similar(feats, tau), painting, tau, eps)
    current = np.zeros((B, N), dtype=bool)  # the previous cut's mask, after the drop rule
    taken = np.zeros((B, N), dtype=bool)
    for i in range(max_objects):
        # a graph changes only where the previous cut's mask was kept
        todo = list(range(B)) if i == 0 else [b for b in range(B) if current[b].any()]
        if todo:
            lam, z = solve(W if len(todo) == B else W[todo])
            vectors[todo, i], values[todo, i] = z.cpu().double(), lam.cpu().double()
        for b in range(B):
            if b not in todo:  # the same graph as the previous cut
                vectors[b, i], values[b, i] = vectors[b, i - 1], values[b, i - 1]
            mask = foreground(vectors[b, i].numpy(), (h, w)).reshape(N)
            if i > 0 and not keep(mask, current[b]):
                mask[:] = False
            current[b] = mask
            masks[b, i] = mask & ~taken[b]
            taken[b] |= mask
        for b in range(B):  # binary_graph's masking, on the newly taken tokens only
            new = torch.from_numpy(current[b]).to(W.device) & ~painting[b]
            if new.any():
                W[b, new] = 1.0 if 0 > tau else eps
                W[b][:, new] = 1.0 if 0 > tau else eps
                painting[b] |= new
    return MaskCut(
        torch.from_numpy(masks).reshape(B, max_objects, h, w),
        vectors.reshape(B, max_objects, h, w),
        values,
    )
