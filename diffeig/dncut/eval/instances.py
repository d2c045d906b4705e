"""``eval-instances``: class-agnostic instance metrics of pseudo-masks or predictions.

    python -m diffeig.dncut eval-instances --gt instances_val.json --pred annotations.json

Box and mask AP, AP50, AP75 and AR@100 by pycocotools' ``COCOeval`` with one class
(``useCats = 0``), as CutLER reports them, and multi-object discovery:

- ``corloc``: the share of images whose top-scored box has IoU >= 0.5 with some
  ground-truth box (single-object CorLoc, LOST / TokenCut, on the best of the masks);
- ``detection_rate``: the share of ground-truth objects that some predicted box of their
  image overlaps at IoU >= 0.5 (Vo et al., "Large-scale unsupervised object discovery",
  NeurIPS 2021: multi-object discovery's recall);
- ``mask_recall``: the same with masks (mask IoU >= 0.5).

The ground truth is a COCO instances file (``--gt``) or an object-discovery dataset's
boxes (``--dataset voc07|voc12|coco20k|boxes --root DIR``, the layouts of
``eval-discovery``: box metrics, CorLoc and the detection rate; no masks).
``--pred`` is a COCO instances file (what ``pseudo-masks`` writes: its images are matched
to the ground truth's by file name, or by base name where that is unique) or a COCO
results list (``image_id`` already the ground truth's).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

__all__ = ["add_command", "run", "evaluate_instances", "discovery_ground_truth", "HIT_IOU"]

# An object is found at this IoU (CorLoc's and the detection rate's threshold).
HIT_IOU = 0.5
# COCOeval's stats: AP, AP50, AP75 at index 0, 1, 2; AR with 100 detections at 8.
STATS = {"AP": 0, "AP50": 1, "AP75": 2, "AR100": 8}


def add_command(sub) -> None:
    from diffeig.dncut.eval.datasets import DISCOVERY

    p = sub.add_parser("eval-instances", help="class-agnostic AP / AR and multi-object CorLoc")
    gt = p.add_mutually_exclusive_group(required=True)
    gt.add_argument("--gt", help="ground truth, COCO instances JSON")
    gt.add_argument(
        "--dataset",
        choices=DISCOVERY,
        help="ground truth: an object-discovery dataset's boxes (with --root; box metrics "
        "and CorLoc only)",
    )
    p.add_argument("--root", help="the --dataset's folder (layouts: docs/evaluation.md)")
    p.add_argument("--pred", required=True, help="predictions: COCO instances or results JSON")
    p.add_argument("--output", default=None, help="also write the metrics as JSON here")
    p.add_argument("--force", action="store_true", help="replace an existing --output")


def _load(path: str, flag: str):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{flag} {path}: no such file") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{flag} {path} is not JSON: {err}") from None


def results(pred, gt) -> tuple[list[dict], int]:
    """The predictions as a COCO results list on the ground truth's image ids, and how
    many predicted images had no ground-truth image (ignored)."""
    if isinstance(pred, list):
        return pred, 0
    if not isinstance(pred, dict) or "annotations" not in pred or "images" not in pred:
        raise ValueError("--pred must be a COCO instances file or a results list")
    by_name = {im["file_name"]: im["id"] for im in gt.dataset["images"]}
    base: dict[str, list[int]] = {}
    for name, i in by_name.items():
        base.setdefault(Path(name).name, []).append(i)
    ids, unmatched = {}, 0
    for im in pred["images"]:
        name = im["file_name"]
        match = by_name.get(name)
        if match is None and len(base.get(Path(name).name, [])) == 1:
            match = base[Path(name).name][0]
        if match is None:
            unmatched += 1
        else:
            ids[im["id"]] = match
    out = []
    for a in pred["annotations"]:
        if a["image_id"] in ids:
            r = {k: a[k] for k in ("segmentation", "bbox") if k in a}
            out.append(
                {**r, "image_id": ids[a["image_id"]], "category_id": 1, "score": a.get("score", 1)}
            )
    return out, unmatched


def _percent(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _iou_boxes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``[x, y, w, h]`` boxes, ``(len(a), len(b))``."""
    from pycocotools import mask as rle

    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    return rle.iou(a.tolist(), b.tolist(), [0] * len(b))


def discovery(gt, dets: list[dict]) -> dict:
    """CorLoc (top box), detection rate (boxes) and mask recall (module docstring)."""
    from pycocotools import mask as rle

    by_image: dict[int, list[dict]] = {}
    for d in dets:
        by_image.setdefault(d["image_id"], []).append(d)
    hits = objects = boxes_found = masks_found = 0
    for img in gt.dataset["images"]:
        anns = [a for a in gt.imgToAnns.get(img["id"], []) if not a.get("iscrowd")]
        preds = sorted(by_image.get(img["id"], []), key=lambda d: -d["score"])
        objects += len(anns)
        if not anns or not preds:
            continue
        g = np.array([a["bbox"] for a in anns], dtype=float)
        p = np.array([d["bbox"] for d in preds], dtype=float)
        ious = _iou_boxes(p, g)
        hits += bool((ious[0] >= HIT_IOU).any())
        boxes_found += int((ious >= HIT_IOU).any(0).sum())
        if all("segmentation" in d for d in preds):
            gm = [gt.annToRLE(a) for a in anns]
            pm = [gt.annToRLE({**d, "image_id": img["id"]}) for d in preds]
            masks_found += int((rle.iou(pm, gm, [0] * len(gm)) >= HIT_IOU).any(0).sum())
    n = len(gt.dataset["images"])
    return {
        "corloc": hits / n if n else 0.0,
        "detection_rate": boxes_found / objects if objects else 0.0,
        "mask_recall": masks_found / objects if objects else 0.0,
        "objects": objects,
    }


def discovery_ground_truth(name: str, root: str) -> dict:
    """The boxes of an object-discovery dataset (VOC07 / VOC12 trainval, COCO20k, a
    ``boxes`` folder; :class:`~diffeig.dncut.eval.datasets.DiscoveryDataset`) as a COCO
    instances dict without masks; ``file_name`` is each image's base name."""
    from PIL import Image

    from diffeig.dncut.eval.datasets import DiscoveryDataset, parse_voc_xml

    data = DiscoveryDataset(name, root)
    images, annotations = [], []
    for i, (_, path, (kind, payload)) in enumerate(data.all_items):
        with Image.open(path) as im:  # the header only
            width, height = im.size
        boxes = parse_voc_xml(payload).tolist() if kind == "voc" else payload
        images.append({"id": i + 1, "file_name": path.name, "width": width, "height": height})
        for x1, y1, x2, y2 in boxes:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)}
            )  # fmt: skip
    return {"images": images, "annotations": annotations}


def evaluate_instances(gt_path: str | dict, pred_path: str) -> dict:
    """Every metric of the module docstring, as a dict (fractions, not percent). ``gt_path``:
    a COCO instances file, or such a dict. Where the ground truth has no masks, the mask
    metrics are ``None``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    raw = gt_path if isinstance(gt_path, dict) else _load(gt_path, "--gt")
    if not isinstance(raw, dict) or not {"images", "annotations"} <= raw.keys():
        raise ValueError(f"--gt {gt_path} is not a COCO instances file (images, annotations)")
    raw.setdefault("categories", [{"id": 1, "name": "fg"}])
    masks = all("segmentation" in a for a in raw["annotations"])
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = raw
        gt.createIndex()
    dets, unmatched = results(_load(pred_path, "--pred"), gt)
    out: dict = {"images": len(raw["images"]), "predictions": len(dets), "unmatched": unmatched}
    for kind in ("bbox", "segm") if masks else ("bbox",):
        usable = [d for d in dets if ("segmentation" if kind == "segm" else "bbox") in d]
        if not usable:
            out.update({f"{kind}_{k}": 0.0 for k in STATS})
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(usable)
            e = COCOeval(gt, dt, kind)
            e.params.useCats = 0
            e.evaluate()
            e.accumulate()
            e.summarize()
        out.update({f"{kind}_{k}": max(0.0, float(e.stats[i])) for k, i in STATS.items()})
    out.update(discovery(gt, dets if masks else [_boxes_only(d) for d in dets]))
    if not masks:
        out.update({f"segm_{k}": None for k in STATS}, mask_recall=None)
    return out


def _boxes_only(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "segmentation"}


def run(args) -> int:
    from diffeig.dncut.checkpoint import atomic_write, check_output

    if args.dataset and not args.root:
        raise ValueError(f"--dataset {args.dataset} needs --root, the dataset's folder")
    if args.output:
        check_output(args.output, [args.gt, args.pred], flag="--output", force=args.force)
    gt = args.gt or discovery_ground_truth(args.dataset, args.root)
    m = evaluate_instances(gt, args.pred)
    print("\n| | AP | AP50 | AP75 | AR@100 |\n|---|---:|---:|---:|---:|")
    for kind, name in (("bbox", "box"), ("segm", "mask")):
        vals = " | ".join(_percent(m[f"{kind}_{k}"]) for k in STATS)
        print(f"| {name} | {vals} |")
    print(
        f"\n{m['images']} images, {m['objects']} objects, {m['predictions']} predictions: "
        f"CorLoc {_percent(m['corloc'])}, detection rate {_percent(m['detection_rate'])}, "
        f"mask recall {_percent(m['mask_recall'])} (at IoU {HIT_IOU})"
    )
    if m["unmatched"]:
        print(f"warning: {m['unmatched']} predicted images are not in --gt (ignored)")
    if args.output:
        atomic_write(args.output, lambda f: f.write(json.dumps(m, indent=1).encode()))
        print(f"metrics: {args.output}")
    return 0
