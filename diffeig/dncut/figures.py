"""Figure primitives that training and evaluation both draw with: a diverging heat map
of an eigenvector, a mask over an image, and labelled grids of tiles. Pillow only."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["compose", "heat", "overlay"]


def robust_scale(z: np.ndarray, percentile: float = 98.0) -> float:
    """The ``percentile`` of ``|z|`` (symmetric around 0): one outlier token no longer sets
    the scale (with max |z|, z3 - z5 of real images came out blank, one red pixel)."""
    s = float(np.percentile(np.abs(z), percentile)) if z.size else 0.0
    return s if s > 0 else float(np.abs(z).max()) or 1.0


def _diverging(v: np.ndarray) -> np.ndarray:
    """Blue (-1) - white (0) - red (+1), ``v`` clipped to [-1, 1]; RGB uint8."""
    v = np.clip(v, -1.0, 1.0)
    r = np.where(v > 0, 1.0, 1.0 + v)
    b = np.where(v < 0, 1.0, 1.0 - v)
    g = 1.0 - np.abs(v)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def heat(z: np.ndarray, size, *, colorbar: bool = True) -> Image.Image:
    """A diverging map (blue < 0 < red, white at 0) of one eigenvector at ``size``,
    scaled symmetrically by the 98th percentile of ``|z|`` (beyond it: saturated), with a
    colour bar at its right edge labelled with the scale."""
    s = robust_scale(z)
    width, height = size
    bar = 34 if colorbar and width > 120 else 0
    tile = Image.fromarray(_diverging(z / s)).resize((width - bar, height), Image.NEAREST)
    if not bar:
        return tile
    canvas = Image.new("RGB", size, "white")
    canvas.paste(tile, (0, 0))
    ramp = np.linspace(1.0, -1.0, max(2, height - 24))[:, None].repeat(8, 1)
    canvas.paste(Image.fromarray(_diverging(ramp)), (width - bar + 3, 12))
    draw = ImageDraw.Draw(canvas)
    for y, text in ((0, f"+{s:.2g}"), (height // 2 - 5, "0"), (height - 11, f"-{s:.2g}")):
        draw.text((width - bar + 12, y), text, fill=(0, 0, 0))
    return canvas


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
    rows: list[tuple[list, list]],
    row_labels: list[str] | None = None,
    header: bool = False,
    footer: list[str] | None = None,
) -> Image.Image:
    """Tiles in a grid, each under its label (wrapped to the tile's width), each row
    after its label (``row_labels``) in a left margin. ``header``: the rows share their
    column labels, drawn once above the first. ``footer``: lines of legend below."""
    grid = _grid(rows, row_labels, header)
    if not footer:
        return grid
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [ln for text in footer for ln in _wrap(scratch, text, grid.width - 8)]
    canvas = Image.new("RGB", (grid.width, grid.height + 12 * len(lines) + 6), "white")
    canvas.paste(grid, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for n, line in enumerate(lines):
        draw.text((4, grid.height + 2 + 12 * n), line, fill=(0, 0, 0))
    return canvas


def _grid(rows, row_labels, header) -> Image.Image:
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
