"""Saliency post-processings compared: simple, tokencut, tokencut+bs and pixel-ncut.

    python benchmarks/pixel_refine.py [--images 10] [--side 320] [--seeds 0 2]
        [--archs color random] [--json benchmarks/results/pixel-refine-cpu-2core.json]

Two data sets, each laid out as ECSSD in a temporary folder and evaluated through
``python -m diffeig.dncut eval-saliency`` (its summary: IoU, accuracy, max F-beta, seconds
per image):

- ``generated``: for each of ``--seeds``, ``--images`` seeded images of ``--side`` px, each an irregular object (a
  union of random ellipses) with two to four thin arms (3 - 6 px wide) in one colour
  with noise, on a noisy background with a colour gradient; its mask is the ground truth
  (pixel-ncut's defaults were chosen on seeds 0 and 1; seed 2 is held out);
- ``quokka``: tests/data/quokka.jpg with its annotated mask.

Backbones: ``--arch color`` (patch colour statistics, no weights) and ``--arch random``
(a seeded random ViT-S/16). Besides the summary, the median time of the eigenvectors and
post-processing per image (features excluded) and, for pixel-ncut, on how many images
the pixel cut was not decisive and TokenCut's bilateral solver refined the mask instead.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
POSTS = ("simple", "tokencut", "tokencut+bs", "pixel-ncut")


def generated_image(rng: np.random.Generator, side: int):
    """An irregular object with thin arms on a two-colour background: (RGB, mask)."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = rng.uniform(0.35, 0.65, 2) * side
    for _ in range(rng.integers(2, 5)):
        rx, ry = rng.uniform(0.08, 0.2, 2) * side
        ox, oy = rng.normal(0, 0.06, 2) * side
        draw.ellipse([cx + ox - rx, cy + oy - ry, cx + ox + rx, cy + oy + ry], fill=255)
    for _ in range(rng.integers(2, 5)):
        angle = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.2, 0.4) * side
        end = (cx + length * np.cos(angle), cy + length * np.sin(angle))
        draw.line([(cx, cy), end], fill=255, width=int(rng.integers(3, 7)))
    m = np.asarray(mask) > 127
    bg = rng.uniform(0, 1, 3)
    fg = rng.uniform(0, 1, 3)
    while np.abs(fg - bg).sum() < 0.6:  # the object differs from the background
        fg = rng.uniform(0, 1, 3)
    # a background with a gentle gradient, so that colour alone is not a constant
    ramp = np.linspace(-0.08, 0.08, side)[None, :, None]
    img = np.clip(bg + ramp, 0, 1) * np.ones((side, side, 1))
    img[m] = fg
    img = np.clip(img + rng.normal(0, 0.04, img.shape), 0, 1)
    return Image.fromarray((img * 255).astype(np.uint8)), Image.fromarray(m.astype(np.uint8) * 255)


def ecssd_folder(root: Path, items) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "ground_truth_mask").mkdir()
    for name, img, mask in items:
        img.save(root / "images" / f"{name}.jpg", quality=95)
        mask.save(root / "ground_truth_mask" / f"{name}.png")
    return root


def datasets(tmp: Path, n: int, side: int, seeds) -> dict:
    out = {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        gen = [(f"gen{i:02d}", *generated_image(rng, side)) for i in range(n)]
        out[f"generated, seed {seed}"] = ecssd_folder(tmp / f"generated-{seed}", gen)
    data = ROOT / "tests" / "data"
    quokka = [
        (
            "quokka",
            Image.open(data / "quokka.jpg").convert("RGB"),
            Image.open(data / "quokka_mask.png").convert("L"),
        )
    ]
    out["quokka"] = ecssd_folder(tmp / "quokka", quokka)
    return out


def evaluate(root: Path, arch: str, post: str, out: Path) -> dict:
    from diffeig.dncut import cli

    argv = ["eval-saliency", "--dataset", "ecssd", "--root", str(root), "--arch", arch]
    argv += ["--post", post, "--quiet", "--workers", "0", "--output", str(out)]
    if cli.main(argv) != 0:
        sys.exit(f"eval-saliency failed: {' '.join(argv)}")
    return json.loads(out.read_text())["summary"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=10, help="generated images (default: 10)")
    p.add_argument("--side", type=int, default=320, help="their side in px (default: 320)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 2], help="generated sets")
    p.add_argument("--archs", nargs="+", default=["color", "random"], choices=["color", "random"])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from _common import metadata, write_json

    results = []
    tmp = Path(tempfile.mkdtemp(prefix="pixel-refine-"))
    try:
        roots = datasets(tmp, args.images, args.side, args.seeds)
        for data, root in roots.items():
            for arch in args.archs:
                for post in POSTS:
                    s = evaluate(root, arch, post, tmp / f"{data}-{arch}-{post}.json")
                    row = {"data": data, "arch": arch, "post": post, **s}
                    results.append(row)
                    print(
                        f"{data:18s} {arch:6s} {post:12s} IoU {s['iou']:.3f} acc "
                        f"{s['accuracy']:.3f} maxF {s['max_f_beta']:.3f} "
                        f"{s['seconds_per_image']:.2f} s/image, post median "
                        f"{s['post_seconds_median']:.3f} s"
                        + (f", fallbacks {s['pixel_fallbacks']}" if "pixel_fallbacks" in s else ""),
                        flush=True,
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        write_json(
            args.json,
            {
                "benchmark": "pixel_refine",
                "args": vars(args),
                "metadata": metadata("cpu"),
                "results": results,
            },
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
