"""The DNCut model: backbone keys -> projector / predictor -> aligned overlap -> NCut masks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import diffeig
from diffeig.dncut.train.losses import mask_consistency, structural_regularization
from diffeig.ncut import affinity


def mlp2d(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """``Conv1x1 - BN - GELU - Conv1x1``, the convolutions initialized as the authors'
    ``ProjectionHead2d``: truncated normal weights (std 0.02), zero biases."""
    mlp = nn.Sequential(
        nn.Conv2d(in_dim, hidden, 1),
        nn.BatchNorm2d(hidden),
        nn.GELU(),
        nn.Conv2d(hidden, out_dim, 1),
    )
    for m in mlp:
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return mlp


def align(features: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """The overlap region of each view on the view's own ``h x w`` grid, un-mirrored.

    ``features (B, C, h, w)``; ``boxes (B, 4)`` normalized ``x1, y1, x2, y2`` in the
    view's (mirrored when ``flips``) coordinates. ``torchvision.ops.roi_align`` with
    ``aligned=True`` and its adaptive sampling (``sampling_ratio=-1``: ceil(box / grid)
    samples per cell), as the authors' ``invaug``; mirrored views are flipped back so that
    both views' grids describe the same region in the same orientation.
    """
    from torchvision.ops import roi_align

    B, _, h, w = features.shape
    scale = boxes.new_tensor([w, h, w, h])
    rois = torch.cat(
        [torch.arange(B, device=boxes.device, dtype=boxes.dtype)[:, None], boxes * scale], 1
    )
    out = roi_align(features, rois.to(features.dtype), (h, w), 1.0, -1, aligned=True)
    return torch.where(flips.view(B, 1, 1, 1), out.flip(-1), out)


@dataclass
class NCutOptions:
    tau: float = 0.0
    eps: float = 1e-6
    laplacian: str = "unnormalized"
    solve_dtype: str = "float64"
    temperature: float = 0.05
    sign: str = "sum"
    solver: str = "auto"  # method of diffeig.sym_eigh_ncut: dense | lobpcg | auto
    # L2-normalize the aligned features again before the affinity (ours); the authors take
    # the raw dot products of the aligned (interpolated, so slightly shorter) features.
    renormalize: bool = False


def ncut_masks(feature_map: torch.Tensor, opt: NCutOptions):
    """``sigmoid(z2 / temperature)`` of each map's NCut ``(B, h, w)``, and ``z2``.

    Graph: dot products of the features (cosine similarities with ``renormalize``)
    thresholded at ``tau`` (``eps`` below), the ``laplacian`` of
    :func:`diffeig.sym_eigh_ncut` solved in ``solve_dtype``; z2 = the eigenvector of
    the second smallest eigenvalue, signed by ``sign``.
    """
    B, C, h, w = feature_map.shape
    f = feature_map.flatten(2).transpose(1, 2).to(getattr(torch, opt.solve_dtype))
    W = affinity(f, tau=opt.tau, eps=opt.eps, mode="weighted", normalize=opt.renormalize)
    _, Z = diffeig.sym_eigh_ncut(W, 2, laplacian=opt.laplacian, sign=opt.sign, method=opt.solver)
    z2 = Z[..., 1].reshape(B, h, w)
    # z2 is cast to the features' dtype before the sigmoid, as the authors' code does. Cast
    # after it, a float64 sigmoid of 1 - 1e-9 rounds to exactly 1.0 in float32 while its
    # derivative stays non-zero: the BCE's 1 / (m (1 - m)) then multiplies it into a
    # gradient spike (3e4 - 5e4 per saturated token); computed in float32 the sigmoid
    # saturates with a zero derivative there instead.
    m = torch.sigmoid(z2.to(feature_map.dtype) / opt.temperature)
    return m, z2


class DNCut(nn.Module):
    """Backbone + projector + predictor and the symmetric DNCut objective."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        proj_hidden: int | None = None,
        proj_dim: int = 256,
        ncut: NCutOptions | None = None,
        alpha: float = 0.05,
        iou_threshold: float = 0.5,
        min_kept: int = 20,
        threshold_step: float = 0.05,
        autocast_backbone: bool = False,
        joint_bn: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        dim = backbone.embed_dim
        hidden = proj_hidden or dim
        self.projector = mlp2d(dim, hidden, proj_dim)
        self.predictor = mlp2d(proj_dim, hidden, proj_dim)
        self.ncut = ncut or NCutOptions()
        self.alpha = alpha
        self.iou_threshold, self.min_kept, self.threshold_step = (
            iou_threshold,
            min_kept,
            threshold_step,
        )
        self.autocast_backbone = autocast_backbone
        self.joint_bn = joint_bn

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if self.autocast_backbone and images.is_cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.backbone(images).float()
        return self.backbone(images)

    def forward(self, batch: dict) -> dict:
        """All loss terms and statistics of one batch; ``out['loss']`` is the objective.

        The stages (``backbone_features``, ``aligned_maps``, :func:`ncut_masks`,
        ``objective``) are methods of their own so that a step can be timed part by part
        (``benchmarks/train_step.py``) with the code that trains."""
        f = self.backbone_features(batch)
        maps = self.aligned_maps(f, batch)
        # Non-finite weights or inputs show here first; the training loop stops on it
        # (the NCut's affinity would refuse them).
        finite = torch.isfinite(maps).all()
        if not bool(finite):
            return {"features_finite": finite}
        masks, _ = ncut_masks(maps, self.ncut)
        out = self.objective(masks)
        out["features_finite"] = finite
        return out

    def backbone_features(self, batch: dict) -> torch.Tensor:
        """Keys of both views, ``(2B, C, h, w)``: view 1 then view 2."""
        return self.features(torch.cat([batch["view1"], batch["view2"]]))

    def aligned_maps(self, f: torch.Tensor, batch: dict) -> torch.Tensor:
        """Projector / predictor, normalized, aligned on the views' overlap: ``(4B, D, h, w)``
        in the order online view 1, online view 2, target view 1, target view 2.

        Each view goes through the heads on its own, so their BatchNorm normalizes it by
        its own batch statistics, as the authors' code (one call per view); ``joint_bn``
        runs both views as one batch instead."""
        views = (f,) if self.joint_bn else f.chunk(2)
        z = [self.projector(v) for v in views]
        online = F.normalize(torch.cat([self.predictor(v) for v in z]), dim=1)
        target = F.normalize(torch.cat(z), dim=1)
        boxes = torch.cat([batch["box1"], batch["box2"]]).to(f.dtype)
        flips = torch.cat([batch["flip1"], batch["flip2"]])
        # One NCut per aligned map: online and target branch of both views.
        return align(
            torch.cat([online, target]), torch.cat([boxes, boxes]), torch.cat([flips, flips])
        )

    def objective(self, masks: torch.Tensor) -> dict:
        """The symmetric DNCut objective from the ``(4B, h, w)`` masks of ``aligned_maps``."""
        B = masks.shape[0] // 4
        m_on, m_tg = masks[: 2 * B], masks[2 * B :]
        out = {}
        total = 0.0
        for name, (on, tg) in {"12": (m_on[:B], m_tg[B:]), "21": (m_on[B:], m_tg[:B])}.items():
            l_mask, st = mask_consistency(
                on,
                tg,
                iou_threshold=self.iou_threshold,
                min_kept=self.min_kept,
                threshold_step=self.threshold_step,
            )
            reg, terms = structural_regularization(on)
            total = total + l_mask - self.alpha * reg
            out[f"mask_{name}"] = l_mask
            out[f"reg_{name}"] = reg
            for k, v in terms.items():
                out[f"{k}_{name}"] = v
            for k, v in st.items():
                out[f"{k}_{name}"] = v
        out["loss"] = total
        out["masks_online"] = m_on
        out["masks_target"] = m_tg
        return out
