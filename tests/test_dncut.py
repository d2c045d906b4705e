"""diffeig.dncut, the training recipe: losses, alignment, backbones, checkpoints, training."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("torchvision")

from diffeig.dncut import cli  # noqa: E402
from diffeig.dncut.backbone import build_backbone, convert_state_dict, create_vit, load_weights  # noqa: E402
from diffeig.dncut.config import TrainConfig, builtin_configs, load_yaml, resolve  # noqa: E402
from diffeig.dncut.images import list_images, write_synthetic
from diffeig.dncut.train import lr_schedule  # noqa: E402
from diffeig.dncut.train.data import ImageSource, TwoViews, overlap_boxes  # noqa: E402
from diffeig.dncut.train.losses import (  # noqa: E402
    hard_iou,
    mask_consistency,
    pseudo_masks,
    structural_regularization,
)
from diffeig.dncut.train.model import DNCut, align  # noqa: E402
from diffeig.dncut.train.optim import authors_param_groups  # noqa: E402


def bce(p, t):
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


# ----------------------------------------------------------------------------- losses


def test_mask_consistency_hand_computed_and_sign_ambiguity():
    on = torch.tensor([[[0.9, 0.2], [0.3, 0.6]]])
    t = torch.tensor([[[0.8, 0.1], [0.4, 0.7]]])  # same hard mask as `on`
    loss, st = mask_consistency(on, t, min_kept=1)
    expected = (bce(0.9, 0.8) + bce(0.2, 0.1) + bce(0.3, 0.4) + bce(0.6, 0.7)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert st["iou"].item() == 1.0 and st["flipped"].item() == 0.0
    # The flipped target (the other sign of z2) is matched to 1 - t: the same loss.
    loss2, st2 = mask_consistency(on, 1 - t, min_kept=1)
    assert loss2.item() == pytest.approx(expected, rel=1e-5)
    assert st2["flipped"].item() == 1.0


def test_mask_consistency_iou_filter_and_lowering_rule():
    on = torch.zeros(2, 1, 4)
    on[:, 0, :2] = 0.9  # hard mask [1, 1, 0, 0]
    on[:, 0, 2:] = 0.1
    t = torch.full((2, 1, 4), 0.2)
    t[0, 0, :2] = 0.7  # IoU 1
    t[1, 0, 1:] = 0.7  # hard [0, 1, 1, 1]: IoU 1/4; flipped [1, 0, 0, 0]: IoU 1/2
    loss, st = mask_consistency(on, t, iou_threshold=0.5, min_kept=1)
    assert st["kept"].item() == 0.5 and st["threshold"].item() == pytest.approx(0.5)
    assert st["iou"].item() == pytest.approx(0.75)
    only_first = sum(bce(p, q) for p, q in [(0.9, 0.7), (0.9, 0.7), (0.1, 0.2), (0.1, 0.2)]) / 4
    assert loss.item() == pytest.approx(only_first, rel=1e-5)
    # Two samples wanted: the threshold drops by 0.05 until IoU 0.5 > threshold (0.45).
    loss, st = mask_consistency(on, t, iou_threshold=0.5, min_kept=2)
    assert st["kept"].item() == 1.0 and st["threshold"].item() == pytest.approx(0.45)
    second = sum(bce(p, q) for p, q in [(0.9, 0.3), (0.9, 0.8), (0.1, 0.3), (0.1, 0.3)]) / 4
    assert loss.item() == pytest.approx((only_first + second) / 2, rel=1e-5)


def test_mask_consistency_iou_tie_goes_to_the_flipped_target():
    # online hard mask [1, 1, 0, 0]; target hard [1, 0, 1, 0]: IoU 1/3 with t, 1/3 with
    # 1 - t ([0, 1, 0, 1]): a tie, matched to 1 - t as the authors' IoU_bg >= IoU_fg
    on = torch.tensor([[[0.9, 0.8, 0.2, 0.1]]])
    t = torch.tensor([[[0.7, 0.3, 0.6, 0.4]]])
    loss, st = mask_consistency(on, t, min_kept=1)
    assert st["flipped"].item() == 1.0 and st["iou"].item() == pytest.approx(1 / 3)
    expected = sum(bce(p, 1 - q) for p, q in zip([0.9, 0.8, 0.2, 0.1], [0.7, 0.3, 0.6, 0.4])) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_hard_iou_of_empty_masks_is_zero():
    e = torch.zeros(1, 3, dtype=torch.bool)
    assert hard_iou(e, e).item() == 0.0


def test_structural_regularization_hand_computed():
    m = torch.tensor([[[0.9, 0.7], [0.2, 0.4]]])  # fg = 0.8, bg = 0.3, mean 0.55
    p = pseudo_masks(m)
    assert torch.allclose(p["h1"], torch.tensor([[[0.8, 0.8], [0.3, 0.3]]]))
    assert torch.allclose(p["v2"], torch.tensor([[[0.3, 0.8], [0.3, 0.8]]]))
    assert torch.allclose(p["uniform"], torch.full((1, 2, 2), 0.55))
    vals = [0.9, 0.7, 0.2, 0.4]

    def r(target):
        return sum(bce(v, q) for v, q in zip(vals, target)) / 4

    r_h = min(r([0.8, 0.8, 0.3, 0.3]), r([0.3, 0.3, 0.8, 0.8]))
    r_v = min(r([0.8, 0.3, 0.8, 0.3]), r([0.3, 0.8, 0.3, 0.8]))
    r_u = r([0.55] * 4)
    total, terms = structural_regularization(m)
    assert terms["reg_h"].item() == pytest.approx(r_h, rel=1e-5)
    assert terms["reg_v"].item() == pytest.approx(r_v, rel=1e-5)
    assert total.item() == pytest.approx(r_h + r_v + r_u, rel=1e-5)


# -------------------------------------------------------------------------- alignment


def pattern_image(size=96):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    img = torch.stack([xx / size, yy / size, ((xx // 12 + yy // 12) % 2).float()])
    return img.float()


@pytest.mark.parametrize("flips", [(False, False), (True, False), (False, True), (True, True)])
def test_two_crops_align_to_the_same_grid(flips):
    from torchvision.transforms import functional as TF

    img = pattern_image()
    crops = [(10, 4, 60, 72), (30, 20, 56, 64)]  # (left, top, w, h)
    b1, b2 = overlap_boxes(*crops, *flips)
    views = []
    for (left, top, w, h), f in zip(crops, flips):
        v = TF.resized_crop(img, top, left, h, w, [64, 64], antialias=False)
        views.append(TF.hflip(v) if f else v)
    fl = torch.tensor(flips)
    a = align(torch.stack(views), torch.tensor([b1, b2]), fl)
    # Both aligned maps show the overlap region (x 30..70, y 20..76) the right way round.
    assert torch.allclose(a[0, :2], a[1, :2], atol=0.01)  # the smooth ramps
    assert (a[0, 2] - a[1, 2]).abs().mean() < 0.05  # the checkerboard, up to its edges
    assert a[0, 0, :, 0].mean() < a[0, 0, :, -1].mean()  # x grows left to right
    ref = TF.resized_crop(img, 20, 30, 56, 40, [64, 64], antialias=False)
    assert torch.allclose(a[0, :2], ref[:2], atol=0.01)


def test_views_without_overlap_are_redrawn():
    assert overlap_boxes((0, 0, 10, 10), (20, 20, 5, 5), False, False) is None
    ds = TwoViews(
        ImageSource("synthetic:4", synthetic_size=64), size=32, scale=(0.02, 0.03), seed=1
    )
    for i in range(4):
        item = ds[i]
        for b in (item["box1"], item["box2"]):
            assert (b[2] > b[0]) and (b[3] > b[1]) and b.min() >= 0 and b.max() <= 1
    a, b = ds[2], ds[2]
    assert torch.equal(a["view1"], b["view1"])  # a pure function of (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(a["view1"], ds[2]["view1"])


def test_list_images_folder_file_list_and_errors(tmp_path):
    paths = write_synthetic(tmp_path / "d", 3, size=32)
    assert list_images(tmp_path / "d" / "images") == paths
    lst = tmp_path / "list.txt"
    lst.write_text("d/images/00000.png\n# comment\n\nd/images/00002.png\n")
    assert list_images(lst) == [
        str(tmp_path / "d/images/00000.png"),
        str(tmp_path / "d/images/00002.png"),
    ]
    lst.write_text("missing.png\n")
    with pytest.raises(FileNotFoundError, match="1 listed files do not exist"):
        list_images(lst)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(ValueError, match="synthetic:N needs an integer"):
        ImageSource("synthetic:x")


# --------------------------------------------------------------------------- backbone


def test_dino_mae_and_mocov3_checkpoints_load_strictly(tmp_path):
    src = create_vit("vit_small_patch16")
    sd = {k: v for k, v in src.model.state_dict().items()}
    dino = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(sd, dino)  # DINO's file: timm's names, no head
    moco = tmp_path / "moco.pth.tar"
    wrapped = {f"module.base_encoder.{k}": v for k, v in sd.items()}
    wrapped["module.base_encoder.head.weight"] = torch.zeros(3, 384)
    wrapped["module.predictor.0.weight"] = torch.zeros(3)
    torch.save({"state_dict": wrapped, "epoch": 300}, moco)
    mae = tmp_path / "mae_pretrain.pth"  # MAE: under "model", with its decoder
    torch.save(
        {
            "model": {
                **sd,
                "mask_token": torch.zeros(1, 1, 8),
                "decoder_embed.weight": torch.zeros(8, 384),
            }
        },
        mae,
    )
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        ref = src(x)
        for path in (dino, moco, mae):
            b = build_backbone("vit_small_patch16", str(path))
            assert torch.equal(b(x), ref)
    assert ref.shape == (1, 384, 4, 3)
    bad = dict(sd)
    bad.pop("blocks.3.attn.qkv.weight")
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(
        ValueError,
        match=r"missing keys \['blocks.3.attn.qkv.weight'\].*unexpected keys \['extra.weight'\]",
    ):
        build_backbone("vit_small_patch16", str(tmp_path / "bad.pth"))
    with pytest.raises(FileNotFoundError, match="--weights"):
        build_backbone("vit_small_patch16", str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="arch must be one of"):
        build_backbone("resnet7")


def test_mocov3_arch_has_twelve_heads(tmp_path):
    moco = create_vit("mocov3_vit_small")
    assert moco.model.blocks[0].attn.num_heads == 12
    assert create_vit("vit_small_patch16").model.blocks[0].attn.num_heads == 6
    torch.save(
        {"state_dict": {f"module.base_encoder.{k}": v for k, v in moco.model.state_dict().items()}},
        tmp_path / "m.pth",
    )
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(build_backbone("mocov3_vit_small", str(tmp_path / "m.pth"))(x), moco(x))


def test_position_embeddings_of_another_grid_are_interpolated(tmp_path):
    src = create_vit("vit_small_patch16")
    sd = src.model.state_dict()
    sd["pos_embed"] = torch.randn(1, 1 + 20 * 20, 384)  # a checkpoint trained at 320 px
    torch.save(sd, tmp_path / "big.pth")
    b = create_vit("vit_small_patch16")
    load_weights(b, tmp_path / "big.pth")
    assert b.model.pos_embed.shape == (1, 1 + 14 * 14, 384)
    assert convert_state_dict({"teacher": {"backbone.cls_token": torch.ones(1)}}) == {
        "cls_token": torch.ones(1)
    }


def test_images_must_be_multiples_of_the_patch():
    with pytest.raises(ValueError, match="multiples of 16"):
        build_backbone("random")(torch.zeros(1, 3, 40, 32))


# ------------------------------------------------------------------------------ model


def batch_of(n=4, size=64, seed=0):
    ds = TwoViews(ImageSource("synthetic:8", synthetic_size=96), size=size, seed=seed)
    return torch.utils.data.default_collate([ds[i] for i in range(n)])


def test_gradient_reaches_the_backbone_and_is_finite():
    torch.manual_seed(0)
    model = DNCut(build_backbone("random"), min_kept=2)
    from diffeig.dncut.train import freeze_unused

    freeze_unused(model.backbone.model)
    out = model(batch_of())
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["backbone.model.patch_embed.proj.weight"].abs().sum() > 0
    assert grads["backbone.model.blocks.11.attn.qkv.weight"].abs().sum() > 0


def test_heads_normalize_each_view_by_its_own_batch_statistics():
    """As the authors' code (one head call per view); --joint-bn: one batch of both."""
    torch.manual_seed(0)
    b = batch_of()
    other = dict(b, view2=torch.randn_like(b["view2"]))
    for joint in (False, True):
        torch.manual_seed(0)
        model = DNCut(build_backbone("random"), min_kept=2, joint_bn=joint).train()
        with torch.no_grad():
            maps = [model.aligned_maps(model.backbone_features(x), x) for x in (b, other)]
        B = b["view1"].shape[0]
        view1 = [m[[*range(B), *range(2 * B, 3 * B)]] for m in maps]  # online and target
        assert torch.equal(view1[0], view1[1]) != joint


def test_heads_are_initialized_as_the_authors():
    torch.manual_seed(0)
    model = DNCut(build_backbone("random"))
    for head in (model.projector, model.predictor):
        for conv in (head[0], head[3]):
            assert not conv.bias.any()
            # trunc_normal_(std=0.02) with its default bounds +-2 (absolute, as theirs)
            assert 0.018 < conv.weight.std() < 0.022 and conv.weight.abs().max() < 0.2


def test_symmetric_objective_swaps_roles():
    torch.manual_seed(0)
    model = DNCut(build_backbone("random"), min_kept=2).double().eval()  # per-sample BN
    # The unnormalized Laplacian's z2 is orthogonal to 1: its sum is rounding noise, so
    # the authors' "sum" sign rule is arbitrary there. "max" makes both runs agree.
    model.ncut.sign = "max"
    b = {k: v.double() if v.is_floating_point() else v for k, v in batch_of().items()}
    swapped = dict(
        b,
        view1=b["view2"],
        view2=b["view1"],
        box1=b["box2"],
        box2=b["box1"],
        flip1=b["flip2"],
        flip2=b["flip1"],
    )
    with torch.no_grad():
        o, s = model(b), model(swapped)
    for term in ("mask", "reg", "iou", "kept"):
        assert torch.allclose(o[f"{term}_12"], s[f"{term}_21"], atol=1e-6)
        assert torch.allclose(o[f"{term}_21"], s[f"{term}_12"], atol=1e-6)
    assert torch.allclose(o["loss"], s["loss"], atol=1e-6)


# ------------------------------------------------------------------------ config, lr


def test_configs_and_flags():
    assert {"vit_s16", "vit_s8", "vit_b16_mae", "demo"} <= set(builtin_configs())
    assert load_yaml("configs/vit_s16.yaml")["arch"] == "vit_small_patch16"
    cfg = resolve("vit_s8", {"data": "synthetic:8", "alpha": 0.1})
    assert (cfg.arch, cfg.alpha, cfg.batch_size) == ("vit_small_patch8", 0.1, 256)
    with pytest.raises(ValueError, match="--laplacian"):
        resolve(None, {"data": "synthetic:8", "laplacian": "rw"})
    with pytest.raises(ValueError, match="--data is required"):
        resolve(None, {})
    with pytest.raises(FileNotFoundError, match="packaged: demo"):
        load_yaml("nope")


def test_lr_schedule_and_parameter_groups():
    cfg = TrainConfig(data="x", batch_size=512, epochs=10, warmup_epochs=1)
    lr = lr_schedule(cfg, 100)
    assert len(lr) == 1000
    assert lr[0] == 0 and lr[99] == pytest.approx(0.99e-3)  # the authors' T / warm-up
    assert lr[100] == pytest.approx(1e-3) and lr[-1] == pytest.approx(1e-6, rel=0.05)
    assert all(a >= b for a, b in zip(lr[100:], lr[101:]))
    model = DNCut(build_backbone("random"))
    decay, plain = authors_param_groups(model, 5e-4)
    assert plain["weight_decay"] == 0 and decay["weight_decay"] == 5e-4
    assert decay["adapt"] and not plain["adapt"]
    ids = {id(p) for p in plain["params"]}
    # The authors' rule: only names with "bias" or "bn" are left out; the heads'
    # Sequential BatchNorm ("projector.1.weight") and LayerNorm weights are adapted.
    assert id(model.projector[0].bias) in ids and id(model.projector[1].bias) in ids
    assert id(model.projector[1].weight) not in ids and id(model.projector[0].weight) not in ids
    norm_weights = [p for n, p in model.named_parameters() if "norm" in n and "weight" in n]
    assert norm_weights and not ids & {id(p) for p in norm_weights}


# --------------------------------------------------------------------------- training


def run_cli(*args):
    return cli.main(["train", "--config", "demo", "--no-progress", "--image-size", "64", *args])


def losses(folder):
    return [(r["step"], r["loss"]) for r in map(json.loads, open(Path(folder) / "log.jsonl"))]


def test_train_resume_exactly_and_export(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("--output", str(a), "--max-steps", "3", "--vis-every", "2") == 0
    assert run_cli("--output", str(b), "--max-steps", "2") == 0
    assert run_cli("--resume", str(b / "last.pth"), "--max-steps", "3") == 0
    la, lb = losses(a), losses(b)
    assert [s for s, _ in lb] == [1, 2, 3]
    assert la == lb  # the same losses on the next step as the uninterrupted run
    assert all(math.isfinite(v) for _, v in la)
    assert (a / "config.yaml").is_file() and (a / "vis" / "step0000002.png").is_file()
    rec = json.loads((a / "log.jsonl").read_text().splitlines()[-1])
    for key in ("mask_12", "reg_h_21", "kept", "iou", "lr"):
        assert key in rec
    assert cli.main(["export", str(a / "last.pth"), str(tmp_path / "bb.pth")]) == 0
    state = torch.load(a / "last.pth", weights_only=False)
    b2 = build_backbone("vit_small_patch16", str(tmp_path / "bb.pth"))
    for k, v in b2.model.state_dict().items():
        assert torch.equal(v, state["model"][f"backbone.model.{k}"])


def test_non_finite_loss_stops_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r"
    assert run_cli("--output", str(out), "--max-steps", "2") == 0
    before = (out / "last.pth").read_bytes()
    from diffeig.dncut.train import model as model_mod

    real = model_mod.DNCut.forward

    def poisoned(self, batch):
        o = real(self, batch)
        o["loss"] = o["loss"] * float("nan")
        return o

    monkeypatch.setattr(model_mod.DNCut, "forward", poisoned)
    assert run_cli("--resume", str(out / "last.pth"), "--max-steps", "4") == 3
    err = capsys.readouterr().err
    assert "non-finite loss at step 2" in err and "last.pth" in err
    assert (out / "last.pth").read_bytes() == before


def test_bad_options_are_clear_errors(tmp_path, capsys):
    assert run_cli("--output", str(tmp_path), "--batch-size", "1000") == 2
    assert "larger than the 128 images" in capsys.readouterr().err
    assert cli.main(["train", "--data", str(tmp_path / "none"), "--arch", "random"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "x.pth"), str(tmp_path / "y.pth")]) == 2


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "diffeig.dncut",
        "train",
        "--config",
        "demo",
        "--image-size",
        "64",
        "--no-progress",
        "--max-steps",
        "2",
        "--output",
        str(tmp_path),
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [s for s, _ in losses(tmp_path)] == [1, 2]
    assert res.stdout.count("done: step 2") == 1  # rank 0 only
    assert torch.load(tmp_path / "last.pth", weights_only=False)["step"] == 2


def test_import_diffeig_does_not_import_the_recipe():
    code = (
        "import sys, diffeig; "
        "names = ('diffeig.dncut', 'timm', 'torchvision'); "
        "bad = sorted(m for m in sys.modules if m.startswith(names)); "
        "assert not bad, bad"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_python_m_entry_point_help():
    res = subprocess.run(
        [sys.executable, "-m", "diffeig.dncut", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0
    for cmd in ("train", "export", "eval-saliency", "eval-discovery", "visualize"):
        assert cmd in res.stdout


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, capsys):
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed")
    except ImportError:
        pass
    assert run_cli("--output", str(tmp_path), "--max-steps", "1", "--tensorboard") == 2
    assert "needs the tensorboard package" in capsys.readouterr().err


def test_training_figure_labels_every_column_and_row(tmp_path):
    """The figure names its columns once above the first row and each row on its left."""
    import numpy as np
    from PIL import Image

    from diffeig.dncut.train import save_visual

    torch.manual_seed(0)
    b = batch_of()
    model = DNCut(build_backbone("random"), min_kept=2)
    with torch.no_grad():
        out = model(b)
    save_visual(b, out, tmp_path / "fig.png", rows=2)
    a = np.asarray(Image.open(tmp_path / "fig.png").convert("L"))
    S = b["view1"].shape[-1]
    assert a.shape[1] > 7 * S and a.shape[0] > 2 * S  # room for the labels
    margin = a.shape[1] - 7 * (S + 4) - 4  # the row labels' column
    header = a.shape[0] - 2 * (S + 4) - 4  # the column labels' band
    assert margin > 0 and header > 0
    assert (a[:header, margin:] < 128).any()  # column labels are drawn
    assert (a[header:, :margin] < 128).any()  # row labels are drawn
