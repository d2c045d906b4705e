"""``visualize``: per image, side by side: the image, the eigenvectors z2, z3, ... as heat
maps (the paper's Fig. 4), the mask over the image, and the box. Pillow only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from diffeig.dncut.checkpoint import check_output
from diffeig.dncut.eval import pixel_ncut, postprocess
from diffeig.dncut.eval.features import check_memory, extract, load_backbone, resize_to_patch
from diffeig.dncut.figures import compose, heat, overlay
from diffeig.dncut.figures import segments as draw_segments
from diffeig.dncut.images import read_image
from diffeig.ncut import kway

# What --out may end in for one figure (any other --out is a folder of figures).
FIGURE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def panel(
    image: Image.Image,
    features: torch.Tensor,
    patch: int,
    post: str,
    count: int,
    pixel=None,
    segments: int | None = None,
):
    """One row: image | z2 ... z_{count+1} | mask | box, all at the image's display size;
    with ``post='pixel-ncut'``: image | z... | token mask | pixel-ncut soft map | its
    mask | its box. With ``segments = K``: z2 ... zK and, after them, the K segments of
    :func:`diffeig.ncut.kway` on z1 ... zK (the paper's Fig. 4)."""
    if segments:
        count = segments - 1
    h, w = features.shape[1:]
    grid_size = (h * patch, w * patch)
    k = count + 1
    refined = None
    if post in ("tokencut", "pixel-ncut"):
        r = postprocess.tokencut(features, patch_size=patch, image_size=grid_size, k=k)
        box = r["box"].tolist()
    else:
        r = postprocess.simple(features, k=k)
        box = postprocess.mask_box(r["mask"], patch, grid_size).tolist()
    shown = image.resize((w * patch, h * patch), Image.BILINEAR)
    if post == "pixel-ncut":
        prior = postprocess.upsample(r["mask"], (h * patch, w * patch))
        refined = pixel_ncut.refine(shown, prior, features, **(pixel or {}))
        box = postprocess.mask_box(refined.mask, 1, (h * patch, w * patch)).tolist()
    tiles = [shown]
    Z = r["z"].numpy()
    for j in range(1, min(k, Z.shape[-1])):
        tiles.append(heat(Z[..., j], shown.size))
    extra = []
    if segments and Z.shape[-1] >= segments:
        labels = kway(r["z"].reshape(h * w, -1), segments, start=0).reshape(h, w).numpy()
        tiles.append(draw_segments(shown, labels))
        extra = [f"{segments} segments of z1 ... z{segments} (Yu & Shi's rounding)"]
    tiles.append(overlay(shown, r["mask"].numpy().astype(np.float64)))
    if refined is not None:
        tiles.append(overlay(shown, refined.soft.numpy()))
        tiles.append(overlay(shown, refined.mask.numpy().astype(np.float64)))
    boxed = shown.copy()
    ImageDraw.Draw(boxed).rectangle(box, outline=(255, 230, 0), width=max(2, shown.width // 150))
    tiles.append(boxed)
    labels = (
        ["image"]
        + [
            f"z{j + 1}: eigenvector {j + 1} (blue < 0 < red; scale: 98th percentile of |z|)"
            for j in range(1, len(tiles) - len(extra) - (4 if refined is not None else 2))
        ]
        + extra
        + (
            [
                "token mask (tokencut)",
                f"pixel-ncut soft map ({_how(refined)})",
                "pixel-ncut mask",
                "box (pixel-ncut)",
            ]
            if refined is not None
            else [f"foreground mask ({post})", f"box ({post})"]
        )
    )
    return tiles, labels


def _how(refined) -> str:
    if refined.cut:
        return f"the pixel cut: l2 / l3 = {refined.gap_ratio:.2f}"
    if refined.fallback == pixel_ncut.DISAGREES:
        return "the cut disagreed with the token mask: bilateral solver"
    return f"not decisive, l2 / l3 = {refined.gap_ratio:.2f}: bilateral solver"


def visualize(args) -> list[str]:
    """Write the figures; returns their paths.

    ``--out`` ending in ``.png``, ``.jpg`` or ``.jpeg`` is one figure with a row per image;
    an existing folder or a name without an extension gets one figure per image, named
    after it (``<folder>/<stem>.png``); any other extension is refused. No figure replaces
    an input image or the weights, and an existing one is replaced only with ``--force``.
    """
    if args.eigenvectors < 1:
        raise ValueError(f"--eigenvectors must be at least 1, got {args.eigenvectors}")
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such image(s): {', '.join(missing)}")
    out = Path(args.out)
    folder = out.is_dir() or out.suffix == ""
    if not folder and out.suffix.lower() not in FIGURE_EXTENSIONS:
        raise ValueError(
            f"--out {out}: give a file ending in {', '.join(FIGURE_EXTENSIONS)} (one figure) "
            "or a folder (a figure per image)"
        )
    if not folder and out.exists() and not out.is_file():
        raise ValueError(f"--out {out} exists and is not a file")
    targets = [out] if not folder else _folder_targets(out, args.images)
    inputs = [(p, "an input image") for p in args.images]
    if getattr(args, "weights", None):
        inputs.append((args.weights, "the --weights file"))
    for target in targets:
        check_output(target, inputs, flag="--out", force=args.force)
    images = [read_image(p) for p in args.images]  # every file is checked before any work
    backbone = load_backbone(args)
    patch = backbone.patch_size
    for path, image in zip(args.images, images):
        check_memory(path, image.height, image.width, patch, args.max_side, "resize")
    rows = []
    for image in images:
        x = resize_to_patch(image, patch, args.max_side)
        (f,) = extract(backbone, [x], args.device)
        rows.append(
            panel(
                image,
                f,
                patch,
                args.post,
                args.eigenvectors,
                pixel_ncut.options(args),
                segments=args.segments,
            )
        )
    if not folder:
        out.parent.mkdir(parents=True, exist_ok=True)
        compose(rows, [Path(p).name for p in args.images]).save(out)
        return [str(out)]
    out.mkdir(parents=True, exist_ok=True)
    for path, row, target in zip(args.images, rows, targets):
        compose([row], [Path(path).name]).save(target)
    return [str(t) for t in targets]


def _folder_targets(out: Path, images) -> list[Path]:
    """``<out>/<stem>.png`` per image, ``<stem>-1.png`` ... where stems repeat."""
    targets: list[Path] = []
    for path in images:
        target = out / f"{Path(path).stem}.png"
        n = 1
        while target in targets:  # two inputs with one stem
            target = out / f"{Path(path).stem}-{n}.png"
            n += 1
        targets.append(target)
    return targets
