"""``--post pixel-ncut``: the token-level TokenCut mask refined by a normalized cut at pixel
resolution (the sparse solver of ``diffeig.sym_eigh_ncut``, forward only).

The pixel graph (``diffeig.ncut.pixel_affinity``) links pixels within ``radius`` by
colour, position, the bilinearly upsampled backbone features (L2-normalized per token,
reduced to their ``FEATURE_DIMS`` principal components, weighted by ``feature_weight``)
and the upsampled token mask (the prior, weighted by ``prior_weight``): its edges are
weak across the token mask's border and across colour edges, so the cut follows the
object at pixel precision near where the tokens put it.

``sigma_color="auto"`` (the default) scales the colour distance to the image, as GrabCut
does: ``AUTO_SIGMA`` times the median distance between 4-neighbours (at least
``MIN_SIGMA``), so that noise within a region keeps its weights near 1 and a colour edge
of a few noise levels cuts them.

The cut is used only where it is decisive: the three smallest pairs are solved, and where
``l2 > DECISIVE l3`` z2 is one of several nearly equal cuts (the object is not separated
by its colours, or the graph splits something else as cheaply) and the refinement falls
back to TokenCut's bilateral solver (``--post tokencut+bs``). Otherwise the Fiedler
vector's side that follows the token mask's foreground (:func:`orient`) is the
foreground, ``soft = sigmoid(z2 / (SOFTNESS std(z2)))``, ``mask = soft > 1/2``; where that
side still disagrees with the token mask on most pixels (``MIN_AGREEMENT``), the cut split
something else and the bilateral solver refines the mask instead. Both fallbacks are
counted by the evaluation.

The graph is solved at most ``work_side`` pixels on the longer side (the soft map is
upsampled bilinearly back): memory is O(nnz) = O(work_side^2 radius^2) at any image size.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch

from diffeig._eigh import gap_tolerances
from diffeig._sparse_checks import SPARSE_BYTES_PER_ENTRY, check_fits
from diffeig._tolerances import MASK_TOL
from diffeig.ncut import pixel_affinity
from diffeig.ncut._lobpcg_pairs import UnresolvedPair
from diffeig.ncut._sparse import solve_sparse
from diffeig.ncut.graphs import _offsets

__all__ = ["refine", "Refined", "DEFAULTS", "add_options", "options"]

# Chosen on generated thin-object images (benchmarks/pixel_refine.py, seeds 0 and 1) and
# the quokka (tests/data), not on a benchmark.
DEFAULTS = {
    "radius": 3.0,
    "sigma_color": "auto",
    "sigma_space": 3.0,
    "feature_weight": 1.0,
    "prior_weight": 6.0,
    "work_side": 320,
}
# sigma_color="auto": this times the median colour distance of 4-neighbours, at least
# MIN_SIGMA (a noise-free image has a median of 0).
AUTO_SIGMA = 0.7
MIN_SIGMA = 0.03
# The cut is decisive where l2 <= DECISIVE * l3 (measured: 0.0 - 0.3 where z2 found the
# object, 0.65 - 0.95 where it split something else).
DECISIVE = 0.5
# The pixel cut is used only where its side agrees with the token mask on at least this
# share of the pixels: a cut that disagrees on most of them split something else (a
# region of the background) and is not a refinement of the token mask.
MIN_AGREEMENT = 0.5
NOT_DECISIVE = "not decisive"
DISAGREES = "disagrees with the token mask"
SOFTNESS = 0.25
# Token features are reduced to this many principal components before upsampling.
FEATURE_DIMS = 8


class Refined(NamedTuple):
    """What :func:`refine` returns: the soft map and mask at the prior's size, whether the
    pixel cut made them (False: the fallback, TokenCut's bilateral solver), ``l2 / l3``,
    the colour scale used, and why the fallback was taken (:data:`NOT_DECISIVE`,
    :data:`DISAGREES`, or None)."""

    soft: torch.Tensor
    mask: torch.Tensor
    cut: bool
    gap_ratio: float
    sigma_color: float
    fallback: str | None = None


def _resize(t: torch.Tensor, size) -> torch.Tensor:
    return torch.nn.functional.interpolate(
        t[None], size=tuple(size), mode="bilinear", align_corners=False
    )[0]


def auto_sigma(image: torch.Tensor) -> float:
    """``AUTO_SIGMA`` times the median colour distance between 4-neighbours of a
    ``(C, H, W)`` image, at least ``MIN_SIGMA``."""
    dx = (image[:, :, 1:] - image[:, :, :-1]).square().sum(0).flatten()
    dy = (image[:, 1:] - image[:, :-1]).square().sum(0).flatten()
    med = float(torch.cat([dx, dy]).median().sqrt())
    return max(AUTO_SIGMA * med, MIN_SIGMA)


def _features(features: torch.Tensor, size) -> torch.Tensor:
    f = torch.nn.functional.normalize(features.double(), dim=0)
    C, fh, fw = f.shape
    if C > FEATURE_DIMS:
        # the principal components of the token features: the graph compares pixels on a
        # few channels instead of hundreds (distances kept where the variance is)
        flat = f.reshape(C, -1).T
        flat = flat - flat.mean(0)
        # randomized (seeded): tens of ms where a full SVD of 2400 x 1029 takes seconds
        state = torch.random.get_rng_state()
        torch.manual_seed(0)
        _, _, V = torch.pca_lowrank(flat, q=FEATURE_DIMS, center=False, niter=3)
        torch.random.set_rng_state(state)
        f = (flat @ V).T.reshape(FEATURE_DIMS, fh, fw)
    return _resize(f, size)


def _fallback(image: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    from PIL import Image

    from diffeig.dncut.eval.bilateral import bilateral_solve

    arr = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return bilateral_solve(Image.fromarray(arr), prior.float()).double()


def refine(
    image,
    prior: torch.Tensor,
    features: torch.Tensor | None = None,
    *,
    radius: float = DEFAULTS["radius"],
    sigma_color: float | str = DEFAULTS["sigma_color"],
    sigma_space: float = DEFAULTS["sigma_space"],
    feature_weight: float = DEFAULTS["feature_weight"],
    prior_weight: float = DEFAULTS["prior_weight"],
    work_side: int = DEFAULTS["work_side"],
) -> Refined:
    """``Refined(soft, mask, cut, gap_ratio, sigma_color, fallback)``, ``soft`` and ``mask`` of
    ``prior``'s size ``(H, W)``: the pixel-resolution cut (module docstring).

    ``image``: a PIL image or ``(3, H, W)`` tensor in [0, 1]; ``prior``: the upsampled
    token mask in [0, 1]; ``features``: the backbone's ``(C, h, w)`` map (or None);
    ``sigma_color``: a number > 0 or ``"auto"``."""
    if not (sigma_color == "auto" or isinstance(sigma_color, (int, float))):
        raise ValueError(f"--pixel-sigma-color must be a number > 0 or 'auto', got {sigma_color!r}")
    H, W = prior.shape
    s = min(1.0, work_side / max(H, W))
    h, w = max(2, round(H * s)), max(2, round(W * s))
    neighbours = len(_offsets(float(radius), h, w))
    check_fits(
        h * w * neighbours * SPARSE_BYTES_PER_ENTRY,
        f"--post pixel-ncut on {w} x {h} px (--pixel-work-side {work_side}, --pixel-radius "
        f"{radius})",
        "pass a smaller --pixel-work-side or --pixel-radius",
    )
    if not isinstance(image, torch.Tensor):
        arr = np.asarray(image.convert("RGB").resize((W, H)), dtype=np.float64) / 255
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    image = image.double()
    img = _resize(image, (h, w))
    sigma = auto_sigma(img) if sigma_color == "auto" else float(sigma_color)
    if not sigma > 0:
        raise ValueError(f"--pixel-sigma-color must be > 0 or 'auto', got {sigma_color!r}")
    # every channel is compared at the colour scale: weight w -> w * sigma
    p = _resize(prior.double()[None], (h, w))
    chans = [img, prior_weight * sigma * p]
    if features is not None and feature_weight > 0:
        chans.append(feature_weight * sigma * _features(features, (h, w)))
    Wg = pixel_affinity(torch.cat(chans), radius=radius, sigma_color=sigma, sigma_space=sigma_space)
    # a floor keeps every pixel's degree positive (a lone pixel unlike all its neighbours)
    Wg = torch.sparse_coo_tensor(
        Wg.indices(), Wg.values() + 1e-8, Wg.shape, is_coalesced=True, check_invariants=False
    )
    k = min(3, h * w - 1)
    # forward only: the k - 1 pairs plus one guard vector suffice (solve_sparse's note)
    rtol, atol = gap_tolerances(None, h * w, Wg.dtype)
    with warnings.catch_warnings():
        # The third pair serves only l3 in the ratio below (its value is exact to the
        # residual squared); where z2 itself is not resolved from z3 the ratio is near 1
        # and the cut is not used. (Images of several objects have several near-equal
        # pixel cuts.)
        warnings.simplefilter("ignore", UnresolvedPair)
        lam, z = solve_sparse(Wg, k, True, "max", rtol, atol, MASK_TOL, 1000, "warn", block=k)
    ratio = float(lam[1] / lam[2]) if lam.numel() > 2 and lam[2] > 0 else 1.0
    if ratio > DECISIVE:
        soft = _fallback(image, prior)
        return Refined(soft, soft > 0.5, False, ratio, sigma, NOT_DECISIVE)
    z2, agreement = orient(z[:, 1].reshape(h, w), p[0] > 0.5)
    if agreement < MIN_AGREEMENT:
        soft = _fallback(image, prior)
        return Refined(soft, soft > 0.5, False, ratio, sigma, DISAGREES)
    soft = torch.sigmoid(z2 / (SOFTNESS * z2.std().clamp_min(1e-30)))
    soft = _resize(soft[None], (H, W))[0].clamp(0, 1)
    return Refined(soft, soft > 0.5, True, ratio, sigma)


def orient(z2: torch.Tensor, token_mask: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``z2`` signed so that its positive side follows the token mask's foreground, and the
    share of pixels where that side agrees with the token mask.

    The side is the one with the larger ``TPR - FPR`` against the token mask (the share of
    its foreground inside minus the share of its background inside): the foreground
    decides, whatever its size. (The sign of ``sum z2 (prior - 1/2)`` weighed the
    background by its size and by z2's magnitude there, and could return the complement
    of the object.) A token mask that is all foreground or all background gives no side:
    z2 is kept as the solver signed it."""
    fg = token_mask.to(z2.dtype)
    bg = 1 - fg
    pos = (z2 > 0).to(z2.dtype)
    n_fg, n_bg = float(fg.sum()), float(bg.sum())
    if n_fg and n_bg:
        youden = float((pos * fg).sum()) / n_fg - float((pos * bg).sum()) / n_bg
        if youden < 0:
            z2, pos = -z2, 1 - pos
    agreement = float((pos == fg).to(z2.dtype).mean())
    return z2, agreement


HELPS = {
    "radius": "neighbourhood radius in pixels",
    "sigma_color": "colour distance (RGB in [0, 1]) at which a weight falls to 1/e, or "
    f"'auto': {AUTO_SIGMA} x the median 4-neighbour distance, at least {MIN_SIGMA}",
    "sigma_space": "pixel distance at which a weight falls to 1/e",
    "feature_weight": "weight of the upsampled backbone features beside the colour",
    "prior_weight": "weight of the upsampled token mask beside the colour",
    "work_side": "longer side (px) the graph is solved at; the map is upsampled back",
}


def _sigma(text: str):
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"a number or 'auto', got {text!r}") from None


def add_options(p) -> None:
    """The ``--pixel-*`` options of ``--post pixel-ncut`` on an argparse parser."""
    g = p.add_argument_group(
        "--post pixel-ncut", "the pixel graph of the refinement (docs/evaluation.md)"
    )
    for name, default in DEFAULTS.items():
        g.add_argument(
            f"--pixel-{name.replace('_', '-')}",
            type=_sigma if name == "sigma_color" else type(default),
            default=default,
            help=f"{HELPS[name]} (default: {default})",
        )


def options(args) -> dict:
    """The ``--pixel-*`` values of parsed ``args`` as :func:`refine`'s keywords."""
    return {n: getattr(args, f"pixel_{n}") for n in DEFAULTS if hasattr(args, f"pixel_{n}")}
