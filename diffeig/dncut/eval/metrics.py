"""The evaluation protocols' metrics, as their reference code computes them.

Saliency (TokenCut / DeepSpectral / the DNCut code): per image, the IoU and accuracy of
the map thresholded at 0.5; max F-beta (beta^2 = 0.3): for each of 255 thresholds
``linspace(0, 1 - 1e-10, 255)``, precision and recall of ``map >= t`` per image, F per
image, averaged over images, then the maximum over thresholds. Object discovery: CorLoc.
"""

from __future__ import annotations

import torch

BETA2 = 0.3
THRESHOLDS = torch.linspace(0, 1 - 1e-10, 255, dtype=torch.float64)


def mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """IoU of two boolean masks; 1.0 when both are empty (nothing to find, nothing found)."""
    inter = (pred & gt).sum().item()
    union = (pred | gt).sum().item()
    return 1.0 if union == 0 else inter / union


def f_beta_curve(pred: torch.Tensor, gt: torch.Tensor, beta2: float = BETA2) -> torch.Tensor:
    """F-beta of ``pred >= t`` for the 255 thresholds ``(255,)`` of one image.

    ``pred`` in [0, 1]; precision and recall with a 1e-20 guard as the reference code, so
    an empty prediction or an empty ground truth gives F = 0 at that threshold.
    """
    p = pred.flatten()
    g = gt.flatten()
    # Per pixel, the number of thresholds it reaches (p >= t): then the counts of every
    # threshold are suffix sums of a 256-bin histogram. Chunked: memory stays O(chunk),
    # not 255 x H x W; the sums are of integers (or of g), exact in float64.
    nt = len(THRESHOLDS)
    reached = torch.zeros(nt + 1, dtype=torch.float64)
    reached_fg = torch.zeros(nt + 1, dtype=torch.float64)
    for pc, gc in zip(p.split(1 << 20), g.split(1 << 20)):
        idx = torch.searchsorted(THRESHOLDS, pc.double().contiguous(), right=True)
        reached += torch.bincount(idx, minlength=nt + 1).double()
        reached_fg += torch.bincount(idx, weights=gc.double(), minlength=nt + 1)
    # hits[j] = #pixels reaching more than j thresholds = those with idx > j
    hits = reached.flip(0).cumsum(0).flip(0)[1:]
    tp = reached_fg.flip(0).cumsum(0).flip(0)[1:]
    precision = tp / (hits + 1e-20)
    recall = tp / (g.double().sum() + 1e-20)
    f = (1 + beta2) * precision * recall / (beta2 * precision + recall + 1e-20)
    return torch.nan_to_num(f, nan=0.0)


def saliency_scores(pred: torch.Tensor, gt: torch.Tensor) -> dict:
    """Per-image scores of a saliency map ``pred (H, W)`` in [0, 1] against the ground truth
    ``gt (H, W)``: bool, or grey levels in [0, 1] (the mask's anti-aliased edges), as the
    authors' ``measure.py``: IoU and accuracy of ``pred > 0.5`` against ``gt > 0.5``; the
    F-beta curve with ``gt`` as it is (grey pixels count fractionally)."""
    if pred.shape != gt.shape:
        raise ValueError(
            f"prediction {tuple(pred.shape)} and mask {tuple(gt.shape)} differ in size"
        )
    binary = pred > 0.5
    hard = gt if gt.dtype == torch.bool else gt > 0.5
    return {
        "iou": mask_iou(binary, hard),
        "accuracy": (binary == hard).double().mean().item(),
        "f_curve": f_beta_curve(pred, gt),
    }


def to_8bit(saliency: torch.Tensor) -> torch.Tensor:
    """A saliency map in [0, 1] as the authors' evaluation sees it: written as an 8-bit PNG
    (``x * 255`` in float32, rounded half to even as OpenCV's conversion) and read back
    (``/ 255``)."""
    return torch.round(saliency.float().clamp(0, 1) * 255) / 255


def summarize_saliency(per_image: list[dict]) -> dict:
    """Means over images of IoU and accuracy; max over thresholds of the mean F curve."""
    if not per_image:
        raise ValueError("no images were evaluated")
    curve = torch.stack([r["f_curve"] for r in per_image]).mean(0)
    best = int(curve.argmax())
    n = len(per_image)
    return {
        "images": n,
        "iou": sum(r["iou"] for r in per_image) / n,
        "accuracy": sum(r["accuracy"] for r in per_image) / n,
        "max_f_beta": curve[best].item(),
        "max_f_threshold": THRESHOLDS[best].item(),
    }


def box_iou(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of one box ``(4,)`` with each of ``boxes (M, 4)``, all ``x1, y1, x2, y2`` in
    pixel edges (a box covering pixels 0..9 is ``0, 0, 10, 10``)."""
    box = box.double()
    boxes = boxes.double().reshape(-1, 4)
    iw = (torch.minimum(box[2], boxes[:, 2]) - torch.maximum(box[0], boxes[:, 0])).clamp_min(0)
    ih = (torch.minimum(box[3], boxes[:, 3]) - torch.maximum(box[1], boxes[:, 1])).clamp_min(0)
    inter = iw * ih
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter).clamp_min(1e-12)


def corloc_hit(pred_box: torch.Tensor, gt_boxes: torch.Tensor, threshold: float = 0.5) -> bool:
    """Whether the predicted box has IoU >= ``threshold`` with any ground-truth box."""
    if gt_boxes.numel() == 0:
        return False
    return bool((box_iou(pred_box, gt_boxes) >= threshold).any())
