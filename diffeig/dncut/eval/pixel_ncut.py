"""``--post pixel-ncut``: the token-level TokenCut mask refined by a normalized cut at pixel
resolution (``diffeig.sym_eigh_ncut`` on a sparse pixel graph).

The pixel graph (``diffeig.ncut.pixel_affinity``) links pixels within ``radius`` by
colour, position, the bilinearly upsampled backbone features (L2-normalized per token,
reduced to their ``FEATURE_DIMS`` principal components, weighted by ``feature_weight``)
and the upsampled token mask (the prior, weighted by ``prior_weight``): its edges are
weak across the token mask's border and across colour edges, so the cut follows the
object at pixel precision near where the tokens put it.
The Fiedler vector's side that agrees with the prior (positive correlation with the
prior centred at 1/2) is the foreground: ``soft = sigmoid(z2 / (SOFTNESS std(z2)))``,
``mask = soft > 1/2``.

The graph is solved at most ``work_side`` pixels on the longer side (the soft map is
upsampled bilinearly back): memory is O(nnz) = O(work_side^2 radius^2) at any image size.
"""

from __future__ import annotations

import numpy as np
import torch

import diffeig
from diffeig.ncut import pixel_affinity

__all__ = ["refine", "DEFAULTS", "add_options", "options"]

# Chosen on generated thin-object images and the quokka (tests/data), not on a benchmark.
DEFAULTS = {
    "radius": 3.0,
    "sigma_color": 0.15,
    "sigma_space": 3.0,
    "feature_weight": 1.0,
    "prior_weight": 6.0,
    "work_side": 320,
}
SOFTNESS = 0.25
# Token features are reduced to this many principal components before upsampling.
FEATURE_DIMS = 8


def _resize(t: torch.Tensor, size) -> torch.Tensor:
    return torch.nn.functional.interpolate(
        t[None], size=tuple(size), mode="bilinear", align_corners=False
    )[0]


def refine(
    image,
    prior: torch.Tensor,
    features: torch.Tensor | None = None,
    *,
    radius: float = DEFAULTS["radius"],
    sigma_color: float = DEFAULTS["sigma_color"],
    sigma_space: float = DEFAULTS["sigma_space"],
    feature_weight: float = DEFAULTS["feature_weight"],
    prior_weight: float = DEFAULTS["prior_weight"],
    work_side: int = DEFAULTS["work_side"],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(soft, mask)``, both ``prior``'s size ``(H, W)``: the pixel-resolution cut.

    ``image``: a PIL image or ``(3, H, W)`` tensor in [0, 1]; ``prior``: the upsampled
    token mask in [0, 1]; ``features``: the backbone's ``(C, h, w)`` map (or None)."""
    H, W = prior.shape
    if not isinstance(image, torch.Tensor):
        arr = np.asarray(image.convert("RGB").resize((W, H)), dtype=np.float64) / 255
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    s = min(1.0, work_side / max(H, W))
    h, w = max(2, round(H * s)), max(2, round(W * s))
    chans = [_resize(image.double(), (h, w))]
    # every channel is compared at the colour scale: weight w -> w * sigma_color
    p = _resize(prior.double()[None], (h, w))
    chans.append(prior_weight * sigma_color * p)
    if features is not None and feature_weight > 0:
        f = torch.nn.functional.normalize(features.double(), dim=0)
        C, fh, fw = f.shape
        if C > FEATURE_DIMS:
            # the principal components of the token features: the graph compares pixels
            # on a few channels instead of hundreds (distances kept where the variance is)
            flat = f.reshape(C, -1).T
            flat = flat - flat.mean(0)
            # randomized (seeded): tens of ms where a full SVD of 2400 x 1029 takes seconds
            state = torch.random.get_rng_state()
            torch.manual_seed(0)
            _, _, V = torch.pca_lowrank(flat, q=FEATURE_DIMS, center=False, niter=3)
            torch.random.set_rng_state(state)
            f = (flat @ V).T.reshape(FEATURE_DIMS, fh, fw)
        chans.append(feature_weight * sigma_color * _resize(f, (h, w)))
    x = torch.cat(chans)
    Wg = pixel_affinity(x, radius=radius, sigma_color=sigma_color, sigma_space=sigma_space)
    # a floor keeps every pixel's degree positive (a lone pixel unlike all its neighbours)
    Wg = torch.sparse_coo_tensor(
        Wg.indices(), Wg.values() + 1e-8, Wg.shape, is_coalesced=True, check_invariants=False
    )
    _, z = diffeig.sym_eigh_ncut(Wg, 2)
    z2 = z[:, 1].reshape(h, w)
    centred = p[0] - 0.5
    if float((z2 * centred).sum()) < 0:
        z2 = -z2
    soft = torch.sigmoid(z2 / (SOFTNESS * z2.std().clamp_min(1e-30)))
    soft = _resize(soft[None], (H, W))[0].clamp(0, 1)
    return soft, soft > 0.5


HELPS = {
    "radius": "neighbourhood radius in pixels",
    "sigma_color": "colour distance (RGB in [0, 1]) at which a weight falls to 1/e",
    "sigma_space": "pixel distance at which a weight falls to 1/e",
    "feature_weight": "weight of the upsampled backbone features beside the colour",
    "prior_weight": "weight of the upsampled token mask beside the colour",
    "work_side": "longer side (px) the graph is solved at; the map is upsampled back",
}


def add_options(p) -> None:
    """The ``--pixel-*`` options of ``--post pixel-ncut`` on an argparse parser."""
    g = p.add_argument_group(
        "--post pixel-ncut", "the pixel graph of the refinement (docs/evaluation.md)"
    )
    for name, default in DEFAULTS.items():
        g.add_argument(
            f"--pixel-{name.replace('_', '-')}",
            type=type(default),
            default=default,
            help=f"{HELPS[name]} (default: {default})",
        )


def options(args) -> dict:
    """The ``--pixel-*`` values of parsed ``args`` as :func:`refine`'s keywords."""
    return {n: getattr(args, f"pixel_{n}") for n in DEFAULTS if hasattr(args, f"pixel_{n}")}
