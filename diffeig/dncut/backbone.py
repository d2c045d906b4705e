"""Feature extractors: the keys of a ViT's last attention block, and two baselines.

Every backbone maps images ``(B, 3, H, W)`` (ImageNet-normalized, ``H`` and ``W``
multiples of ``patch_size``) to a feature map ``(B, C, H / p, W / p)``.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

# name -> (timm model name, patch size, timm keyword arguments)
ARCHS = {
    "vit_small_patch16": ("vit_small_patch16_224", 16, {}),
    "vit_small_patch8": ("vit_small_patch8_224", 8, {}),
    "vit_base_patch16": ("vit_base_patch16_224", 16, {}),
    "vit_base_patch8": ("vit_base_patch8_224", 8, {}),
    # MoCo v3's ViT-S/16 has 12 heads where DINO's (and timm's) has 6: the weights have
    # the same shapes, the attention of every block but the keys differs.
    "mocov3_vit_small": ("vit_small_patch16_224", 16, {"num_heads": 12}),
}
BASELINES = ("color", "random")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ViTKeys(nn.Module):
    """A timm ViT that returns the keys of its last block (patch tokens, CLS dropped).

    The last block's attention output and MLP are never computed: the features are
    ``qkv(norm1(x))``'s K third. Any image size that is a multiple of the patch works
    (the position embeddings are interpolated, as DINO does).
    """

    def __init__(self, model: nn.Module, patch_size: int):
        super().__init__()
        self.model = model
        self.patch_size = patch_size
        self.embed_dim = model.embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B, _, H, W = images.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"images must have sides that are multiples of {p}, got {H} x {W}")
        m = self.model
        x = m.patch_embed(images)
        x = dino_pos_embed(m, x)
        x = m.patch_drop(x)
        x = m.norm_pre(x)
        for blk in m.blocks[:-1]:
            x = blk(x)
        last = m.blocks[-1]
        qkv = last.attn.qkv(last.norm1(x))
        C = self.embed_dim
        keys = qkv[..., C : 2 * C][:, m.num_prefix_tokens :]
        return keys.transpose(1, 2).reshape(B, C, H // p, W // p)


def dino_pos_embed(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class token and position embeddings as DINO's ``interpolate_pos_encoding`` (the
    authors' ViT) adds them: for another grid than the checkpoint's, the patch embeddings
    are resized bicubically by ``scale_factor = (rows + 0.1) / n, (cols + 0.1) / n``, not to
    a size (timm's ``resample_abs_pos_embed`` samples other points: up to 1e-2 apart).
    ``x`` is the patch embedding ``(B, rows, cols, C)``; models with register tokens or
    without a position embedding for the class token keep timm's rule."""
    if x.dim() != 4 or m.num_prefix_tokens != 1 or getattr(m, "no_embed_class", False):
        return m._pos_embed(x)
    B, rows, cols, C = x.shape
    pos = m.pos_embed
    n = int(math.sqrt(pos.shape[1] - 1))
    patch_pos = pos[:, 1:]
    if (rows, cols) != (n, n):
        grid = patch_pos.reshape(1, n, n, C).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(
            grid, scale_factor=((rows + 0.1) / n, (cols + 0.1) / n), mode="bicubic"
        )
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, C)
    x = torch.cat([m.cls_token.expand(B, -1, -1), x.reshape(B, rows * cols, C)], 1)
    x = x + torch.cat([pos[:, :1], patch_pos], 1)
    return m.pos_drop(x)


def create_vit(arch: str) -> ViTKeys:
    import timm

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS) + list(BASELINES)}, got {arch!r}")
    name, patch, extra = ARCHS[arch]
    model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, **extra)
    return ViTKeys(model, patch)


# Prefixes that wrap a ViT's own keys in the published checkpoints: DINO's student /
# teacher ("module.", "backbone."), MoCo v3 ("module.base_encoder."), our exports.
_PREFIXES = ("module.", "base_encoder.", "backbone.", "model.", "encoder.")
# Keys of heads that a feature extractor does not use.
_UNUSED = ("head.", "fc_norm.", "decoder", "mask_token", "predictor", "momentum_encoder")


def _unwrap(obj) -> dict:
    for key in ("teacher", "state_dict", "model", "backbone"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("the checkpoint holds no state dict of tensors")
    return obj


def convert_state_dict(state: dict) -> dict:
    """A published ViT checkpoint's keys in timm's naming (prefixes stripped, heads dropped)."""
    state = _unwrap(state)
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if key.startswith(p):
                    key, changed = key[len(p) :], True
        if key.startswith(_UNUSED):
            continue
        out[key] = value
    return out


def check_not_training_checkpoint(state, path) -> None:
    """A training checkpoint (model, optimizer, step, config) given as ``--weights``: say
    how to make a backbone file from it."""
    if isinstance(state, dict) and {"model", "optimizer", "step", "config"} <= set(state):
        raise ValueError(
            f"--weights {path} is a training checkpoint, not a backbone: write its backbone "
            f"with `python -m diffeig.dncut export {path} backbone.pth` and pass "
            "--weights backbone.pth"
        )


def load_weights(backbone: ViTKeys, path: str | os.PathLike) -> None:
    """Load a DINO / MAE / MoCo v3 / exported checkpoint strictly into ``backbone``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the
    missing and unexpected keys when the checkpoint does not match the architecture.
    """
    from diffeig.dncut.checkpoint import load_checkpoint

    raw = load_checkpoint(path, what="--weights")
    check_not_training_checkpoint(raw, path)
    state = convert_state_dict(raw)
    model = backbone.model
    pos = state.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape:
        from timm.layers import resample_abs_pos_embed

        grid = model.patch_embed.grid_size
        prefix = model.num_prefix_tokens
        state["pos_embed"] = resample_abs_pos_embed(
            pos, list(grid), num_prefix_tokens=prefix, interpolation="bicubic"
        )
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        raise ValueError(
            f"--weights {path} does not match the architecture: missing keys {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{'...' if len(unexpected) > 8 else ''}, shape mismatches {shapes[:8]}"
        )
    model.load_state_dict(state, strict=True)


class ColorFeatures(nn.Module):
    """A classical baseline without learning: patch colour and position.

    Each patch is described by its mean CIE Lab colour (scaled by ``1 / color_sigma``)
    and its centre (scaled by ``1 / position_sigma``, in units of the image's longer
    side). These 5 numbers go through fixed random Fourier features, so that the cosine
    similarity of two patches approximates the Gaussian kernel
    ``exp(-|x - x'|^2 / 2)`` of their scaled descriptors: the NCut graph of the
    pipeline is then the classical colour + position graph of Shi & Malik. The scales
    (28 Lab units, 0.15) were picked on a 4 x 3 grid over the quokka photo and 30
    synthetic images (docs/evaluation.md).
    """

    def __init__(
        self,
        patch_size: int = 16,
        *,
        color_sigma: float = 28.0,
        position_sigma: float = 0.15,
        dim: int = 1024,
        seed: int = 0,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = dim
        self.color_sigma = color_sigma
        self.position_sigma = position_sigma
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("omega", torch.randn(5, dim, generator=g))
        self.register_buffer("phase", 2 * math.pi * torch.rand(dim, generator=g))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B, _, H, W = images.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"images must have sides that are multiples of {p}, got {H} x {W}")
        mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        rgb = (images * std + mean).clamp(0, 1)
        lab = rgb_to_lab(rgb)
        lab = nn.functional.avg_pool2d(lab, p)  # (B, 3, h, w)
        h, w = H // p, W // p
        side = max(h, w)
        yy, xx = torch.meshgrid(
            (torch.arange(h, dtype=images.dtype, device=images.device) + 0.5) / side,
            (torch.arange(w, dtype=images.dtype, device=images.device) + 0.5) / side,
            indexing="ij",
        )
        pos = torch.stack([yy, xx]).expand(B, 2, h, w)
        desc = torch.cat([lab / self.color_sigma, pos / self.position_sigma], 1)
        proj = torch.einsum("bchw,cd->bdhw", desc, self.omega.to(desc.dtype))
        return torch.cos(proj + self.phase.to(desc.dtype).view(1, -1, 1, 1))


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], ``(B, 3, H, W)`` -> CIE Lab (D65), L in [0, 100]."""
    lin = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    M = rgb.new_tensor(
        [
            [0.412453, 0.357580, 0.180423],
            [0.212671, 0.715160, 0.072169],
            [0.019334, 0.119193, 0.950227],
        ]
    )
    xyz = torch.einsum("ij,bjhw->bihw", M, lin)
    xyz = xyz / rgb.new_tensor([0.950456, 1.0, 1.088754]).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    L = 116 * f[:, 1] - 16
    a = 500 * (f[:, 0] - f[:, 1])
    b = 200 * (f[:, 1] - f[:, 2])
    return torch.stack([L, a, b], 1)


def build_backbone(
    arch: str,
    weights: str | None = None,
    *,
    patch_size: int | None = None,
    color_sigma: float | None = None,
    position_sigma: float | None = None,
):
    """A feature extractor by name.

    Args:
        arch: a ViT (``vit_small_patch16``, ``vit_small_patch8``, ``vit_base_patch16``,
            ``vit_base_patch8``, ``mocov3_vit_small`` with MoCo v3's 12 heads),
            ``'color'`` (the classical colour + position baseline, no weights) or
            ``'random'`` (a ViT-S/16 with seeded random weights, for smoke tests).
        weights: a local checkpoint (DINO, MAE, MoCo v3, or one written by
            ``python -m diffeig.dncut export``) for the ViTs.
        color_sigma, position_sigma: the ``color`` backbone's scales
            (:class:`ColorFeatures`; default 28 and 0.15).
    """
    scales = {"color_sigma": color_sigma, "position_sigma": position_sigma}
    scales = {k: v for k, v in scales.items() if v is not None}
    if scales and arch != "color":
        flags = ", ".join("--" + k.replace("_", "-") for k in scales)
        raise ValueError(f"{flags}: only the 'color' backbone has these scales, not {arch}")
    if arch == "color":
        if weights:
            raise ValueError("--weights: the 'color' backbone has no weights")
        return ColorFeatures(patch_size or 16, **scales)
    if arch == "random":
        if weights:
            raise ValueError("--weights: the 'random' backbone has no weights")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return create_vit("vit_small_patch16")
    backbone = create_vit(arch)
    if weights:
        load_weights(backbone, weights)
    return backbone
