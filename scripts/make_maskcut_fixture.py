"""Writes tests/data/maskcut_fixture.pt: CutLER's own ``maskcut_forward`` run on fixed token
features, the oracle of ``diffeig.dncut.maskcut``'s side-by-side test
(tests/test_maskcut.py). CutLER's code is run from a checkout and never copied here:

    git clone --recursive https://github.com/facebookresearch/CutLER /tmp/CutLER
    pip install pycocotools && python scripts/make_maskcut_fixture.py --cutler /tmp/CutLER

(``--recursive`` brings third_party/TokenCut, whose ``detect_box`` and ``metric.IoU``
MaskCut calls; ``maskcut.py`` also imports ``dino`` and ``crf``, which
``maskcut_forward`` does not use: stand-ins are put in their place.)

The features (float16, read as float32 on both sides): the colour baseline's features of
generated multi-object images (20 x 20 tokens) and of the quokka photo (30 x 30),
reduced to 24 dimensions, and seeded random blob features (24 x 24). CutLER's grid must
be square (``maskcut_forward`` reshapes its painting to ``ps x ps``).

For each image the fixture holds CutLER's masks twice: as it runs (its eigenvectors'
sign is whatever LAPACK returns, which its flip rule reads when three corners fall on
one side), and with each eigenvector signed so that its largest entry in magnitude is
positive (diffeig's ``sign='max'``); and the relative gap ``(l3 - l2) / l3`` of every
cut (a tied Fiedler value makes any vector of a subspace the answer).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_cutler(root: Path):
    """CutLER's maskcut.py as a module, with stand-ins for its unused imports."""
    for name in ("dino", "crf"):
        stub = types.ModuleType(name)
        stub.densecrf = None
        sys.modules[name] = stub
    sys.path[:0] = [str(root / "maskcut"), str(root / "third_party"), str(root)]
    return importlib.import_module("maskcut")


def features_of_images() -> list[tuple[str, torch.Tensor, int]]:
    """``(name, (N, 24) features, side)`` of generated images and the quokka photo."""
    from PIL import Image

    from diffeig.dncut.backbone import ColorFeatures
    from diffeig.dncut.eval.features import to_tensor
    from diffeig.dncut.images import multi_object_image

    backbone = ColorFeatures(8).eval()
    images = [(f"multi-{i}", multi_object_image(i, 160)[0]) for i in range(10)]
    quokka = Image.open(ROOT / "tests" / "data" / "quokka.jpg").convert("RGB")
    images.append(("quokka", quokka.resize((240, 240), Image.LANCZOS)))
    out = []
    for name, im in images:
        with torch.no_grad():
            f = backbone(to_tensor(im)[None])[0]  # (C, h, w)
        side = f.shape[-1]
        f = f.flatten(1).T.double()
        _, _, V = torch.linalg.svd(f, full_matrices=False)
        out.append((name, f @ V[:24].T, side))
    return out


def blob_features(seed: int, side: int = 24, dim: int = 24) -> torch.Tensor:
    """Seeded token features: a noisy background direction and 1 - 3 blobs of their own."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    f = torch.randn(dim, generator=g).expand(side, side, dim).clone()
    for _ in range(int(torch.randint(1, 4, (), generator=g))):
        cy, cx = torch.randint(3, side - 3, (2,), generator=g).tolist()
        r = float(torch.empty(()).uniform_(2.5, 5.0, generator=g))
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        f[inside] = torch.randn(dim, generator=g)
    f += 0.35 * torch.randn(side, side, dim, generator=g)
    return f.reshape(side * side, dim).double()


def run(maskcut, feats: torch.Tensor, side: int, n: int, signed: bool):
    """CutLER's masks ``(n, side, side)`` bool and each cut's relative gap."""
    from scipy.linalg import eigh

    gaps = []

    def second_smallest_eigenvector(A, D):
        # CutLER's function (eigh(D - A, D, subset_by_index=[1, 2]), column 0), recording
        # the gap and, with signed, turning the vector's largest |entry| positive
        values, vectors = eigh(D - A, D, subset_by_index=[1, 2])
        gaps.append(float((values[1] - values[0]) / values[1]))
        z = vectors[:, 0]
        if signed and z[np.argmax(np.abs(z))] < 0:
            z = -z
        return np.copy(z), z

    original = maskcut.second_smallest_eigenvector
    maskcut.second_smallest_eigenvector = second_smallest_eigenvector
    try:
        _, masks, _ = maskcut.maskcut_forward(
            feats.T.clone(), [side, side], [1, 1], [side, side], tau=0.2, N=n, cpu=True
        )
    finally:
        maskcut.second_smallest_eigenvector = original
    return torch.from_numpy(np.stack(masks) > 0.5), gaps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cutler", required=True, type=Path, help="a CutLER checkout (--recursive)")
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "maskcut_fixture.pt")
    args = p.parse_args()
    maskcut = load_cutler(args.cutler)
    cases = features_of_images() + [(f"blobs-{s}", blob_features(s), 24) for s in range(4)]
    records, differ = [], 0
    for name, f, side in cases:
        f16 = f.to(torch.float16)
        feats = f16.float()  # CutLER's features are float32
        as_run, gaps = run(maskcut, feats, side, 3, signed=False)
        signed, _ = run(maskcut, feats, side, 3, signed=True)
        differ += not torch.equal(as_run, signed)
        records.append(
            {
                "name": name,
                "features": f16,
                "side": side,
                "masks": as_run,
                "masks_signed": signed,
                "gaps": gaps,
            }
        )
        print(
            f"{name}: {side}x{side}, objects {[int(m.sum()) for m in as_run]}, "
            f"min gap {min(gaps):.2e}"
        )
    torch.save({"records": records, "tau": 0.2, "eps": 1e-5, "max_objects": 3}, args.out)
    print(
        f"wrote {args.out}: {len(records)} images; CutLER's answer read LAPACK's sign on "
        f"{differ} of them"
    )


if __name__ == "__main__":
    main()
