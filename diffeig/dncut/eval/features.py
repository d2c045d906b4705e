"""From an image file to its token features: the protocols' resizing and padding, the
backbone, batched extraction. Shared by the benchmarks (``evaluate``) and ``visualize``."""

from __future__ import annotations

import math

import torch

from diffeig._sparse_checks import physical_memory
from diffeig.dncut.backbone import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from diffeig.dncut.images import UnreadableImage

__all__ = [
    "check_memory",
    "downscale",
    "extract",
    "load_backbone",
    "pad_to_patch",
    "resize_to_patch",
    "to_tensor",
    "token_grid",
]

# Bytes per token pair that one image costs at its peak: the dense affinity, Laplacian and
# eigenvectors in float64 (8 each), LAPACK's workspace (16) and the backbone's attention
# maps (6 heads in float32: 24, rounded down as they are freed layer by layer).
BYTES_PER_TOKEN_PAIR = 48


def downscale(height: int, width: int, max_side: int | None) -> float:
    """The factor that brings the longer side down to ``max_side`` (1 when it fits)."""
    return min(1.0, max_side / max(width, height)) if max_side else 1.0


def token_grid(height, width, patch: int, max_side: int | None, protocol: str):
    """``(h, w)`` tokens of an image under a protocol: ``'resize'`` (saliency: each side
    to the nearest multiple of the patch) or ``'pad'`` (discovery: padded up to one)."""
    s = downscale(height, width, max_side)
    H, W = round(height * s), round(width * s)
    if protocol == "resize":
        return max(1, round(H / patch)), max(1, round(W / patch))
    return math.ceil(H / patch), math.ceil(W / patch)


def memory_limit() -> int:
    """Half of this machine's memory, in bytes (what one image may take)."""
    return physical_memory() // 2


def check_memory(name, height, width, patch: int, max_side: int | None, protocol: str) -> None:
    """Skip an image of fewer than 2 tokens (``UnreadableImage``, counted as skipped), and
    refuse, before anything is allocated, an image whose cut would not fit in memory:
    the estimate (``BYTES_PER_TOKEN_PAIR`` per token pair) against half of this
    machine's memory, naming ``--max-side`` with a value that fits."""
    h, w = token_grid(height, width, patch, max_side, protocol)
    if h * w < 2:
        raise UnreadableImage(
            f"{name}: {width} x {height} px gives {h * w} token at patch {patch}; a cut "
            "needs at least 2"
        )
    need, limit = BYTES_PER_TOKEN_PAIR * (h * w) ** 2, memory_limit()
    if need <= limit:
        return
    # the largest side whose token count fits: n^2 * BYTES <= limit with n ~ (side / patch)^2
    # times the aspect ratio
    aspect = min(height, width) / max(height, width)
    fits = int(0.95 * patch * (limit / BYTES_PER_TOKEN_PAIR) ** 0.25 / aspect**0.5)
    raise ValueError(
        f"{name}: {width} x {height} px at patch {patch}"
        + (f" (--max-side {max_side})" if max_side else "")
        + f" gives {h} x {w} = {h * w} tokens, whose cut needs about {need / 2**30:.1f} GiB; "
        f"the limit is {limit / 2**30:.1f} GiB (half of this machine's memory). Pass "
        f"--max-side {max(patch, fits)} or less"
        + (" (or a larger --patch-size)" if patch < 8 else "")
    )


def to_tensor(image) -> torch.Tensor:
    from torchvision.transforms import functional as TF

    return TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)


def resize_to_patch(image, patch: int, max_side: int | None = None):
    """Saliency protocol, as the authors' ``ddt_dino_eigen.py``: the normalized image tensor
    bilinearly resized (``F.interpolate``, ``align_corners=False``) so each side is the
    nearest multiple of the patch (at least one patch), after an optional downscale so the
    longer side is <= max_side."""
    x = to_tensor(image)
    _, H, W = x.shape
    s = downscale(H, W, max_side)
    h = max(patch, int(round(H * s / patch)) * patch)
    w = max(patch, int(round(W * s / patch)) * patch)
    if (h, w) == (H, W):
        return x
    return torch.nn.functional.interpolate(
        x[None], size=(h, w), mode="bilinear", align_corners=False
    )[0]


def pad_to_patch(image, patch: int, max_side: int | None = None) -> torch.Tensor:
    """Discovery protocol (LOST / TokenCut): the image as is, zero-padded (after
    normalization) at the bottom and right to multiples of the patch; with ``max_side``,
    first bilinearly downscaled so its longer side is at most that (boxes found on it are
    scaled back by :func:`downscale`'s factor)."""
    x = to_tensor(image)
    _, H, W = x.shape
    s = downscale(H, W, max_side)
    if s < 1:
        H, W = round(H * s), round(W * s)
        x = torch.nn.functional.interpolate(
            x[None], size=(H, W), mode="bilinear", align_corners=False
        )[0]
    ph, pw = -H % patch, -W % patch
    return torch.nn.functional.pad(x, (0, pw, 0, ph))


@torch.no_grad()
def extract(backbone, tensors: list[torch.Tensor], device) -> list[torch.Tensor]:
    """Feature maps of a list of images; images of equal size go through as one batch."""
    out: list[torch.Tensor | None] = [None] * len(tensors)
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape), []).append(i)
    for idx in groups.values():
        feats = backbone(torch.stack([tensors[i] for i in idx]).to(device)).float().cpu()
        for j, i in enumerate(idx):
            out[i] = feats[j]
    return out


def load_backbone(args):
    backbone = build_backbone(
        args.arch,
        args.weights,
        patch_size=args.patch_size,
        color_sigma=getattr(args, "color_sigma", None),
        position_sigma=getattr(args, "position_sigma", None),
    )
    return backbone.to(args.device).eval()
