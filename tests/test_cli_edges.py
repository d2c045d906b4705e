"""The recipe's command line at its edges (issue 22, items 8 - 11): nothing overwritten,
one-line errors naming what to fix, memory refused before it is allocated, one bad image
never ends an evaluation."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("torchvision")

from PIL import Image  # noqa: E402

from diffeig.dncut import checkpoint, cli  # noqa: E402
from diffeig.dncut.eval.datasets import read_mask  # noqa: E402
from diffeig.dncut.eval.features import check_memory  # noqa: E402

DATA = Path(__file__).parent / "data"


def train(*args):
    return cli.main(["train", "--config", "demo", "--no-progress", "--image-size", "64", *args])


def assert_one_line_error(err: str, *needles):
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), err
    for n in needles:
        assert n in lines[-1], (n, err)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    assert train("--output", str(out), "--max-steps", "1") == 0
    return out


# ------------------------------------------------------------ 8: export onto its input


def test_export_never_replaces_its_input_or_an_existing_file(run, tmp_path, capsys):
    ckpt = tmp_path / "last.pth"
    shutil.copy(run / "last.pth", ckpt)
    before = ckpt.read_bytes()
    link = tmp_path / "link.pth"
    os.symlink(ckpt, link)
    for target in (ckpt, link):
        assert cli.main(["export", str(ckpt), str(target)]) == 2
        assert_one_line_error(capsys.readouterr().err, "is the checkpoint", "training state")
    # even with --force the input is never the output
    assert cli.main(["export", str(ckpt), str(ckpt), "--force"]) == 2
    capsys.readouterr()
    other = tmp_path / "backbone.pth"
    other.write_bytes(b"keep me")
    assert cli.main(["export", str(ckpt), str(other)]) == 2
    assert_one_line_error(capsys.readouterr().err, "exists", "--force")
    assert other.read_bytes() == b"keep me"
    assert cli.main(["export", str(ckpt), str(other), "--force"]) == 0
    assert torch.load(other, weights_only=True)["arch"]
    assert ckpt.read_bytes() == before


# ------------------------------------------------------------------- 9: one-line errors

BAD_YAML = {
    "base_lr: fast\n": ("base_lr", "a number"),
    "base_lr: [1, 2]\n": ("base_lr", "a number"),
    "save_epochs: 3\n": ("save_epochs", "true or false"),
    "base_lrr: 0.1\n": ("unknown option 'base_lrr'", "did you mean 'base_lr'"),
    "crop_scale: 0.5\n": ("crop_scale", "a list"),
    "arch: 3\n": ("arch", "a string"),
}


@pytest.mark.parametrize("text", list(BAD_YAML))
def test_config_with_wrong_types_is_one_line(text, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    code = cli.main(["train", "--config", str(cfg), "--data", "synthetic:4"])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, *BAD_YAML[text])


@pytest.mark.parametrize("size", ["8", "1000000"])
def test_image_size_bounds(size, tmp_path, capsys):
    code = cli.main(["train", "--config", "demo", "--image-size", size, "--output", str(tmp_path)])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "--image-size", "[32, 2048]")


def test_checkpoint_lacking_a_key_or_with_a_wrong_shape(run, tmp_path, capsys):
    state = torch.load(run / "last.pth", weights_only=True)
    state.pop("checksum")
    lacking = dict(state)
    lacking.pop("optimizer")
    torch.save(lacking, tmp_path / "lacking.pth")
    assert train("--resume", str(tmp_path / "lacking.pth")) == 2
    assert_one_line_error(capsys.readouterr().err, "lacks", "'optimizer'")
    model = dict(state["model"])
    key = next(k for k in model if k.startswith("projector"))
    model[key] = torch.zeros(3, 3)
    torch.save({**state, "model": model}, tmp_path / "shape.pth")
    assert train("--resume", str(tmp_path / "shape.pth"), "--max-steps", "2") == 2
    assert_one_line_error(capsys.readouterr().err, repr(key), "(3, 3)")


def test_full_disk_keeps_the_old_checkpoint_and_no_temporary(run, tmp_path, monkeypatch):
    target = tmp_path / "last.pth"
    shutil.copy(run / "last.pth", target)
    before = target.read_bytes()

    def full(state, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.atomic_save({"x": torch.ones(3)}, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def test_a_temporary_left_by_a_killed_write_is_removed_on_the_next_start(run, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(run, out)
    stale = out / ".last.pth.tmp12345"
    stale.write_bytes(b"half a checkpoint")  # what SIGKILL mid-write leaves
    assert train("--resume", str(out / "last.pth"), "--max-steps", "2") == 0
    assert not stale.exists()
    assert torch.load(out / "last.pth", weights_only=True)["step"] == 2


# --------------------------------------------------------------- 10 and 11: evaluation


def saliency_root(tmp_path, images: dict) -> Path:
    root = tmp_path / "sal"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, (image, mask) in images.items():
        image.save(root / "images" / f"{name}.png")
        mask.save(root / "masks" / f"{name}.png")
    return root


def evaluate(kind, root, *extra, output):
    dataset = "folder" if kind == "saliency" else "boxes"
    argv = [f"eval-{kind}", "--dataset", dataset, "--root", str(root), "--arch", "color"]
    return cli.main([*argv, "--quiet", "--workers", "0", "--output", str(output), *extra])


def test_an_image_too_large_for_memory_is_refused_with_the_flag(tmp_path, capsys):
    big = Image.new("RGB", (6000, 4000), (200, 30, 30))
    root = saliency_root(tmp_path, {"big": (big, Image.new("L", big.size))})
    assert evaluate("saliency", root, output=tmp_path / "o.json") == 2
    err = capsys.readouterr().err
    assert_one_line_error(err, "GiB", "--max-side")
    side = int(err.split("--max-side ")[-1].split()[0])
    check_memory("big", 4000, 6000, 16, side, "resize")  # the suggested side fits
    with pytest.raises(ValueError):
        check_memory("big", 4000, 6000, 16, int(side * 1.2), "resize")  # and is near the limit
    assert evaluate("saliency", root, "--max-side", "160", output=tmp_path / "o.json") == 0
    small = Image.new("RGB", (300, 200), (200, 30, 30))
    root2 = saliency_root(tmp_path / "p", {"s": (small, Image.new("L", small.size))})
    code = evaluate("saliency", root2, "--patch-size", "1", output=tmp_path / "o2.json")
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "GiB", "--max-side", "--patch-size")


def test_discovery_takes_max_side_and_scales_boxes_back(tmp_path):
    root = tmp_path / "boxes"
    (root / "images").mkdir(parents=True)
    image = Image.open(DATA / "quokka.jpg")
    image.save(root / "images" / "q.jpg")
    (root / "boxes.json").write_text(json.dumps({"q.jpg": [[148, 50, 550, 642]]}))
    out = tmp_path / "o.json"
    assert evaluate("discovery", root, "--max-side", "320", output=out) == 0
    box = json.loads(out.read_text())["per_image"][0]["box"]
    assert max(box) > 320  # in the original image's pixels (960 x 643)
    assert box[2] <= image.width + 1e-6 and box[3] <= image.height + 1e-6


def test_one_pixel_image_is_skipped_and_counted(tmp_path):
    q = Image.open(DATA / "quokka.jpg").convert("RGB").resize((96, 64))
    m = Image.open(DATA / "quokka_mask.png").convert("L").resize((96, 64))
    tiny = Image.new("RGB", (1, 1), (9, 9, 9))
    root = saliency_root(tmp_path, {"q": (q, m), "tiny": (tiny, Image.new("L", (1, 1)))})
    out = tmp_path / "o.json"
    assert evaluate("saliency", root, output=out) == 0
    res = json.loads(out.read_text())
    assert res["summary"]["images"] == 1 and res["summary"]["skipped"] == 1
    assert "tiny" in res["skipped"][0]


def test_palette_masks_are_read_by_their_indices(tmp_path):
    mask = Image.open(DATA / "quokka_mask.png").convert("L")
    palette = mask.point(lambda v: 1 if v > 127 else 0).convert("P")
    palette.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)  # VOC's dark red for index 1
    palette.save(tmp_path / "p.png")
    got = read_mask(tmp_path / "p.png")
    expected = torch.from_numpy(__import__("numpy").asarray(mask) > 127).float()
    assert torch.equal(got, expected) and got.mean().item() > 0.25


def test_two_images_with_one_stem_are_an_error_naming_both(tmp_path, capsys):
    q = Image.open(DATA / "quokka.jpg").convert("RGB").resize((64, 48))
    root = saliency_root(tmp_path, {"a": (q, Image.new("L", q.size))})
    q.save(root / "images" / "a.jpg")
    assert evaluate("saliency", root, output=tmp_path / "o.json") == 2
    assert_one_line_error(capsys.readouterr().err, "a.jpg", "a.png")


def test_non_finite_boxes_are_refused(tmp_path, capsys):
    root = tmp_path / "boxes"
    (root / "images").mkdir(parents=True)
    shutil.copy(DATA / "quokka.jpg", root / "images" / "q.jpg")
    (root / "boxes.json").write_text('{"q.jpg": [[1, 2, NaN, 4]]}')
    assert evaluate("discovery", root, output=tmp_path / "o.json") == 2
    assert_one_line_error(capsys.readouterr().err, "finite", "q.jpg")


def test_output_in_the_wrong_role_is_refused(tmp_path, capsys):
    q = Image.open(DATA / "quokka.jpg").convert("RGB").resize((64, 48))
    root = saliency_root(tmp_path, {"a": (q, Image.new("L", q.size))})
    for out, needle in ((tmp_path, "directory"), (root / "images" / "a.png", ".json")):
        assert evaluate("saliency", root, output=out) == 2
        assert_one_line_error(capsys.readouterr().err, "--output", needle)
    assert (root / "images" / "a.png").stat().st_size > 0


# ------------------------------------------------------------ issue 23: guidance at the door


def test_a_vit_without_weights_is_refused_naming_the_way_out(tmp_path, capsys):
    q = Image.open(DATA / "quokka.jpg").convert("RGB").resize((64, 48))
    root = saliency_root(tmp_path, {"a": (q, Image.new("L", q.size))})
    for cmd in (
        ["eval-saliency", "--dataset", "folder", "--root", str(root)],
        ["eval-discovery", "--dataset", "boxes", "--root", str(root)],
        ["visualize", str(DATA / "quokka.jpg"), "--out", str(tmp_path / "v.png")],
    ):
        assert cli.main([*cmd, "--arch", "vit_small_patch16"]) == 2
        assert_one_line_error(capsys.readouterr().err, "--weights", "--arch random", "--arch color")


def test_a_training_checkpoint_as_weights_names_export(run, tmp_path, capsys):
    argv = ["visualize", str(DATA / "quokka.jpg"), "--out", str(tmp_path / "v.png")]
    assert cli.main([*argv, "--weights", str(run / "last.pth")]) == 2
    assert_one_line_error(capsys.readouterr().err, "training checkpoint", "diffeig.dncut export")


def test_a_jpeg_as_weights_is_not_a_checkpoint(tmp_path, capsys):
    argv = ["visualize", str(DATA / "quokka.jpg"), "--out", str(tmp_path / "v.png")]
    assert cli.main([*argv, "--weights", str(DATA / "quokka.jpg")]) == 2
    assert_one_line_error(capsys.readouterr().err, "not a PyTorch checkpoint", "JPEG")


@pytest.mark.slow  # fresh interpreters without the extras: about 10 s
def test_help_needs_none_of_the_extras(tmp_path):
    import subprocess
    import sys

    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import importlib.abc, importlib.util, sys\n"
        "B = {'timm', 'torchvision', 'PIL', 'tqdm', 'yaml', 'scipy'}\n"
        "class F(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, n, p, t=None):\n"
        "        if n.split('.')[0] in B: raise ImportError(n)\n"
        "sys.meta_path.insert(0, F())\n"
        "o = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, *a: None if n.split('.')[0] in B else o(n, *a)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run_ = [sys.executable, "-m", "diffeig.dncut"]
    for argv in (["--help"], ["eval-discovery", "--help"], ["train", "--help"]):
        r = subprocess.run([*run_, *argv], env=env, capture_output=True, text=True)
        assert r.returncode == 0 and "usage:" in r.stdout, r.stderr
    r = subprocess.run(
        [*run_, "train", "--data", "synthetic:4"], env=env, capture_output=True, text=True
    )
    assert r.returncode == 2 and 'pip install -e ".[dncut]"' in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_discovery_prints_the_same_summary_table(tmp_path, capsys):
    root = tmp_path / "boxes"
    (root / "images").mkdir(parents=True)
    shutil.copy(DATA / "quokka.jpg", root / "images" / "q.jpg")
    (root / "boxes.json").write_text(json.dumps({"q.jpg": [[148, 50, 550, 642]]}))
    out = tmp_path / "o.json"
    assert evaluate("discovery", root, output=out) == 0
    table = capsys.readouterr().out
    assert "| images | skipped | CorLoc | s / image |" in table
    s = json.loads(out.read_text())["summary"]
    assert s["images"] == 1 and s["skipped"] == 0 and s["seconds_per_image"] > 0


def test_bf16_is_opt_in():
    from diffeig.dncut.config import TrainConfig, load_yaml

    assert TrainConfig().bf16 is False
    for name in ("vit_s16", "vit_s8", "vit_b16_mae", "demo"):
        assert load_yaml(name).get("bf16", False) is False


def test_eigenvector_panels_survive_an_outlier_and_carry_a_colour_bar():
    import numpy as np

    from diffeig.dncut.figures import compose, heat, robust_scale

    rng = np.random.default_rng(0)
    z = rng.normal(size=(14, 14))
    z[3, 4] = 1e3  # one outlier token: with max |z| the rest of the panel was white
    tile = heat(z, (224, 224))
    px = np.asarray(tile)[:, :180].astype(int)  # the map, without the colour bar
    white = (px.min(-1) > 235).mean()
    assert white < 0.3
    assert robust_scale(z) < 5
    bar = np.asarray(tile)[14:208, 186:192].astype(int)  # red on top, blue at the bottom
    assert bar[0, :, 0].mean() > 200 and bar[0, :, 2].mean() < 60
    assert bar[-1, :, 2].mean() > 200 and bar[-1, :, 0].mean() < 60
    plain = compose([([tile], ["z2"])])
    with_legend = compose([([tile], ["z2"])], footer=["grey = 0.5: undecided"])
    assert with_legend.height > plain.height and with_legend.width == plain.width
