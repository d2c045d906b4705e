"""Figure primitives that training and evaluation both draw with: a diverging heat map
of an eigenvector, a mask over an image, and labelled grids of tiles. Pillow only."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["compose", "heat", "overlay"]


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
