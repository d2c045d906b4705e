"""Figure primitives that training and evaluation both draw with: a diverging heat map
of an eigenvector, a mask over an image, and labelled grids of tiles. Pillow only."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["compose", "heat", "overlay"]


def font_for(width: int):
    """Pillow's default font at a size that reads on a tile ``width`` pixels wide (a
    twenty-fifth of it, at least 11 px); its bitmap font where FreeType is missing."""
    size = max(11, width // 25)
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1, or no FreeType
        return ImageFont.load_default()


def _line_height(font) -> int:
    box = font.getbbox("Ag+0.(")
    return box[3] - box[1] + max(2, (box[3] - box[1]) // 4)


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
    colour bar at its right edge labelled with the scale (the labels fit inside it)."""
    s = robust_scale(z)
    width, height = size
    font = font_for(width)
    labels = (f"+{s:.2g}", "0", f"-{s:.2g}")
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = int(max(scratch.textlength(t, font=font) for t in labels))
    ramp_w = max(8, width // 60)
    bar = ramp_w + text_w + 12 if colorbar and width > 4 * (ramp_w + text_w + 12) else 0
    tile = Image.fromarray(_diverging(z / s)).resize((width - bar, height), Image.NEAREST)
    if not bar:
        return tile
    canvas = Image.new("RGB", size, "white")
    canvas.paste(tile, (0, 0))
    line_h = _line_height(font)
    top, bottom = line_h // 2, height - line_h // 2
    ramp = np.linspace(1.0, -1.0, max(2, bottom - top))[:, None].repeat(ramp_w, 1)
    canvas.paste(Image.fromarray(_diverging(ramp)), (width - bar + 3, top))
    draw = ImageDraw.Draw(canvas)
    x = width - bar + ramp_w + 7
    for y, text in zip((top, (top + bottom) // 2, bottom), labels):
        draw.text((x, y), text, fill=(0, 0, 0), font=font, anchor="lm")
    return canvas


def overlay(image: Image.Image, mask: np.ndarray) -> Image.Image:
    m = Image.fromarray((mask * 255).astype(np.uint8)).resize(image.size, Image.BILINEAR)
    tint = Image.new("RGB", image.size, (255, 40, 40))
    dim = Image.blend(image, Image.new("RGB", image.size, (0, 0, 0)), 0.55)
    return Image.composite(Image.blend(image, tint, 0.35), dim, m)


# Colours of segments 0, 1, ... (Okabe-Ito, distinguishable with colour blindness).
PALETTE = [
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
    (213, 94, 0), (204, 121, 167), (120, 120, 120),
]  # fmt: skip


def segments(image: Image.Image, labels: np.ndarray) -> Image.Image:
    """A label map ``(h, w)`` (ints) as colours over the image, blocks per token."""
    colours = np.array([PALETTE[i % len(PALETTE)] for i in range(int(labels.max()) + 1)])
    tiles = Image.fromarray(colours[labels].astype(np.uint8)).resize(image.size, Image.NEAREST)
    return Image.blend(image, tiles, 0.6)


def _wrap(draw, text: str, width: int, font=None) -> list[str]:
    """``text`` broken into lines no wider than ``width`` pixels (words kept whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
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
    grid, font = _grid(rows, row_labels, header)
    if not footer:
        return grid
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [ln for text in footer for ln in _wrap(scratch, text, grid.width - 8, font)]
    line_h = _line_height(font)
    canvas = Image.new("RGB", (grid.width, grid.height + line_h * len(lines) + 6), "white")
    canvas.paste(grid, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for n, line in enumerate(lines):
        draw.text((4, grid.height + 2 + line_h * n), line, fill=(0, 0, 0), font=font)
    return canvas


def _grid(rows, row_labels, header):
    """The grid and the font its labels were drawn with (sized to the tiles)."""
    pad = 4
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    tile_w = max(t.width for tiles, _ in rows for t in tiles)
    tile_h = max(t.height for tiles, _ in rows for t in tiles)
    cols = max(len(tiles) for tiles, _ in rows)
    font = font_for(tile_w)
    line_h = _line_height(font)
    wrapped = [[_wrap(scratch, lab, tile_w, font) for lab in labels] for _, labels in rows]
    label_h = line_h * max(len(lines) for row in wrapped for lines in row)
    margin = 0
    if row_labels:
        margin = int(max(scratch.textlength(t, font=font) for t in row_labels)) + 2 * pad
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
            y_row = y_tile + tile_h // 2 - line_h // 2
            draw.text((pad, y_row), row_labels[i], fill=(0, 0, 0), font=font)
        for j, (t, lines) in enumerate(zip(tiles, wrapped[i])):
            x = margin + pad + j * (tile_w + pad)
            if labelled:
                y_text = y - top if header else y
                for n, line in enumerate(lines):
                    draw.text((x, y_text + n * line_h), line, fill=(0, 0, 0), font=font)
            canvas.paste(t, (x, y_tile))
    return canvas, font
