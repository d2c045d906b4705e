"""Evaluation: unsupervised saliency detection, object discovery (CorLoc), figures.

    python -m diffeig.dncut eval-saliency --dataset ecssd --root /data/ECSSD --weights backbone.pth
    python -m diffeig.dncut eval-discovery --dataset voc07 --root /data/VOCdevkit \
        --weights backbone.pth
    python -m diffeig.dncut visualize image.jpg --weights backbone.pth --out fig.png

See docs/evaluation.md for the protocols.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffeig.dncut.backbone import ARCHS, BASELINES, check_not_training_checkpoint
from diffeig.dncut.checkpoint import atomic_write
from diffeig.dncut.eval import metrics, pixel_ncut, postprocess
from diffeig.dncut.eval.features import (
    check_memory,
    downscale,
    extract,
    load_backbone,
    pad_to_patch,
    resize_to_patch,
)

POSTS_SALIENCY = ("simple", "tokencut", "tokencut+bs", "pixel-ncut")
SOLVERS = ("dense", "lobpcg", "auto")
POSTS_DISCOVERY = ("tokencut", "simple", "pixel-ncut")
POSTS_VISUALIZE = POSTS_DISCOVERY


# ------------------------------------------------------------------------------ inputs


def chunks(dataset, size: int, workers: int):
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=size, collate_fn=list, num_workers=workers, shuffle=False
    )
    yield from loader


def resolve_arch(args) -> str:
    """``--arch``, or the architecture an exported backbone records, or ViT-S/16.

    A backbone written by ``export`` records its architecture: an explicit ``--arch``
    that differs from it is an error naming both."""
    recorded = None
    if args.weights and args.arch not in BASELINES:
        from diffeig.dncut.checkpoint import load_checkpoint

        state = load_checkpoint(args.weights, what="--weights")
        check_not_training_checkpoint(state, args.weights)
        recorded = state.get("arch") if isinstance(state.get("arch"), str) else None
    arch = args.arch or recorded or "vit_small_patch16"
    if arch not in BASELINES and not args.weights:
        raise ValueError(
            f"--arch {arch} needs --weights: a DINO / MAE / MoCo v3 checkpoint or a backbone "
            "written by `python -m diffeig.dncut export` (an untrained ViT would be scored "
            "silently); --arch random scores the seeded random ViT-S/16 baseline, --arch "
            "color the colour + position baseline"
        )
    if args.arch is None:
        return arch
    if recorded and recorded != args.arch:
        raise ValueError(
            f"--weights {args.weights} is a {recorded} backbone (recorded by export); "
            f"--arch {args.arch} does not fit it (leave --arch out to use {recorded})"
        )
    return args.arch


def device_of(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available")
    return name


# ---------------------------------------------------------------------------- saliency


class _Prepared(torch.utils.data.Dataset):
    """Images read and prepared in the loader's workers. ``check(name, height, width)``
    runs before ``prepare``: the memory estimate refuses an image before any allocation."""

    def __init__(self, base, prepare, check=None):
        self.base, self.prepare, self.check = base, prepare, check

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        """An item, or ``(None, message)`` for a file that cannot be read (skipped)."""
        from diffeig.dncut.images import UnreadableImage

        try:
            name, image, target = self.base[i]
            if self.check is not None:
                self.check(name, image.height, image.width)
        except UnreadableImage as err:
            return None, str(err)
        return name, (image.height, image.width), self.prepare(image), target, image


def readable(batch: list, skipped: list, bar) -> list:
    """The items of a batch that could be read; the others are counted in ``skipped`` and
    reported with a warning line each (evaluation goes on without them)."""
    good = []
    for item in batch:
        if item[0] is None:
            skipped.append(item[1])
            bar.write(f"warning: skipped: {item[1]}", file=sys.stderr)
            bar.update(1)
        else:
            good.append(item)
    return good


def saliency_map(
    features, post: str, patch: int, image_size, image=None, solver: str = "dense", pixel=None
) -> tuple[torch.Tensor, dict]:
    """The soft saliency map ``(H, W)`` in [0, 1] of one image and the post-processing's output."""
    if post == "simple":
        r = postprocess.simple(features, solver=solver)
    else:
        h, w = features.shape[1:]
        r = postprocess.tokencut(
            features, patch_size=patch, image_size=(h * patch, w * patch), solver=solver
        )
    # upsampled in float32, as the authors' code (on its GPU tensors)
    soft = postprocess.upsample(r["mask"], image_size, dtype=torch.float32)
    if post == "tokencut+bs":
        from diffeig.dncut.eval.bilateral import bilateral_solve

        soft = bilateral_solve(image, soft)
    elif post == "pixel-ncut":
        from diffeig.dncut.eval.pixel_ncut import refine

        refined = refine(image, soft.double(), features, **(pixel or {}))
        soft, r["pixel_mask"], r["pixel_cut"] = refined.soft, refined.mask, refined.cut
        r["pixel_fallback"] = refined.fallback
    # The authors evaluate the map they saved as an 8-bit PNG.
    return metrics.to_8bit(soft), r


def with_features(args, data, protocol: str, desc: str, skipped: list):
    """The readable images of ``data`` with their feature maps: yields
    ``(patch, item, features)``, ``item`` as :class:`_Prepared` gives it. ``protocol``:
    ``'resize'`` (saliency) or ``'pad'`` (discovery), after ``--max-side``; each image's
    memory is estimated first. Unreadable or too-small files go to ``skipped``."""
    from tqdm import tqdm

    backbone = load_backbone(args)
    patch = backbone.patch_size
    prepare = resize_to_patch if protocol == "resize" else pad_to_patch
    prepared = _Prepared(
        data,
        lambda im: prepare(im, patch, args.max_side),
        lambda name, h, w: check_memory(name, h, w, patch, args.max_side, protocol),
    )
    with tqdm(total=len(data), desc=desc, disable=args.quiet) as bar:
        for batch in chunks(prepared, args.batch_size, args.workers):
            batch = readable(batch, skipped, bar)
            feats = extract(backbone, [b[2] for b in batch], args.device)
            for item, f in zip(batch, feats):
                yield patch, item, f
                bar.update(1)


def dataset(args):
    """The dataset of an evaluation command (its files listed and checked)."""
    from diffeig.dncut.eval.datasets import DiscoveryDataset, SaliencyDataset

    kind = SaliencyDataset if args.command == "eval-saliency" else DiscoveryDataset
    return kind(args.dataset, args.root, args.limit)


def eval_saliency(args, data) -> dict:
    per_image, skipped = [], []
    desc = f"saliency {args.dataset}"
    for patch, (name, size, _, gt, image), f in with_features(args, data, "resize", desc, skipped):
        t0 = time.perf_counter()
        soft, r = saliency_map(
            f, args.post, patch, size, image, solver=args.solver, pixel=pixel_ncut.options(args)
        )
        row = dict(name=name, post_seconds=time.perf_counter() - t0)
        row.update(metrics.saliency_scores(soft, gt))
        if "pixel_cut" in r:  # pixel-ncut: whether the cut decided or the fallback did
            row["pixel_cut"], row["pixel_fallback"] = r["pixel_cut"], r["pixel_fallback"]
        per_image.append(row)
    summary = metrics.summarize_saliency(per_image)
    summary["skipped"] = len(skipped)
    # the eigenvectors and post-processing of one image, features excluded
    summary["post_seconds_median"] = float(np.median([r["post_seconds"] for r in per_image]))
    if args.post == "pixel-ncut":
        summary["pixel_fallbacks"] = sum(not r["pixel_cut"] for r in per_image)
        summary["pixel_disagreements"] = sum(
            r["pixel_fallback"] == pixel_ncut.DISAGREES for r in per_image
        )
    rows = [{k: v for k, v in r.items() if k != "f_curve"} for r in per_image]
    return {"summary": summary, "per_image": rows, "skipped": skipped}


# --------------------------------------------------------------------------- discovery


def predict_box(
    features, post: str, patch: int, image_size, solver: str = "dense", image=None, pixel=None
) -> tuple[torch.Tensor, dict]:
    """The box of one image: TokenCut's, the simple cut's, or (``pixel-ncut``) that of
    TokenCut's mask refined at pixel resolution (``image``: the PIL image, shown at
    ``image_size``; the padded token grid is cropped to it)."""
    if post in ("tokencut", "pixel-ncut"):
        r = postprocess.tokencut(features, patch_size=patch, image_size=image_size, solver=solver)
        if post == "tokencut":
            return r["box"], r
        h, w = features.shape[1:]
        H, W = image_size
        prior = postprocess.upsample(r["mask"], (h * patch, w * patch))[:H, :W]
        shown = image.convert("RGB").resize((W, H))
        mask = pixel_ncut.refine(shown, prior, features, **(pixel or {})).mask
        r["pixel_mask"] = mask
        return postprocess.mask_box(mask, 1, image_size), r
    r = postprocess.simple(features, solver=solver)
    box = postprocess.mask_box(r["mask"], patch, image_size)
    return box, r


def eval_discovery(args, data) -> dict:
    per_image, skipped = [], []
    desc = f"discovery {args.dataset}"
    for patch, (name, size, _, gt, image), f in with_features(args, data, "pad", desc, skipped):
        # boxes are found on the (downscaled) image and scaled back to the original
        s = downscale(*size, args.max_side)
        small = (round(size[0] * s), round(size[1] * s))
        box, _ = predict_box(
            f, args.post, patch, small, args.solver, image, pixel_ncut.options(args)
        )
        box = box / s if s < 1 else box
        ious = metrics.box_iou(box, gt) if gt.numel() else torch.zeros(0)
        per_image.append(
            {
                "name": name,
                "box": [round(v, 2) for v in box.tolist()],
                "best_iou": ious.max().item() if ious.numel() else 0.0,
                "hit": metrics.corloc_hit(box, gt),
            }
        )
    n = len(per_image)
    if not n:
        raise ValueError("no images were evaluated (every file was skipped)")
    summary = {
        "images": n,
        "corloc": sum(r["hit"] for r in per_image) / n,
        "skipped": len(skipped),
    }
    return {"summary": summary, "per_image": per_image, "skipped": skipped}


# ------------------------------------------------------------------------------ commands


def _common(p, posts=None, default_post=None):
    p.add_argument(
        "--arch",
        default=None,
        choices=list(ARCHS) + list(BASELINES),
        help="backbone (default: the one an exported --weights file records, else "
        "vit_small_patch16); color: colour + position baseline, random: seeded random ViT-S/16",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="backbone checkpoint: DINO / MAE / MoCo v3, or the output of export (default: none)",
    )
    p.add_argument(
        "--patch-size", type=int, default=None, help="patch of the color backbone (default: 16)"
    )
    p.add_argument(
        "--color-sigma",
        type=float,
        default=None,
        help="the color backbone's colour scale in Lab units (default: 28)",
    )
    p.add_argument(
        "--position-sigma",
        type=float,
        default=None,
        help="the color backbone's position scale, a share of the image side (default: 0.15; "
        "MaskCut: 0.5, docs/pseudo-masks.md)",
    )
    if posts:
        p.add_argument(
            "--post",
            default=default_post,
            choices=posts,
            help=f"post-processing of the eigenvectors (default: {default_post}; "
            "docs/evaluation.md)",
        )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_commands(sub) -> None:
    from diffeig.dncut.eval.datasets import DISCOVERY, SALIENCY

    for cmd, datasets, posts, default in (
        ("eval-saliency", list(SALIENCY), POSTS_SALIENCY, "simple"),
        ("eval-discovery", list(DISCOVERY), POSTS_DISCOVERY, "tokencut"),
    ):
        p = sub.add_parser(cmd, help=f"{cmd[5:]} benchmark of a backbone")
        p.add_argument(
            "--dataset", required=True, choices=datasets, help="which benchmark (its layout)"
        )
        p.add_argument(
            "--root", required=True, help="the dataset's folder (layouts: docs/evaluation.md)"
        )
        _common(p, posts, default)
        p.add_argument(
            "--limit", type=int, default=None, help="only the first N images (default: all)"
        )
        p.add_argument(
            "--batch-size", type=int, default=16, help="images per feature batch (default: 16)"
        )
        p.add_argument(
            "--workers", type=int, default=2, help="image-loading processes (default: 2)"
        )
        p.add_argument(
            "--output",
            default=None,
            help="JSON of the summary and per-image results "
            "(default: runs/eval/<task>-<dataset>-<arch>-<post>.json)",
        )
        p.add_argument(
            "--solver",
            default="auto",
            choices=SOLVERS,
            help="eigen solver of the cuts: auto (the faster for the token count, the same "
            "vectors as dense; dense where the Fiedler value is tied), dense "
            "(torch.linalg.eigh, the authors'), or lobpcg (default: auto)",
        )
        p.add_argument(
            "--max-side",
            type=int,
            default=None,
            help="downscale images whose longer side exceeds this many pixels first "
            "(default: none; an image whose cut would not fit in memory is refused with "
            "the value to pass)",
        )
        p.add_argument(
            "--force", action="store_true", help="replace an existing --output (never an input)"
        )
        pixel_ncut.add_options(p)
    from diffeig.dncut.eval import instances, pseudo_masks

    pseudo_masks.add_command(sub, _common)
    instances.add_command(sub)
    v = sub.add_parser("visualize", help="images, eigenvectors, mask and box side by side")
    v.add_argument("images", nargs="+", help="image files")
    _common(v, POSTS_VISUALIZE, "tokencut")
    pixel_ncut.add_options(v)
    v.add_argument(
        "--out",
        required=True,
        help="a .png/.jpg file (one figure, a row per image) or a folder (one figure per "
        "image, <folder>/<stem>.png)",
    )
    v.add_argument(
        "--force", action="store_true", help="replace existing figures (never an input image)"
    )
    v.add_argument(
        "--eigenvectors", type=int, default=4, help="how many to show, z2, z3, ... (default: 4)"
    )
    v.add_argument(
        "--segments",
        type=int,
        default=None,
        help="also draw K segments from z1 ... zK (k-way rounding), beside z2 ... zK "
        "(sets --eigenvectors to K - 1; default: none)",
    )
    v.add_argument(
        "--max-side",
        type=int,
        default=480,
        help="downscale images whose longer side exceeds this (default: 480)",
    )


# The evaluation commands' numeric options, checked in one place (as train's).
NUMERIC_OPTIONS = {
    "limit": dict(integer=True, lo=1, optional=True),
    "batch_size": dict(integer=True, lo=1),
    "workers": dict(integer=True, lo=0),
    "max_side": dict(integer=True, lo=1, optional=True),
    "patch_size": dict(integer=True, lo=1, hi=1024, optional=True),
    "color_sigma": dict(lo=0, lo_open=True, optional=True),
    "position_sigma": dict(lo=0, lo_open=True, optional=True),
    "eigenvectors": dict(integer=True, lo=1, hi=64),
    "segments": dict(integer=True, lo=2, hi=16, optional=True),
    "pixel_radius": dict(lo=1, hi=32),
    "pixel_sigma_color": dict(lo=0, lo_open=True),
    "pixel_sigma_space": dict(lo=0, lo_open=True),
    "pixel_feature_weight": dict(lo=0),
    "pixel_prior_weight": dict(lo=0),
    "pixel_work_side": dict(integer=True, lo=8, hi=4096),
}


def validate(args) -> None:
    """Raise ``ValueError`` naming the first option out of range (numbers, device)."""
    from diffeig.dncut.config import check_device, check_number

    for name, kwargs in NUMERIC_OPTIONS.items():
        value = getattr(args, name, None)
        if hasattr(args, name) and not (name == "pixel_sigma_color" and value == "auto"):
            check_number(name, value, **kwargs)
    check_device(args.device)


def output_path(args, inputs) -> Path:
    """Where the JSON goes: not one of ``inputs`` (the dataset's files, ``--weights``), not
    an existing file unless ``--force``; checked writable before any work starts."""
    from diffeig.dncut.checkpoint import check_output

    out = Path(
        args.output or f"runs/eval/{args.command[5:]}-{args.dataset}-{args.arch}-{args.post}.json"
    )
    if out.is_dir():
        raise ValueError(f"--output {out} is a directory; give a file name for the JSON")
    if out.suffix.lower() != ".json":
        raise ValueError(f"--output {out}: the results are JSON; give a file name ending in .json")
    weights = getattr(args, "weights", None)
    check_output(out, [*inputs, (weights, "the --weights file")], flag="--output", force=args.force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        existed = out.exists()
        with open(out, "a"):
            pass
        if not existed:
            out.unlink()
    except OSError as err:
        raise ValueError(f"--output {out} is not writable: {err.strerror or err}") from None
    return out


def run(args) -> int:
    if args.command == "eval-instances":
        from diffeig.dncut.eval import instances

        return instances.run(args)
    validate(args)
    args.device = device_of(args.device)
    args.arch = resolve_arch(args)
    if args.command == "pseudo-masks":
        from diffeig.dncut.eval import pseudo_masks

        return pseudo_masks.run(args)
    if args.command == "visualize":
        from diffeig.dncut.eval.visualize import visualize

        for path in visualize(args):
            print(f"wrote {path}")
        return 0
    data = dataset(args)
    out = output_path(args, data.files())
    t0 = time.perf_counter()
    result = (eval_saliency if args.command == "eval-saliency" else eval_discovery)(args, data)
    result["config"] = {
        k: getattr(args, k)
        for k in ("dataset", "root", "arch", "weights", "post", "limit", "solver")
    }
    result["seconds"] = time.perf_counter() - t0
    s = result["summary"]
    s["seconds_per_image"] = result["seconds"] / max(1, s["images"] + s.get("skipped", 0))
    print_summary(args, s)
    atomic_write(out, lambda f: f.write(json.dumps(result, indent=1).encode()))
    print(f"per-image results: {out}")
    return 0


def print_summary(args, s: dict) -> None:
    """One markdown table for both evaluations: images, skipped, the metrics, time per image."""
    src = args.weights or "no weights"
    names = ["IoU", "accuracy", "max F-beta"] if "iou" in s else ["CorLoc"]
    keys = ["iou", "accuracy", "max_f_beta"] if "iou" in s else ["corloc"]
    print(
        "\n| dataset | backbone | post | images | skipped | " + " | ".join(names) + " | s / image |"
    )
    print("|---|---|---|---:|---:|" + "---:|" * len(names) + "---:|")
    vals = " | ".join(f"{100 * s[k]:.1f}" for k in keys)
    print(
        f"| {args.dataset} | {args.arch} ({src}) | {args.post} | {s['images']} | "
        f"{s.get('skipped', 0)} | {vals} | {s['seconds_per_image']:.3f} |"
    )
    if "post_seconds_median" in s:
        print(
            f"eigenvectors and post-processing ({args.post}): median "
            f"{s['post_seconds_median']:.3f} s per image (features excluded)"
        )
    if "pixel_fallbacks" in s:
        print(
            f"pixel-ncut: the pixel cut decided on {s['images'] - s['pixel_fallbacks']} of "
            f"{s['images']} images; TokenCut's bilateral solver refined the others: "
            f"{s['pixel_fallbacks'] - s['pixel_disagreements']} where the cut was not "
            f"decisive (l2 > {pixel_ncut.DECISIVE} l3), {s['pixel_disagreements']} where it "
            f"disagreed with the token mask on most pixels"
        )
    if s.get("skipped"):
        print(
            f"skipped {s['skipped']} unreadable file(s) or images too small to cut; "
            "their names are in the JSON"
        )
