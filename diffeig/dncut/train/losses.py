"""The DNCut objective: mask consistency with the IoU filter, structural regularization.

Masks are ``(B, h, w)`` soft masks in (0, 1) (``sigmoid(z2 / temperature)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _bce(m: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean binary cross-entropy ``(B,)``."""
    return F.binary_cross_entropy(m, target, reduction="none").flatten(1).mean(1)


def hard_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks per sample ``(B,)``; two empty masks have IoU 0."""
    a, b = a.flatten(1), b.flatten(1)
    inter = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    return inter / union.clamp_min(1)


def mask_consistency(
    online: torch.Tensor,
    target: torch.Tensor,
    *,
    iou_threshold: float = 0.5,
    min_kept: int = 20,
    threshold_step: float = 0.05,
):
    """``BCE(online, stopgrad(target))`` up to the sign ambiguity of z2, IoU-filtered.

    Per sample, the target is ``t`` or ``1 - t``, whichever's hard mask (> 0.5) has the
    larger IoU with the online hard mask (ties go to ``1 - t``, as the authors' code:
    ``IoU_bg >= IoU_fg``). A sample is kept when that
    IoU exceeds the threshold; the threshold is lowered by ``threshold_step`` until at
    least ``min(min_kept, B)`` samples are kept. The loss is the mean BCE over the kept
    samples.

    Returns ``(loss, stats)`` with stats ``kept`` (fraction), ``iou`` (mean best IoU over
    the batch), ``threshold`` (the one used), ``flipped`` (fraction matched to 1 - t).
    """
    if not (math.isfinite(iou_threshold) and 0 <= iou_threshold <= 1):
        raise ValueError(f"iou_threshold must be a number in [0, 1], got {iou_threshold!r}")
    # A step this small (or 0, or NaN) would lower the threshold forever.
    if not (math.isfinite(threshold_step) and 1e-4 <= threshold_step <= 1):
        raise ValueError(f"threshold_step must be a number in [1e-4, 1], got {threshold_step!r}")
    if isinstance(min_kept, bool) or not isinstance(min_kept, int) or min_kept < 1:
        raise ValueError(f"min_kept must be a positive int, got {min_kept!r}")
    t = target.detach()
    hard = online.detach() > 0.5
    iou_pos = hard_iou(hard, t > 0.5)
    iou_neg = hard_iou(hard, t <= 0.5)
    flip = iou_neg >= iou_pos
    iou = torch.where(flip, iou_neg, iou_pos)
    tgt = torch.where(flip.view(-1, *([1] * (t.dim() - 1))), 1 - t, t)
    B = online.shape[0]
    need = min(min_kept, B)
    # The need-th largest IoU decides how far the threshold drops: one read to the host,
    # then the authors' repeated subtraction (the same float threshold as theirs), compared
    # as `iou > thr` compares. IoUs are >= 0, so the loop ends once thr < 0: at most
    # 1 / threshold_step + 1 steps.
    thr = iou_threshold
    if need:
        nth = iou.detach().topk(need).values[-1].cpu()
        while not bool(nth > thr):
            thr -= threshold_step
    keep = iou > thr
    per = _bce(online, tgt)
    loss = (per * keep).sum() / keep.sum().clamp_min(1)
    stats = {
        "kept": keep.float().mean(),
        "iou": iou.mean(),
        "threshold": torch.tensor(thr),
        "flipped": flip.float().mean(),
    }
    return loss, stats


def pseudo_masks(m: torch.Tensor) -> dict:
    """The striped and uniform patterns of a mask batch ``(B, h, w)``, detached.

    ``fg`` = mean of m over ``m > 0.5``, ``bg`` = mean over ``m <= 0.5`` (0 where a side
    is empty). Horizontal: top half fg / bottom half bg (``h1``) and swapped (``h2``);
    vertical: left fg / right bg (``v1``) and swapped (``v2``); uniform: the mean of m.
    With an odd side the middle row (column) belongs to the second half.
    """
    m = m.detach()
    B, h, w = m.shape
    fgm = (m > 0.5).float()
    fg = (m * fgm).flatten(1).sum(1) / fgm.flatten(1).sum(1).clamp_min(1)
    bg = (m * (1 - fgm)).flatten(1).sum(1) / (1 - fgm).flatten(1).sum(1).clamp_min(1)
    fg, bg = fg.view(B, 1, 1), bg.view(B, 1, 1)
    top = (torch.arange(h, device=m.device) < h // 2).view(1, h, 1)
    left = (torch.arange(w, device=m.device) < w // 2).view(1, 1, w)
    out = {
        "h1": torch.where(top, fg, bg).expand(B, h, w),
        "h2": torch.where(top, bg, fg).expand(B, h, w),
        "v1": torch.where(left, fg, bg).expand(B, h, w),
        "v2": torch.where(left, bg, fg).expand(B, h, w),
        "uniform": m.mean((1, 2), keepdim=True).expand(B, h, w),
    }
    return out


def structural_regularization(m: torch.Tensor):
    """``R_h + R_v + R_u`` (the paper's Eqn. 11), averaged over the batch.

    ``R_h = min(BCE(m, h1), BCE(m, h2))``, ``R_v`` likewise, ``R_u = BCE(m, uniform)``.
    The objective subtracts ``alpha`` times it: masks are pushed away from the stripes
    and the uniform pattern. Returns ``(value, terms)``.
    """
    p = pseudo_masks(m)
    r_h = torch.minimum(_bce(m, p["h1"]), _bce(m, p["h2"])).mean()
    r_v = torch.minimum(_bce(m, p["v1"]), _bce(m, p["v2"])).mean()
    r_u = _bce(m, p["uniform"]).mean()
    return r_h + r_v + r_u, {"reg_h": r_h, "reg_v": r_v, "reg_u": r_u}
