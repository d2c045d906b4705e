"""COCO instance files: masks as run-length encodings (pycocotools), one class.

What the pseudo-masks command writes, the generated ground truth of the tests holds and
``eval-instances`` reads: the format detectron2 and CutLER's training load.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CATEGORY", "instance", "decode", "dataset"]

# The one class of class-agnostic instances (CutLER's "fg").
CATEGORY = {"id": 1, "name": "fg", "supercategory": "fg"}


def instance(mask: np.ndarray, **fields) -> dict:
    """An annotation of one binary mask ``(H, W)``: its RLE (``counts`` as text, as JSON
    needs), ``area`` and ``bbox`` ``[x, y, w, h]`` from pycocotools, class
    :data:`CATEGORY`, ``iscrowd`` 0, and ``fields`` (``id``, ``image_id``, ``score``)."""
    from pycocotools import mask as rle

    code = rle.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        **fields,
        "category_id": CATEGORY["id"],
        "iscrowd": 0,
        "area": int(rle.area(code)),
        "bbox": [int(v) for v in rle.toBbox(code)],
        "segmentation": {"size": [int(s) for s in code["size"]], "counts": code["counts"].decode()},
    }


def decode(annotation: dict) -> np.ndarray:
    """The binary mask ``(H, W)`` of an annotation written by :func:`instance`."""
    from pycocotools import mask as rle

    seg = dict(annotation["segmentation"])
    seg["counts"] = seg["counts"].encode()
    return rle.decode(seg).astype(bool)


def dataset(images: list[dict], annotations: list[dict], description: str) -> dict:
    """A COCO instances file: ``info`` (no date: equal inputs give equal bytes),
    ``images``, ``annotations`` and the one category."""
    return {
        "info": {"description": description, "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [CATEGORY],
    }
