"""Images on disk and generated: what training and evaluation both read.

Folders and file lists of images, decoding that names the file it could not read, and
the seeded synthetic images (shapes on textured backgrounds, with masks) that the demo,
the tests and ``--data synthetic:N`` use.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

# Pillow is imported where images are made or read: the command line's --help works
# without the recipe's extra dependencies.

__all__ = [
    "IMAGE_EXTENSIONS",
    "UnreadableImage",
    "list_images",
    "read_image",
    "synthetic_image",
    "write_synthetic",
    "multi_object_image",
    "write_multi_object",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


def list_images(source: str | os.PathLike, flag: str = "--data") -> list[str]:
    """Image paths from a folder (flat or ImageFolder layout, searched recursively) or
    a text file with one path per line (relative paths are taken from the file's folder).
    Errors name the option ``flag``."""
    src = Path(source)
    if src.is_dir():
        paths = sorted(
            str(p) for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
    elif src.is_file():
        if src.suffix.lower() in IMAGE_EXTENSIONS:
            raise ValueError(
                f"{flag} {source} is one image; give a folder of images or a text file "
                "listing image paths, one a line"
            )
        try:
            lines = [ln.strip() for ln in src.read_text().splitlines()]
        except UnicodeDecodeError:
            raise ValueError(
                f"{flag} {source} is neither a folder nor a text file listing image paths "
                "(it is not UTF-8 text)"
            ) from None
        paths = [str(p if Path(p).is_absolute() else src.parent / p) for p in lines if ln_ok(p)]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(
                f"{flag} {source}: {len(missing)} listed files do not exist (or are not regular "
                f"files), e.g. {missing[:5]}"
            )
    else:
        raise FileNotFoundError(f"{flag}: no such folder or file list: {source}")
    if not paths:
        raise ValueError(f"{flag} {source}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    return paths


class UnreadableImage(ValueError):
    """An image file that Pillow cannot decode (corrupt, truncated, empty, not an image)."""


def read_image(path, mode: str | None = "RGB"):
    """The image at ``path`` decoded into memory, upright (its EXIF orientation applied,
    as a viewer shows it), converted to ``mode`` (``None`` keeps the file's own, e.g. a
    palette), or ``UnreadableImage`` naming the file. 16-bit and 32-bit grey images are
    scaled to 8 bits by their white (Pillow's own conversion clips them to white). Only
    regular files are opened: a FIFO or device named ``*.png`` would block."""
    from PIL import Image, ImageOps

    if not os.path.isfile(path):
        raise UnreadableImage(f"{path}: not a regular file")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if mode and im.mode in WIDE_GREY:
                im = _to_8bit(im)
            return im.convert(mode) if mode else im.copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImage(f"cannot read image {path}: {err}") from None


# Grey modes wider than 8 bits, which Image.convert("RGB") clips instead of scaling.
WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _to_8bit(im):
    """A 16-bit / 32-bit grey image as 8-bit grey: divided by its white (255 where the
    values fit 8 bits, 1 for floats in [0, 1], else 65535)."""
    import numpy as np
    from PIL import Image

    a = np.asarray(im).astype(np.float64)
    top = float(a.max()) if a.size else 0.0
    if im.mode == "F" and top <= 1:
        white = 1.0
    else:
        white = 255.0 if top <= 255 else 65535.0
    return Image.fromarray(np.clip(np.round(a / white * 255), 0, 255).astype(np.uint8), "L")


def ln_ok(line: str) -> bool:
    return bool(line) and not line.startswith("#")


# ------------------------------------------------------------------------ synthetic images


def synthetic_image(index: int, size: int = 224, seed: int = 0):
    """A seeded image of one to three shapes on a textured background, and its mask.

    Returns ``(PIL RGB image, PIL L mask)`` (mask 255 on the shapes).
    """
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(f"{seed}:{index}")
    bg = tuple(rng.randrange(40, 216) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    period = rng.randrange(6, 20)  # stripes or checks of a nearby colour
    tone = tuple(min(255, max(0, c + rng.randrange(-40, 41))) for c in bg)
    for t in range(-size, 2 * size, period):
        if rng.random() < 0.5:
            draw.line([(t, 0), (t + size // 2, size)], fill=tone, width=max(1, period // 3))
    img = img.filter(ImageFilter.GaussianBlur(1))
    mask = Image.new("L", (size, size), 0)
    mdraw = ImageDraw.Draw(mask)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 3)):
        fg = tuple((c + rng.randrange(80, 176)) % 256 for c in bg)
        r = rng.uniform(0.12, 0.3) * size
        cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
        box = [cx - r, cy - r * rng.uniform(0.6, 1.0), cx + r, cy + r * rng.uniform(0.6, 1.0)]
        kind = rng.choice(["ellipse", "rectangle", "triangle"])
        if kind == "ellipse":
            draw.ellipse(box, fill=fg)
            mdraw.ellipse(box, fill=255)
        elif kind == "rectangle":
            draw.rectangle(box, fill=fg)
            mdraw.rectangle(box, fill=255)
        else:
            pts = [(box[0], box[3]), (box[2], box[3]), (cx, box[1])]
            draw.polygon(pts, fill=fg)
            mdraw.polygon(pts, fill=255)
    return img, mask


def write_synthetic(root: str | os.PathLike, n: int, size: int = 224, seed: int = 0) -> list[str]:
    """Write ``n`` synthetic images to ``root/images`` and their masks to ``root/masks``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img, mask = synthetic_image(i, size, seed)
        img.save(root / "images" / f"{i:05d}.png")
        mask.save(root / "masks" / f"{i:05d}.png")
        paths.append(str(root / "images" / f"{i:05d}.png"))
    return paths


def multi_object_image(index: int, size: int = 224, seed: int = 0):
    """A seeded image of two to four objects on a textured background, and their masks.

    Each object is an ellipse, rectangle or triangle of its own colour (far from the
    background's and the other objects' in RGB) with its own texture (plain, stripes or
    dots); objects do not overlap. Returns ``(PIL RGB image, [PIL L mask per object])``,
    a mask 255 on its object: the ground truth of the multi-object tests.
    """
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(f"multi:{seed}:{index}")
    bg = tuple(rng.randrange(60, 196) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    period = rng.randrange(8, 20)
    tone = tuple(min(255, max(0, c + rng.randrange(-25, 26))) for c in bg)
    for t in range(-size, 2 * size, period):
        draw.line([(t, 0), (t + size // 2, size)], fill=tone, width=max(1, period // 4))
    img = img.filter(ImageFilter.GaussianBlur(1))
    draw = ImageDraw.Draw(img)
    colours, boxes, masks = [bg], [], []
    for _ in range(rng.randint(2, 4)):
        for _try in range(50):
            r = rng.uniform(0.1, 0.18) * size
            cx, cy = rng.uniform(r + 2, size - r - 2), rng.uniform(r + 2, size - r - 2)
            box = [cx - r, cy - r * rng.uniform(0.7, 1.0), cx + r, cy + r * rng.uniform(0.7, 1.0)]
            apart = all(
                box[2] + 6 < b[0] or b[2] + 6 < box[0] or box[3] + 6 < b[1] or b[3] + 6 < box[1]
                for b in boxes
            )
            fg = tuple(rng.randrange(0, 256) for _ in range(3))
            distinct = all(sum((a - b) ** 2 for a, b in zip(fg, c)) > 110**2 for c in colours)
            if apart and distinct:
                break
        else:
            continue  # no room left for another object
        boxes.append(box)
        colours.append(fg)
        mask = Image.new("L", (size, size), 0)
        kind = rng.choice(["ellipse", "rectangle", "triangle"])
        shape = getattr(ImageDraw.Draw(mask), "polygon" if kind == "triangle" else kind)
        triangle = [(box[0], box[3]), (box[2], box[3]), (cx, box[1])]
        shape(triangle if kind == "triangle" else box, fill=255)
        texture = Image.new("RGB", (size, size), fg)
        tdraw = ImageDraw.Draw(texture)
        dark = tuple(int(c * 0.8) for c in fg)
        style = rng.choice(["plain", "stripes", "dots"])
        step = rng.randrange(5, 9)
        for t in range(0, size, step):
            if style == "stripes":
                tdraw.line([(0, t), (size, t)], fill=dark, width=2)
            elif style == "dots":
                for u in range(0, size, step):
                    tdraw.ellipse([u, t, u + 2, t + 2], fill=dark)
        img.paste(texture, (0, 0), mask)
        masks.append(mask)
    return img, masks


def write_multi_object(root: str | os.PathLike, n: int, size: int = 224, seed: int = 0) -> Path:
    """Write ``n`` images of :func:`multi_object_image` to ``root/images`` and their ground
    truth as COCO instances (one class, RLE masks, boxes, areas) to
    ``root/instances.json``; returns that file's path. Needs pycocotools."""
    import json

    import numpy as np

    from diffeig.dncut.coco import dataset, instance

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n):
        img, masks = multi_object_image(i, size, seed)
        name = f"{i:05d}.png"
        img.save(root / "images" / name)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for m in masks:
            mask = np.asarray(m) > 127
            annotations.append(instance(mask, id=len(annotations) + 1, image_id=i + 1))
    out = root / "instances.json"
    out.write_text(json.dumps(dataset(images, annotations, "generated multi-object images")))
    return out
