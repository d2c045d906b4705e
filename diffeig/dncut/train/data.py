"""Training data: images by index and two augmented views with their overlap.

Every sample is a pure function of ``(seed, epoch, index)``: the dataset re-seeds the
random number generator it draws from for each sample, so that the data a run sees does
not depend on the number of workers or processes, and ``--resume`` replays it exactly.
"""

from __future__ import annotations

import math

import torch
from PIL import Image

from diffeig.dncut.backbone import IMAGENET_MEAN, IMAGENET_STD
from diffeig.dncut.config import synthetic_count
from diffeig.dncut.images import list_images, read_image, synthetic_image


class ImageSource:
    """Images by index, from files or generated (``synthetic:N``)."""

    def __init__(self, spec: str, *, synthetic_size: int = 224, seed: int = 0):
        self.spec = str(spec)
        count = synthetic_count(self.spec)
        if count is not None:
            self.count = count
            self.paths = None
            self.size, self.seed = synthetic_size, seed
        else:
            self.paths = list_images(spec)
            self.count = len(self.paths)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Image.Image:
        if self.paths is None:
            return synthetic_image(i, self.size, self.seed)[0]
        return read_image(self.paths[i])


# ----------------------------------------------------------------------------- two views


def _uniform(gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    """One draw of U(lo, hi) from ``gen``."""
    return lo + (hi - lo) * torch.rand(1, generator=gen).item()


def sample_crop(width, height, scale, ratio, gen: torch.Generator, constraint=None, fraction=0.0):
    """torchvision's RandomResizedCrop box ``(left, top, w, h)``, drawn from ``gen``.

    With a ``constraint`` crop, the authors' ``get_params_conditioned``: up to 10 draws,
    each kept only if its intersection with ``constraint`` holds at least ``fraction`` of
    its drawn area; then an unconstrained draw."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(gen, *scale)
        aspect = math.exp(_uniform(gen, *log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            crop = (left, top, w, h)
            if constraint is None or intersection(crop, constraint) >= fraction * target:
                return crop
    if constraint is not None:
        return sample_crop(width, height, scale, ratio, gen)
    # fallback: the central crop of the allowed aspect ratio
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def intersection(c1, c2) -> int:
    """Pixels shared by two crops ``(left, top, w, h)``."""
    w = min(c1[0] + c1[2], c2[0] + c2[2]) - max(c1[0], c2[0])
    h = min(c1[1] + c1[3], c2[1] + c2[3]) - max(c1[1], c2[1])
    return max(w, 0) * max(h, 0)


def overlap_boxes(c1, c2, flip1: bool, flip2: bool):
    """The intersection of two crops in each view's normalized coordinates.

    ``c = (left, top, w, h)`` in image pixels. Returns ``(box1, box2)`` as
    ``(x1, y1, x2, y2)`` in [0, 1] of each view as it is shown to the network (so
    mirrored when the view is flipped), or ``None`` when the crops do not overlap.
    """
    x1 = max(c1[0], c2[0])
    y1 = max(c1[1], c2[1])
    x2 = min(c1[0] + c1[2], c2[0] + c2[2])
    y2 = min(c1[1] + c1[3], c2[1] + c2[3])
    if x2 <= x1 or y2 <= y1:
        return None
    out = []
    for (left, top, w, h), flip in ((c1, flip1), (c2, flip2)):
        bx1, bx2 = (x1 - left) / w, (x2 - left) / w
        by1, by2 = (y1 - top) / h, (y2 - top) / h
        if flip:
            bx1, bx2 = 1 - bx2, 1 - bx1
        out.append((bx1, by1, bx2, by2))
    return tuple(out)


class TwoViews(torch.utils.data.Dataset):
    """Two augmented crops of each image with the box of their overlap in each view.

    An item is ``dict(view1, view2, box1, box2, flip1, flip2, index)``: views
    ``(3, size, size)`` ImageNet-normalized; boxes ``(4,)`` normalized ``x1, y1, x2, y2``
    in each view's (possibly mirrored) coordinates; flips bool. The crops follow the
    authors' overlap rule (:meth:`_pair`), resized bicubically as theirs.
    """

    def __init__(
        self,
        source: ImageSource,
        *,
        size: int = 224,
        scale=(0.2, 1.0),
        ratio=(3 / 4, 4 / 3),
        min_overlap: float = 0.01,
        augment: bool = True,
        seed: int = 0,
    ):
        self.source = source
        self.size = size
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.min_overlap = min_overlap
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def _pair(self, W, H, gen):
        """The authors' rule (their ``CustomTwoCrop``): view 1's crop drawn freely; view
        2's redrawn up to 10 times until its intersection with view 1 holds at least
        ``min_overlap`` of its drawn area, else drawn freely; each view flipped with
        p 0.5. A pair that does not overlap at all (possible after the fallback; the
        authors' code would then align inverted boxes) takes view 1's crop twice."""
        c1 = sample_crop(W, H, self.scale, self.ratio, gen)
        c2 = sample_crop(
            W, H, self.scale, self.ratio, gen, constraint=c1, fraction=self.min_overlap
        )
        f1, f2 = (bool(torch.rand(1, generator=gen) < 0.5) for _ in range(2))
        boxes = overlap_boxes(c1, c2, f1, f2)
        if boxes is None:
            c2, f2 = c1, f1
            boxes = overlap_boxes(c1, c2, f1, f2)
        return c1, c2, f1, f2, boxes

    def __getitem__(self, index: int) -> dict:
        from torchvision.transforms import functional as TF

        gen = torch.Generator().manual_seed(hash((self.seed, self.epoch, int(index))) % 2**62)
        img = self.source[index]
        W, H = img.size
        c1, c2, f1, f2, (b1, b2) = self._pair(W, H, gen)
        views = []
        for n, (c, f) in enumerate(((c1, f1), (c2, f2))):
            v = TF.resized_crop(
                img,
                c[1],
                c[0],
                c[3],
                c[2],
                [self.size, self.size],
                interpolation=TF.InterpolationMode.BICUBIC,
                antialias=True,
            )
            if f:
                v = TF.hflip(v)
            v = TF.to_tensor(v)
            if self.augment:
                v = augment(v, gen, second=n == 1)
            views.append(TF.normalize(v, IMAGENET_MEAN, IMAGENET_STD))
        return {
            "view1": views[0],
            "view2": views[1],
            "box1": torch.tensor(b1, dtype=torch.float32),
            "box2": torch.tensor(b2, dtype=torch.float32),
            "flip1": torch.tensor(f1),
            "flip2": torch.tensor(f2),
            "index": torch.tensor(index),
        }


def jitter_factors(gen: torch.Generator) -> list[float]:
    """Brightness, contrast, saturation and hue factors of the authors' colour jitter
    (``ColorJitter(0.8, 0.8, 0.8, 0.2)``): the first three in [0.2, 1.8], hue in
    [-0.2, 0.2]."""
    return [_uniform(gen, 0.2, 1.8), _uniform(gen, 0.2, 1.8), _uniform(gen, 0.2, 1.8),
            _uniform(gen, -0.2, 0.2)]  # fmt: skip


def augment(v: torch.Tensor, gen: torch.Generator, *, second: bool) -> torch.Tensor:
    """The authors' photometric augmentation (their ``CustomDataAugmentation``), drawn
    from ``gen``: colour jitter (p 0.8; strengths 0.8, 0.8, 0.8, 0.2, in random order),
    grayscale (p 0.2), Gaussian blur (sigma 0.1 - 2; p 1.0 on the first view, 0.1 on the
    second), solarize (second view, p 0.2)."""
    from torchvision.transforms import functional as TF

    def u(lo=0.0, hi=1.0):
        return _uniform(gen, lo, hi)

    if u() < 0.8:
        order = torch.randperm(4, generator=gen).tolist()
        factors = jitter_factors(gen)
        for o in order:
            if o == 0:
                v = TF.adjust_brightness(v, factors[0])
            elif o == 1:
                v = TF.adjust_contrast(v, factors[1])
            elif o == 2:
                v = TF.adjust_saturation(v, factors[2])
            else:
                v = TF.adjust_hue(v, factors[3])
    if u() < 0.2:
        v = TF.rgb_to_grayscale(v, num_output_channels=3)
    if u() < (0.1 if second else 1.0):
        sigma = u(0.1, 2.0)
        v = TF.gaussian_blur(v, [23, 23], [sigma, sigma])
    if second and u() < 0.2:
        v = TF.solarize(v, 0.5)
    return v.clamp(0, 1)
