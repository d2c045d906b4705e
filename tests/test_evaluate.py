"""diffeig.dncut evaluation: metrics, TokenCut post-processing, dataset layouts, quokka."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("torchvision")

from PIL import Image  # noqa: E402

from diffeig.dncut import cli  # noqa: E402
from diffeig.dncut.eval import metrics  # noqa: E402
from diffeig.dncut.eval.datasets import DiscoveryDataset, SaliencyDataset  # noqa: E402
from diffeig.dncut.eval.postprocess import seed_component  # noqa: E402
from diffeig.dncut.images import write_synthetic  # noqa: E402

DATA = Path(__file__).parent / "data"


# ----------------------------------------------------------------------------- metrics


def test_saliency_scores_hand_computed():
    pred = torch.tensor([[0.9, 0.6], [0.4, 0.1]], dtype=torch.float64)
    gt = torch.tensor([[True, False], [True, False]])
    s = metrics.saliency_scores(pred, gt)
    assert s["iou"] == pytest.approx(1 / 3)  # binary {0, 1}, gt {0, 2}
    assert s["accuracy"] == pytest.approx(0.5)
    # threshold 0.5 (index 127 of linspace(0, 1 - 1e-10, 255) is ~0.498): p 1/2, r 1/2
    t = metrics.THRESHOLDS
    i = int((t >= 0.45).nonzero()[0])  # first threshold >= 0.45: predicts {0.9, 0.6}
    f = (1.3 * 0.5 * 0.5) / (0.3 * 0.5 + 0.5)
    assert s["f_curve"][i].item() == pytest.approx(f, rel=1e-9)
    # thresholds in (0.6, 0.9]: predicts {0.9}: p 1, r 1/2
    j = int((t > 0.6).nonzero()[0])
    assert s["f_curve"][j].item() == pytest.approx(1.3 * 0.5 / (0.3 + 0.5), rel=1e-9)
    # above 0.9: nothing predicted: F = 0
    assert s["f_curve"][-1].item() == 0.0
    assert (
        metrics.mask_iou(torch.zeros(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)) == 1.0
    )


def test_max_f_beta_averages_over_images_before_the_max():
    # Image A is perfect only at low thresholds, image B only at high ones: the mean
    # curve's maximum is below the mean of the per-image maxima.
    gt = torch.tensor([True, False])
    a = {"f_curve": metrics.f_beta_curve(torch.tensor([0.3, 0.1]), gt), "iou": 1.0, "accuracy": 1.0}
    b = {
        "f_curve": metrics.f_beta_curve(torch.tensor([0.95, 0.8]), gt),
        "iou": 0.0,
        "accuracy": 0.5,
    }
    s = metrics.summarize_saliency([a, b])
    per_image_max = (a["f_curve"].max() + b["f_curve"].max()).item() / 2
    assert s["max_f_beta"] < per_image_max - 0.1
    assert s["max_f_beta"] == pytest.approx(((a["f_curve"] + b["f_curve"]) / 2).max().item())
    assert s["iou"] == 0.5 and s["accuracy"] == 0.75 and s["images"] == 2


def test_box_iou_and_corloc():
    box = torch.tensor([0.0, 0.0, 10.0, 10.0])
    gts = torch.tensor([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 8.0]])
    assert metrics.box_iou(box, gts).tolist() == pytest.approx([50 / 150, 0.8])
    assert metrics.corloc_hit(box, gts)
    assert not metrics.corloc_hit(box, gts[:1])
    assert metrics.corloc_hit(box, torch.tensor([[0.0, 0.0, 10.0, 5.0]]))  # IoU exactly 0.5
    assert not metrics.corloc_hit(box, torch.zeros(0, 4))


# ----------------------------------------------------------------------- TokenCut rule


def test_tokencut_seed_component_and_box():
    z2 = torch.full((6, 8), -0.1, dtype=torch.float64)
    z2[1:3, 1:3] = 0.5  # a blob holding the seed (the largest |z|)
    z2[1, 2] = 0.9
    z2[4:6, 5:8] = 0.4  # another foreground blob, not connected to the seed's
    z2[3, 3] = 0.3  # diagonal neighbour of the seed blob: not 4-connected
    out = seed_component(z2, patch_size=16, image_size=(90, 120))
    assert out["seed"] == (1, 2)
    expected = torch.zeros(6, 8, dtype=torch.bool)
    expected[1:3, 1:3] = True
    assert torch.equal(out["mask"], expected)
    assert out["box"].tolist() == [16, 16, 48, 48]
    # a negative seed: the side below the mean is the foreground; the box is clipped
    out = seed_component(-z2.flip(0, 1), patch_size=16, image_size=(90, 120))
    assert out["seed"] == (4, 5)
    assert out["box"].tolist() == [80, 48, 112, 80]
    z = torch.full((2, 8), -1.0, dtype=torch.float64)
    z[:, 6:] = 3.0
    assert seed_component(z, patch_size=16, image_size=(30, 120))["box"].tolist() == [
        96,
        0,
        120,
        30,
    ]


# -------------------------------------------------------------------------- datasets


def saliency_layout(root: Path, name: str, n: int = 3) -> Path:
    from diffeig.dncut.eval.datasets import SALIENCY

    img_dir, mask_dir = SALIENCY[name]
    src = write_synthetic(root / "_src", n, size=48, seed=5)
    (root / img_dir).mkdir(parents=True)
    (root / mask_dir).mkdir(parents=True)
    for i, p in enumerate(src):
        Image.open(p).convert("RGB").save(root / img_dir / f"img{i}.jpg")
        shutil.copy(Path(p).parent.parent / "masks" / Path(p).name, root / mask_dir / f"img{i}.png")
    shutil.rmtree(root / "_src")
    return root


@pytest.mark.parametrize("name", ["ecssd", "duts-te", "dut-omron", "folder"])
def test_saliency_layouts(tmp_path, name):
    root = saliency_layout(tmp_path, name)
    ds = SaliencyDataset(name, str(root))
    assert len(ds) == 3 and len(SaliencyDataset(name, str(root), limit=2)) == 2
    key, image, mask = ds[1]
    assert (
        key == "img1"
        and mask.dtype == torch.float32  # grey levels / 255, as the authors read them
        and 0 <= mask.min() <= mask.max() <= 1
        and mask.shape == (48, 48)
        and image.size == (48, 48)
    )
    assert 0 < mask.float().mean() < 1


def test_saliency_layout_errors_list_the_files(tmp_path):
    root = saliency_layout(tmp_path, "ecssd")
    (root / "ground_truth_mask" / "img2.png").unlink()
    Image.new("L", (48, 48)).save(root / "ground_truth_mask" / "stray.png")
    with pytest.raises(
        ValueError, match=r"1 images without a mask: img2; 1 masks without an image: stray"
    ):
        SaliencyDataset("ecssd", str(root))
    with pytest.raises(FileNotFoundError, match="DUTS-TE-Image"):
        SaliencyDataset("duts-te", str(root))


def voc_layout(root: Path, year: str, n: int = 2) -> Path:
    base = root / f"VOC{year}"
    for d in ("ImageSets/Main", "JPEGImages", "Annotations"):
        (base / d).mkdir(parents=True)
    ids = [f"{year}_{i:06d}" for i in range(n)]
    (base / "ImageSets/Main/trainval.txt").write_text("\n".join(ids) + "\n")
    for i, k in enumerate(ids):
        Image.new("RGB", (40, 30), (i * 50, 0, 0)).save(base / "JPEGImages" / f"{k}.jpg")
        (base / "Annotations" / f"{k}.xml").write_text(
            "<annotation><object><name>cat</name><difficult>1</difficult><truncated>1</truncated>"
            "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object>"
            "<object><name>dog</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>10</xmax><ymax>12</ymax>"
            "</bndbox></object></annotation>"
        )
    return root


@pytest.mark.parametrize("name, year", [("voc07", "2007"), ("voc12", "2012")])
def test_voc_layouts(tmp_path, name, year):
    ds = DiscoveryDataset(name, str(voc_layout(tmp_path, year)))
    key, image, boxes = ds[1]
    assert key == f"{year}_000001" and image.size == (40, 30)
    # difficult and truncated kept; VOC's 1-based inclusive pixels -> pixel edges
    assert boxes.tolist() == [[0, 1, 20, 30], [4, 4, 10, 12]]
    (tmp_path / f"VOC{year}/Annotations/{year}_000000.xml").unlink()
    with pytest.raises(ValueError, match="1 listed files are missing"):
        DiscoveryDataset(name, str(tmp_path))


def test_coco20k_layout_drops_crowd_boxes(tmp_path):
    (tmp_path / "images/train2014").mkdir(parents=True)
    names = ["COCO_train2014_000000000009.jpg", "COCO_train2014_000000000025.jpg"]
    for n in names:
        Image.new("RGB", (50, 40)).save(tmp_path / "images/train2014" / n)
    (tmp_path / "coco_20k_filenames.txt").write_text("\n".join(f"train2014/{n}" for n in names))
    ann = {
        "images": [{"id": 9, "file_name": names[0]}, {"id": 25, "file_name": names[1]}],
        "annotations": [
            {"image_id": 9, "bbox": [1, 2, 10, 20], "iscrowd": 0},
            {"image_id": 9, "bbox": [0, 0, 50, 40], "iscrowd": 1},
            {"image_id": 25, "bbox": [5, 5, 5, 5], "iscrowd": 0},
            # fractional: x2 = 111.1, y2 = 70.9; rounded as the authors' code rounds
            {"image_id": 25, "bbox": [10.4, 20.6, 100.7, 50.3], "iscrowd": 0},
        ],
    }
    (tmp_path / "instances_train2014_sel20k.json").write_text(json.dumps(ann))
    ds = DiscoveryDataset("coco20k", str(tmp_path))
    assert [ds[i][2].tolist() for i in range(2)] == [
        [[1, 2, 11, 22]],
        [[5, 5, 10, 10], [10, 21, 111, 71]],
    ]
    (tmp_path / "images/train2014" / names[1]).unlink()
    with pytest.raises(ValueError, match="COCO_train2014_000000000025.jpg"):
        DiscoveryDataset("coco20k", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="coco_20k_filenames.txt"):
        DiscoveryDataset("coco20k", str(tmp_path / "images"))


def test_boxes_json_layout(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "images/a.png")
    (tmp_path / "boxes.json").write_text(json.dumps({"a.png": [[1, 1, 5, 5]], "b.png": []}))
    with pytest.raises(ValueError, match="1 images in boxes.json are missing: b.png"):
        DiscoveryDataset("boxes", str(tmp_path))


# -------------------------------------------------------------------- end to end


@pytest.fixture
def quokka_boxes(tmp_path):
    root = tmp_path / "boxes"
    (root / "images").mkdir(parents=True)
    shutil.copy(DATA / "quokka.jpg", root / "images/quokka.jpg")
    ann = json.loads((DATA / "quokka_annotations.json").read_text())["bounding_boxes"]
    boxes = [[b["x1"], b["y1"], b["x2"], b["y2"]] for b in ann]
    (root / "boxes.json").write_text(json.dumps({"quokka.jpg": boxes}))
    return root


# Floors, measured with the color backbone (docs/evaluation.md): saliency IoU 0.58 for
# both post-processings, against 0.30 for calling every pixel foreground; the TokenCut
# box has IoU 0.66 with the annotated one. The floors sit between the two.
ALL_FOREGROUND_IOU = 0.303


@pytest.mark.parametrize("post", ["simple", "tokencut", "tokencut+bs"])
def test_quokka_saliency_with_the_color_backbone(quokka_ecssd, tmp_path, post, capsys):
    out = tmp_path / "sal.json"
    argv = ["eval-saliency", "--dataset", "ecssd", "--root", str(quokka_ecssd), "--arch", "color"]
    assert cli.main([*argv, "--post", post, "--quiet", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    s = res["summary"]
    print(
        f"quokka saliency ({post}): IoU {s['iou']:.3f}, acc {s['accuracy']:.3f}, "
        f"F {s['max_f_beta']:.3f}"
    )
    assert "| ecssd | color" in printed
    assert s["images"] == 1 and res["per_image"][0]["name"] == "quokka"
    assert s["iou"] > 0.45 > ALL_FOREGROUND_IOU
    assert s["accuracy"] > 0.7 and s["max_f_beta"] > 0.5


def test_quokka_discovery_with_the_color_backbone(quokka_boxes, tmp_path):
    out = tmp_path / "disc.json"
    argv = ["eval-discovery", "--dataset", "boxes", "--root", str(quokka_boxes), "--arch", "color"]
    assert cli.main([*argv, "--quiet", "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    r = res["per_image"][0]
    print(
        f"quokka discovery: CorLoc {res['summary']['corloc']:.2f}, box {r['box']}, "
        f"IoU {r['best_iou']:.3f}"
    )
    assert r["best_iou"] > 0.55 and res["summary"]["corloc"] == 1.0
    assert res["config"]["solver"] == "auto"  # the default, recorded
    # the dense solver (the authors') gives the same box on this photo
    dense = tmp_path / "disc-dense.json"
    assert cli.main([*argv, "--quiet", "--output", str(dense), "--solver", "dense"]) == 0
    res_dense = json.loads(dense.read_text())
    assert res_dense["config"]["solver"] == "dense"
    assert res_dense["per_image"][0]["box"] == r["box"]


@pytest.mark.filterwarnings("ignore:Sparse (CSR tensor support|invariant checks)")
def test_quokka_discovery_with_pixel_ncut(quokka_boxes, tmp_path):
    out = tmp_path / "disc.json"
    argv = ["eval-discovery", "--dataset", "boxes", "--root", str(quokka_boxes), "--arch", "color"]
    assert cli.main([*argv, "--post", "pixel-ncut", "--quiet", "--output", str(out)]) == 0
    r = json.loads(out.read_text())["per_image"][0]
    x1, y1, x2, y2 = r["box"]
    assert 0 <= x1 < x2 <= 960 and 0 <= y1 < y2 <= 643  # a box inside the photo
    assert r["best_iou"] > 0.3


def test_random_backbone_smoke_on_generated_voc_and_folder(tmp_path):
    root = saliency_layout(tmp_path / "f", "folder", n=3)
    argv = [
        "eval-saliency",
        "--dataset",
        "folder",
        "--root",
        str(root),
        "--arch",
        "random",
        "--quiet",
    ]
    assert cli.main([*argv, "--limit", "2", "--output", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["summary"]["images"] == 2
    voc = voc_layout(tmp_path / "v", "2007")
    argv = [
        "eval-discovery",
        "--dataset",
        "voc07",
        "--root",
        str(voc),
        "--arch",
        "random",
        "--quiet",
    ]
    assert cli.main([*argv, "--output", str(tmp_path / "d.json")]) == 0
    res = json.loads((tmp_path / "d.json").read_text())
    assert res["summary"]["images"] == 2 and 0 <= res["summary"]["corloc"] <= 1


def test_visualize_writes_one_panel_per_image(tmp_path):
    out = tmp_path / "fig.png"
    img = str(DATA / "quokka.jpg")
    argv = ["visualize", img, img, "--arch", "color", "--out", str(out), "--eigenvectors", "3"]
    assert cli.main([*argv, "--max-side", "240"]) == 0
    fig = np.asarray(Image.open(out))
    # 2 rows; 6 tiles per row (image, z2, z3, z4, mask, box) of 240 x 160 plus padding,
    # labels above each tile (whole lines of the figure's font) and each row's file name
    # in a left margin
    from diffeig.dncut.figures import _line_height, font_for

    line_h = _line_height(font_for(240))
    label_h = (fig.shape[0] - 4) // 2 - (160 + 4)
    assert fig.shape[0] == 2 * (160 + label_h + 4) + 4 and label_h > 0
    assert label_h % line_h == 0
    margin = fig.shape[1] - (6 * (240 + 4) + 4)
    assert margin > 0 and (fig[:, :margin] < 128).any()  # "quokka.jpg" is written there
    assert fig.std() > 20  # not blank
    assert (
        cli.main(["visualize", str(tmp_path / "none.jpg"), "--arch", "color", "--out", str(out)])
        == 2
    )


@pytest.mark.filterwarnings("ignore:Sparse (CSR tensor support|invariant checks)")
def test_visualize_shows_the_pixel_ncut_refinement(tmp_path):
    out = tmp_path / "fig.png"
    img = str(DATA / "quokka.jpg")
    argv = ["visualize", img, "--arch", "color", "--out", str(out), "--eigenvectors", "2"]
    assert cli.main([*argv, "--max-side", "240", "--post", "pixel-ncut"]) == 0
    fig = np.asarray(Image.open(out))
    # image, z2, z3, token mask, pixel-ncut soft map, its mask, its box: 7 tiles
    margin = fig.shape[1] - (7 * (240 + 4) + 4)
    assert margin > 0 and fig.std() > 20


def test_visualize_draws_k_way_segments(tmp_path, capsys):
    from diffeig.dncut.backbone import ColorFeatures
    from diffeig.dncut.eval.features import to_tensor
    from diffeig.dncut.eval.visualize import panel
    from diffeig.dncut.figures import PALETTE
    from diffeig.dncut.images import multi_object_image

    image = multi_object_image(2, 160)[0]
    x = to_tensor(image)
    with torch.no_grad():
        f = ColorFeatures(8)(x[None])[0]
    tiles, labels = panel(image, f, 8, "tokencut", 2, segments=4)
    # image, z2, z3, z4, the segments, mask, box
    assert len(tiles) == len(labels) == 7 and labels[4].startswith("4 segments")
    seg = np.asarray(tiles[4]).reshape(-1, 3).astype(float)
    # four segments, each a palette colour blended over the image
    img = np.asarray(image).reshape(-1, 3).astype(float)
    colours = np.array(PALETTE[:4], dtype=float)
    nearest = np.abs((seg - 0.4 * img)[:, None] - 0.6 * colours[None]).sum(-1).argmin(1)
    assert len(np.unique(nearest)) == 4
    out = tmp_path / "fig.png"
    argv = ["visualize", str(DATA / "quokka.jpg"), "--arch", "color", "--out", str(out)]
    assert cli.main([*argv, "--segments", "1"]) == 2
    assert "--segments" in capsys.readouterr().err


def test_evaluation_errors_are_clear(tmp_path, capsys):
    argv = ["eval-saliency", "--dataset", "ecssd", "--root", str(tmp_path), "--arch", "color"]
    assert cli.main(argv) == 2
    assert "image folder" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "eval-saliency",
                "--dataset",
                "ecssd",
                "--root",
                str(tmp_path),
                "--arch",
                "color",
                "--weights",
                "x.pth",
            ]
        )
        == 2
    )


def test_mask_box_and_tiny_images():
    from diffeig.dncut.eval.postprocess import mask_box, simple

    m = torch.zeros(3, 4, dtype=torch.bool)
    assert mask_box(m, 16, (40, 60)).tolist() == [0, 0, 60, 40]
    m[1, 2:] = True
    assert mask_box(m, 16, (40, 60)).tolist() == [32, 16, 60, 32]
    with pytest.raises(ValueError, match="at least 2 patches"):
        simple(torch.randn(8, 1, 1))


@pytest.mark.filterwarnings("ignore:Sparse (CSR tensor support|invariant checks)")
def test_quokka_pixel_ncut_refinement(quokka_ecssd, tmp_path, capsys):
    # the token mask refined by a sparse NCut at pixel resolution: it runs through the
    # CLI, scores above calling everything foreground, and its options are checked
    out = tmp_path / "sal.json"
    argv = ["eval-saliency", "--dataset", "ecssd", "--root", str(quokka_ecssd), "--arch", "color"]
    argv += ["--post", "pixel-ncut", "--quiet", "--output", str(out)]
    assert cli.main(argv) == 0
    s = json.loads(out.read_text())["summary"]
    print(f"quokka saliency (pixel-ncut): IoU {s['iou']:.3f}, F {s['max_f_beta']:.3f}")
    assert "| pixel-ncut |" in capsys.readouterr().out
    assert s["images"] == 1 and s["iou"] > ALL_FOREGROUND_IOU
    # how often the pixel cut decided, in the summary and per image, and the median time
    per_image = json.loads(out.read_text())["per_image"]
    assert s["pixel_fallbacks"] == sum(not r["pixel_cut"] for r in per_image)
    assert s["post_seconds_median"] > 0
    assert cli.main([*argv, "--pixel-sigma-color", "0"]) == 2
    assert "--pixel-sigma-color" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse: neither a number nor 'auto'
        cli.main([*argv, "--pixel-sigma-color", "wide"])
    assert e.value.code == 2 and "--pixel-sigma-color" in capsys.readouterr().err
    assert cli.main([*argv, "--pixel-sigma-color", "0.1", "--force"]) == 0


def test_pixel_ncut_auto_sigma_follows_the_noise():
    from diffeig.dncut.eval.pixel_ncut import AUTO_SIGMA, MIN_SIGMA, auto_sigma

    g = torch.Generator().manual_seed(0)
    flat = torch.full((3, 40, 50), 0.5, dtype=torch.float64)
    assert auto_sigma(flat) == MIN_SIGMA  # no noise: the floor
    for std in (0.05, 0.1):
        img = flat + std * torch.randn(3, 40, 50, generator=g, dtype=torch.float64)
        dx = (img[:, :, 1:] - img[:, :, :-1]).square().sum(0).flatten()
        dy = (img[:, 1:] - img[:, :-1]).square().sum(0).flatten()
        med = float(torch.cat([dx, dy]).median().sqrt())
        assert auto_sigma(img) == pytest.approx(AUTO_SIGMA * med)
        # the distance of two pixels with 3 noisy channels: about std sqrt(6)
        assert 0.6 * std * 6**0.5 < med < 1.2 * std * 6**0.5


@pytest.mark.filterwarnings("ignore:Sparse (CSR tensor support|invariant checks)")
def test_pixel_ncut_falls_back_where_the_cut_is_not_decisive():
    from PIL import Image

    from diffeig.dncut.eval.bilateral import bilateral_solve
    from diffeig.dncut.eval.pixel_ncut import DECISIVE, refine

    # nothing to cut: one noisy colour everywhere, and a token prior of a square; the
    # smallest cuts are as cheap as each other (l2 ~ l3), so z2 means nothing
    H = W = 64
    g = torch.Generator().manual_seed(0)
    img = 0.5 + 0.05 * torch.randn(3, H, W, generator=g, dtype=torch.float64)
    img = img.clamp(0, 1)
    prior = torch.zeros(H, W, dtype=torch.float64)
    prior[16:40, 20:44] = 1
    r = refine(img, prior, None, prior_weight=0.0)
    assert not r.cut and r.gap_ratio > DECISIVE
    arr = (img.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    bs = bilateral_solve(Image.fromarray(arr), prior.float()).double()
    torch.testing.assert_close(r.soft, bs)
    assert torch.equal(r.mask, bs > 0.5)


def test_pixel_ncut_refine_is_binary_sized_and_ranks_the_object():
    from diffeig.dncut.eval.pixel_ncut import refine

    # a thin-armed object: a disc with a 3-px bar, on a textured background
    H = W = 96
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    obj = ((yy - 48) ** 2 + (xx - 40) ** 2 < 18**2) | ((yy - 47).abs() <= 1) & (xx > 40)
    g = torch.Generator().manual_seed(0)
    img = 0.3 + 0.1 * torch.rand(3, H, W, generator=g, dtype=torch.float64)
    img[:, obj] = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)[:, None]
    # a blocky token prior (16 px tokens) of the disc only
    tok = torch.nn.functional.avg_pool2d(obj[None, None].double(), 16)[0, 0] > 0.5
    prior = torch.nn.functional.interpolate(
        tok[None, None].double(), size=(H, W), mode="bilinear", align_corners=False
    )[0, 0]
    soft, mask, cut, *_ = refine(img, prior, None)
    assert cut  # decided by the pixel cut, not the fallback
    assert soft.shape == mask.shape == (H, W) and mask.dtype == torch.bool
    assert float(soft[obj].mean()) > float(soft[~obj].mean()) + 0.5
    iou = float((mask & obj).sum() / (mask | obj).sum())
    iou_tok = float(((prior > 0.5) & obj).sum() / ((prior > 0.5) | obj).sum())
    assert iou > iou_tok + 0.05  # the thin arm and the round border recovered


def test_pixel_ncut_never_forms_a_dense_pixel_matrix(monkeypatch):
    from diffeig.dncut.eval.pixel_ncut import refine

    H = W = 64
    n = H * W
    img = torch.rand(3, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    prior = torch.zeros(H, W, dtype=torch.float64)
    prior[16:48, 16:48] = 1
    eigh = torch.linalg.eigh

    def no_to_dense(self, *a, **k):
        raise AssertionError("to_dense called in the pixel refinement")

    def small_eigh(A, *a, **k):
        assert A.shape[-1] < n, f"a dense {A.shape[-1]} x {A.shape[-1]} eigh of the pixel graph"
        return eigh(A, *a, **k)

    monkeypatch.setattr(torch.Tensor, "to_dense", no_to_dense)
    monkeypatch.setattr(torch.linalg, "eigh", small_eigh)
    soft, mask, *_ = refine(img, prior, None)
    assert soft.shape == (H, W) and mask.any()


def _pixel_refine_benchmark():
    """benchmarks/pixel_refine.py (its generator of thin-armed objects), imported."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "pixel_refine.py"
    spec = importlib.util.spec_from_file_location("pixel_refine", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore:Sparse (CSR tensor support|invariant checks)")
def test_pixel_ncut_through_the_cli_on_generated_thin_objects(tmp_path, capsys):
    # the benchmark's images (another seed, a smaller side): pixel-ncut runs end to end,
    # reports how it decided, and does not score below the token mask it refines
    bench = _pixel_refine_benchmark()
    rng = np.random.default_rng(5)
    items = [(f"g{i}", *bench.generated_image(rng, 160)) for i in range(3)]
    root = bench.ecssd_folder(tmp_path / "gen", items)
    scores = {}
    for post in ("tokencut", "pixel-ncut"):
        out = tmp_path / f"{post}.json"
        argv = ["eval-saliency", "--dataset", "ecssd", "--root", str(root), "--arch", "color"]
        assert cli.main([*argv, "--post", post, "--quiet", "--output", str(out)]) == 0
        scores[post] = json.loads(out.read_text())
    s = scores["pixel-ncut"]["summary"]
    assert "pixel cut decided on" in capsys.readouterr().out
    assert all(isinstance(r["pixel_cut"], bool) for r in scores["pixel-ncut"]["per_image"])
    assert s["images"] == 3 and s["iou"] >= scores["tokencut"]["summary"]["iou"]
