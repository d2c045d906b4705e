"""From an image file to its token features: the protocols' resizing and padding, the
backbone, batched extraction. Shared by the benchmarks (``evaluate``) and ``visualize``."""

from __future__ import annotations

import torch

from diffeig.dncut.backbone import IMAGENET_MEAN, IMAGENET_STD, build_backbone

__all__ = ["extract", "load_backbone", "pad_to_patch", "resize_to_patch", "to_tensor"]


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
    s = min(1.0, max_side / max(W, H)) if max_side else 1.0
    h = max(patch, int(round(H * s / patch)) * patch)
    w = max(patch, int(round(W * s / patch)) * patch)
    if (h, w) == (H, W):
        return x
    return torch.nn.functional.interpolate(
        x[None], size=(h, w), mode="bilinear", align_corners=False
    )[0]


def pad_to_patch(image, patch: int) -> torch.Tensor:
    """Discovery protocol (LOST / TokenCut): the image as is, zero-padded (after
    normalization) at the bottom and right to multiples of the patch."""
    x = to_tensor(image)
    _, H, W = x.shape
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
    backbone = build_backbone(args.arch, args.weights, patch_size=args.patch_size)
    return backbone.to(args.device).eval()
