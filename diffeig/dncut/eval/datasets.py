"""Evaluation datasets in their standard layouts.

Saliency items: ``(name, PIL image, bool mask tensor (H, W))``. Discovery items:
``(name, PIL image, boxes tensor (M, 4))`` with boxes in pixel edges ``x1, y1, x2, y2``.
Every loader checks its files up front and raises one error listing what is missing.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

from diffeig.dncut.images import IMAGE_EXTENSIONS, UnreadableImage, read_image

# name -> (image folder, mask folder), relative to --root
SALIENCY = {
    "ecssd": ("images", "ground_truth_mask"),
    "duts-te": ("DUTS-TE-Image", "DUTS-TE-Mask"),
    "dut-omron": ("DUT-OMRON-image", "pixelwiseGT-new-PNG"),
    "folder": ("images", "masks"),
}
DISCOVERY = ("voc07", "voc12", "coco20k", "boxes")


def _files(folder: Path) -> dict[str, Path]:
    """Image files by stem; only regular files (a FIFO named ``*.png`` would block a read).
    Two files with one stem (``a.jpg``, ``a.png``) are an error naming both: which of them
    pairs with a mask or annotation would be a guess."""
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            if p.stem in files:
                raise ValueError(
                    f"--root: {files[p.stem]} and {p} have the same name {p.stem!r}; "
                    "keep one of them (images and masks are paired by name)"
                )
            files[p.stem] = p
    return files


def read_mask(path: Path) -> torch.Tensor:
    """A ground-truth mask as ``(H, W)`` float32 in [0, 1], whatever binary convention the
    file uses, or ``UnreadableImage`` naming the file where it is ambiguous.

    - Grey (8-bit 'L', 1-bit, 16-bit 'I;16' / 'I', float 'F'): a mask whose values are only
      0 and 1 is read as 0/1; otherwise the grey levels are scaled by the type's white
      (255, or 65535 for 16-bit, or 1 for floats up to 1) and kept, as the authors'
      measure.py reads the anti-aliased edges (L / 255).
    - Palette ('P'): by its indices (index 0 background, any other foreground): converted
      to grey, VOC's dark red 1 fell below 0.5 and the whole mask read as background.
    - Colour (RGB / RGBA): grey where the channels agree; otherwise black (or the most
      frequent colour where there is no black) is background and one other colour is
      foreground; more colours than that are ambiguous and refused.
    """
    im = read_image(path, None)
    if im.mode == "P":
        return torch.from_numpy((np.asarray(im) != 0).astype(np.float32))
    if im.mode in ("LA", "PA"):
        im = im.convert("L") if im.mode == "LA" else im.convert("P")
        if im.mode == "P":
            return torch.from_numpy((np.asarray(im) != 0).astype(np.float32))
    if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        return _colour_mask(np.asarray(im.convert("RGB")), path)
    a = np.asarray(im)
    if a.dtype == bool:
        return torch.from_numpy(a.astype(np.float32))
    values = np.unique(a)
    if values.size and values.min() < 0:
        raise UnreadableImage(f"{path}: mask holds negative values ({values.min()})")
    if set(values.tolist()) <= {0, 1}:
        return torch.from_numpy(a.astype(np.float32))
    top = values.max()
    white = 1.0 if a.dtype.kind == "f" and top <= 1 else 255.0 if top <= 255 else 65535.0
    if top > white:
        raise UnreadableImage(f"{path}: mask values up to {top} exceed 16-bit white (65535)")
    return torch.from_numpy((a.astype(np.float64) / white).astype(np.float32))


def _colour_mask(rgb: np.ndarray, path: Path) -> torch.Tensor:
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        grey = rgb[..., 0]
        if set(np.unique(grey).tolist()) <= {0, 1}:
            return torch.from_numpy(grey.astype(np.float32))
        return torch.from_numpy(grey.astype(np.float32) / 255)
    colours, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
    if len(colours) != 2:
        raise UnreadableImage(
            f"{path}: a colour mask must hold exactly two colours (background and one "
            f"foreground colour), got {len(colours)}; save it as a grey or palette PNG"
        )
    black = np.flatnonzero((colours == 0).all(-1))
    bg = colours[black[0]] if black.size else colours[np.argmax(counts)]
    return torch.from_numpy((rgb != bg).any(-1).astype(np.float32))


def _need_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"--root: {what} folder {path} does not exist")


def _mismatch(kind: str, names, limit=10) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)} {kind}: {', '.join(names[:limit])}{more}"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None


def _check_box_table(table, path: Path) -> None:
    """``boxes.json``: ``{"image file name": [[x1, y1, x2, y2], ...]}``."""

    def is_box(b):
        return (
            isinstance(b, list)
            and len(b) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)
            and all(math.isfinite(v) for v in b)
        )

    if not isinstance(table, dict):
        raise ValueError(f"{path}: must map image file names to lists of boxes")
    bad = sorted(k for k, v in table.items() if not (isinstance(v, list) and all(map(is_box, v))))
    if bad:
        raise ValueError(
            f"{path}: "
            + _mismatch("entries are not lists of [x1, y1, x2, y2] boxes of finite numbers", bad)
        )


class BoxWarning(UserWarning):
    """A ground-truth box that is inverted or lies outside its image: it can never be hit."""


def check_boxes(boxes: torch.Tensor, width: int, height: int, name: str) -> None:
    """Warn (naming the image) about boxes with ``x1 >= x2`` or ``y1 >= y2`` and boxes
    that lie outside the image: every prediction misses them, which lowers CorLoc
    silently. They are kept, as the annotation gives them."""
    import warnings

    if not boxes.numel():
        return
    x1, y1, x2, y2 = boxes.unbind(-1)
    inverted = int(((x1 >= x2) | (y1 >= y2)).sum())
    outside = int(((x2 <= 0) | (y2 <= 0) | (x1 >= width) | (y1 >= height)).sum())
    if inverted or outside:
        warnings.warn(
            f"{name}: {inverted} inverted (x1 >= x2 or y1 >= y2) and {outside} outside the "
            f"{width}x{height} image of {boxes.shape[0]} ground-truth box(es); no "
            "prediction can hit them (check the annotation's box format: x1, y1, x2, y2 in "
            "pixels)",
            BoxWarning,
            stacklevel=2,
        )


class SaliencyDataset:
    """ECSSD, DUTS-TE, DUT-OMRON or a generic ``images/`` + ``masks/`` pair (by file stem)."""

    def __init__(self, name: str, root: str, limit: int | None = None):
        if name not in SALIENCY:
            raise ValueError(f"--dataset must be one of {sorted(SALIENCY)}, got {name!r}")
        root = Path(root)
        img_dir, mask_dir = (root / d for d in SALIENCY[name])
        _need_dir(img_dir, "image")
        _need_dir(mask_dir, "mask")
        images, masks = _files(img_dir), _files(mask_dir)
        problems = []
        if set(images) - set(masks):
            problems.append(_mismatch("images without a mask", set(images) - set(masks)))
        if set(masks) - set(images):
            problems.append(_mismatch("masks without an image", set(masks) - set(images)))
        if problems:
            raise ValueError(f"--root {root} ({name}): " + "; ".join(problems))
        if not images:
            raise ValueError(f"--root {root} ({name}): no images in {img_dir}")
        self.all_items = [(k, images[k], masks[k]) for k in sorted(images)]
        self.items = self.all_items[:limit]

    def files(self) -> list[tuple[Path, str]]:
        """Every file the evaluation reads, with what it is (an output must be none)."""
        return [(p, "a dataset image") for _, p, _ in self.all_items] + [
            (m, "a dataset mask") for _, _, m in self.all_items
        ]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        name, ip, mp = self.items[i]
        image = read_image(ip)
        # The grey levels of the mask's anti-aliased edges are kept (L / 255), as the
        # authors' measure.py reads them: soft in precision / recall, > 0.5 elsewhere.
        mask = read_mask(mp)
        if mask.shape != (image.height, image.width):
            raise UnreadableImage(
                f"{mp}: mask {tuple(mask.shape)} and image {image.height}x{image.width} differ"
            )
        return name, image, mask


def parse_voc_xml(path: Path) -> torch.Tensor:
    """All objects' boxes of a VOC annotation (difficult and truncated kept, as TokenCut),
    converted from VOC's 1-based inclusive pixels to pixel edges."""
    try:
        root = ET.parse(path).getroot()
        boxes = []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            x1, y1, x2, y2 = (float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
            if not all(map(math.isfinite, (x1, y1, x2, y2))):
                raise ValueError(f"non-finite box {[x1, y1, x2, y2]}")
            boxes.append([x1 - 1, y1 - 1, x2, y2])
    except (ET.ParseError, AttributeError, TypeError, ValueError) as err:
        raise UnreadableImage(f"{path}: not a VOC annotation with numeric boxes ({err})") from None
    return torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)


class DiscoveryDataset:
    """VOC07 / VOC12 trainval, COCO20k, or a generic ``images/`` + ``boxes.json``."""

    def __init__(self, name: str, root: str, limit: int | None = None):
        if name not in DISCOVERY:
            raise ValueError(f"--dataset must be one of {list(DISCOVERY)}, got {name!r}")
        self.root = root = Path(root)
        if name in ("voc07", "voc12"):
            year = "2007" if name == "voc07" else "2012"
            base = root / f"VOC{year}" if (root / f"VOC{year}").is_dir() else root
            split = base / "ImageSets" / "Main" / "trainval.txt"
            if not split.is_file():
                raise FileNotFoundError(f"--root {root}: no {split} (expected a VOCdevkit folder)")
            ids = [ln.strip() for ln in split.read_text().splitlines() if ln.strip()]
            items = [
                (i, base / "JPEGImages" / f"{i}.jpg", base / "Annotations" / f"{i}.xml")
                for i in ids
            ]
            missing = [str(p) for _, a, b in items for p in (a, b) if not p.is_file()]
            if missing:
                raise ValueError(
                    f"--root {root} ({name}): " + _mismatch("listed files are missing", missing)
                )
            self.items = [(i, img, ("voc", xml)) for i, img, xml in items]
            self.annotations = [split] + [xml for _, _, xml in items]
        elif name == "coco20k":
            self.items = self._coco(root)
        else:
            ann = root / "boxes.json"
            _need_dir(root / "images", "image")
            if not ann.is_file():
                raise FileNotFoundError(f"--root {root}: no boxes.json")
            table = _read_json(ann)
            _check_box_table(table, ann)
            files = {p.name: p for p in (root / "images").iterdir() if p.is_file()}
            missing = sorted(set(table) - set(files))
            if missing:
                raise ValueError(
                    f"--root {root} (boxes): "
                    + _mismatch("images in boxes.json are missing", missing)
                )
            self.items = [(Path(k).stem, files[k], ("boxes", table[k])) for k in sorted(table)]
            self.annotations = [ann]
        if not self.items:
            raise ValueError(f"--root {root} ({name}): no images")
        self.all_items, self.items = self.items, self.items[:limit]

    def _coco(self, root: Path):
        lst = root / "coco_20k_filenames.txt"
        ann = next(
            (
                p
                for p in (
                    root / "instances_train2014_sel20k.json",
                    root / "annotations" / "instances_train2014.json",
                )
                if p.is_file()
            ),
            None,
        )
        img_dir = next(
            (p for p in (root / "images" / "train2014", root / "train2014") if p.is_dir()), None
        )
        problems = [
            what
            for what, ok in (
                ("coco_20k_filenames.txt", lst.is_file()),
                (
                    "instances_train2014_sel20k.json or annotations/instances_train2014.json",
                    ann is not None,
                ),
                ("images/train2014/ or train2014/", img_dir is not None),
            )
            if not ok
        ]
        if problems:
            raise FileNotFoundError(f"--root {root} (coco20k): missing {', '.join(problems)}")
        names = [Path(ln.strip()).name for ln in lst.read_text().splitlines() if ln.strip()]
        data = _read_json(ann)
        try:
            by_name = {im["file_name"]: im["id"] for im in data["images"]}
            boxes: dict[int, list] = {}
            for a in data["annotations"]:
                if a.get("iscrowd", 0):
                    continue  # crowd boxes removed, as LOST / TokenCut
                x, y, w, h = (float(v) for v in a["bbox"])
                if not all(map(math.isfinite, (x, y, w, h))):
                    raise ValueError(f"annotation {a.get('id')}: non-finite bbox {a['bbox']}")
                # rounded to integers as LOST / TokenCut / the DNCut code do (Python's
                # round: halves to even)
                box = [int(round(v)) for v in (x, y, x + w, y + h)]
                boxes.setdefault(a["image_id"], []).append(box)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(
                f"{ann}: not a COCO instances file (images with file_name and id, annotations "
                f"with image_id and a 4-number bbox): {type(err).__name__}: {err}"
            ) from None
        missing = [n for n in names if n not in by_name or not (img_dir / n).is_file()]
        if missing:
            raise ValueError(
                f"--root {root} (coco20k): "
                + _mismatch("listed images missing from the annotations or folder", missing)
            )
        self.annotations = [lst, ann]
        return [(Path(n).stem, img_dir / n, ("boxes", boxes.get(by_name[n], []))) for n in names]

    def files(self) -> list[tuple[Path, str]]:
        """Every file the evaluation reads, with what it is (an output must be none)."""
        return [(p, "a dataset image") for _, p, _ in self.all_items] + [
            (a, "a dataset annotation file") for a in self.annotations
        ]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        name, ip, (kind, payload) = self.items[i]
        image = read_image(ip)
        if kind == "voc":
            boxes = parse_voc_xml(payload)
        else:
            boxes = torch.tensor(payload, dtype=torch.float64).reshape(-1, 4)
        check_boxes(boxes, image.width, image.height, name)
        return name, image, boxes
