"""``visualize``: per image, side by side: the image, the eigenvectors z2, z3, ... as heat
maps (the paper's Fig. 4), the mask over the image, and the box. Pillow only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from diffeig.dncut import postprocess


def heat(z: np.ndarray, size) -> Image.Image:
    """A diverging map (blue < 0 < red, white at 0) of one eigenvector, scaled by max |z|."""
    v = z / (np.abs(z).max() + 1e-12)
    r = np.where(v > 0, 1.0, 1.0 + v)
    b = np.where(v < 0, 1.0, 1.0 - v)
    g = 1.0 - np.abs(v)
    rgb = (np.stack([r, g, b], -1) * 255).astype(np.uint8)
    return Image.fromarray(rgb).resize(size, Image.NEAREST)


def overlay(image: Image.Image, mask: np.ndarray) -> Image.Image:
    m = Image.fromarray((mask * 255).astype(np.uint8)).resize(image.size, Image.BILINEAR)
    tint = Image.new("RGB", image.size, (255, 40, 40))
    dim = Image.blend(image, Image.new("RGB", image.size, (0, 0, 0)), 0.55)
    return Image.composite(Image.blend(image, tint, 0.35), dim, m)


def panel(image: Image.Image, features: torch.Tensor, patch: int, post: str, count: int):
    """One row: image | z2 ... z_{count+1} | mask | box, all at the image's display size."""
    h, w = features.shape[1:]
    grid_size = (h * patch, w * patch)
    k = count + 1
    if post == "tokencut":
        r = postprocess.tokencut(features, patch_size=patch, image_size=grid_size, k=k)
        box = r["box"].tolist()
    else:
        r = postprocess.simple(features, k=k)
        box = postprocess.mask_box(r["mask"], patch, grid_size).tolist()
    shown = image.resize((w * patch, h * patch), Image.BILINEAR)
    tiles = [shown]
    Z = r["z"].numpy()
    for j in range(1, min(k, Z.shape[-1])):
        tiles.append(heat(Z[..., j], shown.size))
    tiles.append(overlay(shown, r["mask"].numpy().astype(np.float64)))
    boxed = shown.copy()
    ImageDraw.Draw(boxed).rectangle(box, outline=(255, 230, 0), width=max(2, shown.width // 150))
    tiles.append(boxed)
    labels = (
        ["image"]
        + [f"z{j + 1}: eigenvector {j + 1} (blue < 0 < red)" for j in range(1, len(tiles) - 2)]
        + [f"foreground mask ({post})", f"box ({post})"]
    )
    return tiles, labels


def _wrap(draw, text: str, width: int) -> list[str]:
    """``text`` broken into lines no wider than ``width`` pixels (words kept whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def compose(
    rows: list[tuple[list, list]], row_labels: list[str] | None = None, header: bool = False
) -> Image.Image:
    """Tiles in a grid, each under its label (wrapped to the tile's width), each row
    after its label (``row_labels``) in a left margin. ``header``: the rows share their
    column labels, drawn once above the first."""
    pad = 4
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    tile_w = max(t.width for tiles, _ in rows for t in tiles)
    tile_h = max(t.height for tiles, _ in rows for t in tiles)
    cols = max(len(tiles) for tiles, _ in rows)
    line_h = 12
    wrapped = [[_wrap(scratch, lab, tile_w) for lab in labels] for _, labels in rows]
    label_h = line_h * max(len(lines) for row in wrapped for lines in row)
    margin = 0
    if row_labels:
        margin = int(max(scratch.textlength(t) for t in row_labels)) + 2 * pad
    row_h = tile_h + (0 if header else label_h) + pad
    top = label_h if header else 0
    canvas = Image.new(
        "RGB",
        (margin + cols * (tile_w + pad) + pad, top + len(rows) * row_h + pad),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    for i, (tiles, _) in enumerate(rows):
        y = pad + top + i * row_h  # the tiles' labels (if any) start here
        labelled = not header or i == 0
        y_tile = y + (0 if header else label_h)
        if row_labels:
            draw.text((pad, y_tile + tile_h // 2 - line_h // 2), row_labels[i], fill=(0, 0, 0))
        for j, (t, lines) in enumerate(zip(tiles, wrapped[i])):
            x = margin + pad + j * (tile_w + pad)
            if labelled:
                y_text = y - top if header else y
                for n, line in enumerate(lines):
                    draw.text((x, y_text + n * line_h), line, fill=(0, 0, 0))
            canvas.paste(t, (x, y_tile))
    return canvas


def visualize(args) -> list[str]:
    """Write the figures; returns their paths.

    ``--out`` ending in an image extension (``.png``, ``.jpg``) is one figure with a row
    per image; any other ``--out`` (an existing folder, or a new one) gets one figure per
    image, named after it (``<folder>/<stem>.png``).
    """
    from diffeig.dncut.data import read_image
    from diffeig.dncut.evaluate import extract, load_backbone, resize_to_patch

    if args.eigenvectors < 1:
        raise ValueError(f"--eigenvectors must be at least 1, got {args.eigenvectors}")
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such image(s): {', '.join(missing)}")
    out = Path(args.out)
    folder = out.is_dir() or out.suffix.lower() not in (".png", ".jpg", ".jpeg")
    if not folder and out.exists() and not out.is_file():
        raise ValueError(f"--out {out} exists and is not a file")
    images = [read_image(p) for p in args.images]  # every file is checked before any work
    backbone = load_backbone(args)
    patch = backbone.patch_size
    rows = []
    for image in images:
        x = resize_to_patch(image, patch, args.max_side)
        (f,) = extract(backbone, [x], args.device)
        rows.append(panel(image, f, patch, args.post, args.eigenvectors))
    if not folder:
        out.parent.mkdir(parents=True, exist_ok=True)
        compose(rows, [Path(p).name for p in args.images]).save(out)
        return [str(out)]
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for path, row in zip(args.images, rows):
        target = out / f"{Path(path).stem}.png"
        n = 1
        while str(target) in written:  # two inputs with one stem
            target = out / f"{Path(path).stem}-{n}.png"
            n += 1
        compose([row], [Path(path).name]).save(target)
        written.append(str(target))
    return written
