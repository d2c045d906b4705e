"""Reliability of the recipe (issue 10): nothing non-finite is saved, no code runs from a
checkpoint, no option or file makes a command hang or end in a traceback, files stay clean.

Each test here failed before the fix it guards."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("torchvision")

from PIL import Image  # noqa: E402

from diffeig.dncut import checkpoint, cli  # noqa: E402
from diffeig.dncut.eval.datasets import SaliencyDataset  # noqa: E402
from diffeig.dncut.images import list_images  # noqa: E402
from diffeig.dncut.train.losses import mask_consistency  # noqa: E402

DATA = Path(__file__).parent / "data"


def train(*args):
    return cli.main(["train", "--config", "demo", "--no-progress", "--image-size", "64", *args])


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    """A 2-step demo run (last.pth at step 2), shared read-only by the tests below."""
    out = tmp_path_factory.mktemp("run") / "r"
    assert train("--output", str(out), "--max-steps", "2", "--log-every", "1") == 0
    return out


def copy_run(run2, tmp_path) -> Path:
    dst = tmp_path / "r"
    shutil.copytree(run2, dst)
    return dst


def steps(folder):
    return [json.loads(line)["step"] for line in open(Path(folder) / "log.jsonl")]


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def assert_clean_error(err: str, *needles):
    """One ``error: ...`` line, no traceback, mentioning each needle."""
    assert "Traceback" not in err, err
    assert last_line(err).startswith("error: "), err
    for n in needles:
        assert n in err, (n, err)


# --------------------------------------------------------------- 1: NaN never reaches a checkpoint


def test_huge_learning_rate_stops_without_touching_the_checkpoint(run2, tmp_path, capsys):
    out = copy_run(run2, tmp_path)
    before = (out / "last.pth").read_bytes()
    code = train("--resume", str(out / "last.pth"), "--max-steps", "6", "--base-lr", "1e38")
    err = capsys.readouterr().err
    assert code == 3
    assert "non-finite" in err and "at step " in err and "last.pth" in err
    assert (out / "last.pth").read_bytes() == before


def test_non_finite_parameters_are_caught_before_saving(run2, tmp_path, monkeypatch, capsys):
    out = copy_run(run2, tmp_path)
    before = (out / "last.pth").read_bytes()
    from diffeig.dncut.train.optim import LARS

    real = LARS.step

    def poisoned(self, *a, **k):
        r = real(self, *a, **k)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return r

    monkeypatch.setattr(LARS, "step", poisoned)
    assert train("--resume", str(out / "last.pth"), "--max-steps", "4") == 3
    err = capsys.readouterr().err
    assert "non-finite parameters after the update at step 2" in err
    assert (out / "last.pth").read_bytes() == before


def test_nan_learning_rate_is_an_option_error(tmp_path, capsys):
    assert train("--output", str(tmp_path / "x"), "--base-lr", "nan") == 2
    assert_clean_error(capsys.readouterr().err, "--base-lr")


# ------------------------------------------------------------ 2: no code from a checkpoint


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def crafted(path: Path, flag: Path) -> Path:
    p = Payload()
    p.flag = flag
    with open(path, "wb") as f:
        pickle.dump({"model": {}, "optimizer": {}, "step": 0, "config": p}, f)
    return path


@pytest.mark.parametrize("command", ["resume", "export", "weights"])
def test_crafted_pickle_is_refused(tmp_path, capsys, command):
    flag = tmp_path / "PWNED"
    bad = crafted(tmp_path / "evil.pth", flag)
    if command == "resume":
        code = train("--resume", str(bad), "--output", str(tmp_path / "o"))
    elif command == "export":
        code = cli.main(["export", str(bad), str(tmp_path / "bb.pth")])
    else:
        img = tmp_path / "q.jpg"
        shutil.copy(DATA / "quokka.jpg", img)
        code = cli.main(
            ["visualize", str(img), "--arch", "vit_small_patch16", "--weights", str(bad)]
            + ["--out", str(tmp_path / "v.png")]
        )
    assert code == 2
    assert_clean_error(capsys.readouterr().err, "refused to load")
    assert not flag.exists()


# -------------------------------------------------------------------- 5: no hang on options


@pytest.mark.parametrize("step", [0.0, -0.05, 1e-300, float("nan")])
def test_bad_threshold_step_is_refused(step, tmp_path, capsys):
    with pytest.raises(ValueError, match="threshold_step"):
        mask_consistency(torch.rand(4, 3, 3), torch.rand(4, 3, 3), threshold_step=step)
    assert train("--output", str(tmp_path / "x"), "--threshold-step", str(step)) == 2
    assert_clean_error(capsys.readouterr().err, "--threshold-step")


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--iou-threshold", "nan"),
        ("--iou-threshold", "1.5"),
        ("--weight-decay", "-1"),
        ("--weight-decay", "inf"),
        ("--min-kept", "0"),
        ("--max-steps", "0"),
        ("--stop-epoch", "-1"),
        ("--temperature", "0"),
        ("--base-lr", "inf"),
        ("--momentum", "2"),
    ],
)
def test_numeric_train_options_are_checked(flag, value, tmp_path, capsys):
    assert train("--output", str(tmp_path / "x"), flag, value) == 2
    assert_clean_error(capsys.readouterr().err, flag)


def test_mask_consistency_needs_no_loop_for_a_low_threshold():
    # threshold 1.0 and step 1e-4: 10^4 host steps at most, never a device sync per step
    on, tg = torch.rand(8, 4, 4), torch.rand(8, 4, 4)
    loss, st = mask_consistency(on, tg, iou_threshold=1.0, threshold_step=1e-4, min_kept=8)
    assert st["kept"].item() == 1.0 and torch.isfinite(loss)


@pytest.mark.parametrize(
    "cmd,flag,value",
    [
        ("eval-saliency", "--max-side", "0"),
        ("eval-saliency", "--batch-size", "0"),
        ("eval-saliency", "--limit", "-3"),
        ("eval-saliency", "--patch-size", "0"),
        ("eval-saliency", "--workers", "-1"),
        ("eval-saliency", "--device", "tpu9"),
        ("eval-discovery", "--device", "cuda:x"),
    ],
)
def test_numeric_eval_options_are_checked(cmd, flag, value, tmp_path, capsys):
    ds = "ecssd" if cmd == "eval-saliency" else "voc07"
    argv = [cmd, "--dataset", ds, "--root", str(tmp_path), "--arch", "color", flag, value]
    assert cli.main(argv) == 2
    assert_clean_error(capsys.readouterr().err, flag)


def test_fifo_named_png_is_never_opened(quokka_ecssd):
    root = quokka_ecssd
    os.mkfifo(root / "images/blocker.png")
    os.mkfifo(root / "ground_truth_mask/blocker.png")
    ds = SaliencyDataset("ecssd", str(root))  # would block in Image.open before
    assert [name for name, *_ in ds.items] == ["quokka"]
    assert list_images(root / "images") == [str(root / "images/quokka.jpg")]


# ----------------------------------------------------------- 9: the CLI ends in "error: ..."


def bad_images(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(good)
    (folder / "empty.png").write_bytes(b"")
    (folder / "junk.jpg").write_bytes(b"this is not a jpeg")
    data = (DATA / "quokka.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    return {"good": good}


@pytest.mark.parametrize("workers", ["0", "1"])
def test_training_on_a_corrupt_image_names_it(tmp_path, capsys, workers):
    folder = tmp_path / "imgs"
    bad_images(folder)
    code = train(
        "--data", str(folder), "--batch-size", "4", "--workers", workers,
        "--output", str(tmp_path / "o"), "--max-steps", "1",
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert_clean_error(err, "cannot read image")
    assert any(n in last_line(err) for n in ("empty.png", "junk.jpg", "truncated.jpg"))


def test_evaluation_skips_unreadable_images_with_a_count(tmp_path, capsys):
    root = tmp_path / "ECSSD"
    bad_images(root / "images")
    (root / "ground_truth_mask").mkdir()
    for p in (root / "images").iterdir():
        Image.new("L", (64, 64) if p.stem == "good" else (10, 10)).save(
            root / "ground_truth_mask" / f"{p.stem}.png"
        )
    out = tmp_path / "r.json"
    argv = ["eval-saliency", "--dataset", "ecssd", "--root", str(root), "--arch", "color"]
    assert cli.main([*argv, "--quiet", "--output", str(out), "--workers", "0"]) == 0
    captured = capsys.readouterr()
    res = json.loads(out.read_text())
    assert res["summary"]["images"] == 1 and res["summary"]["skipped"] == 3
    assert sorted(Path(s.split(": ")[0].split()[-1]).name for s in res["skipped"]) == [
        "empty.png",
        "junk.jpg",
        "truncated.jpg",
    ]
    assert captured.err.count("warning: skipped") == 3
    assert "skipped 3 unreadable file(s)" in captured.out


def test_bad_yaml_and_non_mapping_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("arch: [unclosed\n")
    assert cli.main(["train", "--config", str(bad), "--data", "synthetic:8"]) == 2
    assert_clean_error(capsys.readouterr().err, "not valid YAML")
    bad.write_text("- a\n- b\n")
    assert cli.main(["train", "--config", str(bad), "--data", "synthetic:8"]) == 2
    assert_clean_error(capsys.readouterr().err, "mapping")
    good = tmp_path / "good.yaml"
    good.write_text("base_lr: 1e-3\n")  # YAML reads this as a string: taken as a number
    from diffeig.dncut.config import resolve

    assert resolve(str(good), {"data": "synthetic:8"}).base_lr == 1e-3


def test_output_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert train("--output", str(f)) == 2
    assert_clean_error(capsys.readouterr().err, "not a directory")


def test_malformed_annotations(tmp_path, capsys):
    root = tmp_path / "boxes"
    (root / "images").mkdir(parents=True)
    shutil.copy(DATA / "quokka.jpg", root / "images/quokka.jpg")
    argv = ["eval-discovery", "--dataset", "boxes", "--root", str(root), "--arch", "color"]
    for text, needle in (
        ("{not json", "not valid JSON"),
        ('{"quokka.jpg": [[1, 2, 3]]}', "not lists of [x1, y1, x2, y2] boxes"),
        ('["quokka.jpg"]', "must map image file names"),
    ):
        (root / "boxes.json").write_text(text)
        assert cli.main([*argv, "--quiet", "--output", str(tmp_path / "o.json")]) == 2
        assert_clean_error(capsys.readouterr().err, needle)


def test_malformed_voc_xml_is_skipped(tmp_path, capsys):
    base = tmp_path / "VOC2007"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / d).mkdir(parents=True)
    (base / "ImageSets/Main/trainval.txt").write_text("a\nb\n")
    for i in "ab":
        shutil.copy(DATA / "quokka.jpg", base / f"JPEGImages/{i}.jpg")
    (base / "Annotations/a.xml").write_text(
        "<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax>"
        "<ymax>9</ymax></bndbox></object></annotation>"
    )
    (base / "Annotations/b.xml").write_text("<annotation><object><bndbox>")
    out = tmp_path / "o.json"
    argv = ["eval-discovery", "--dataset", "voc07", "--root", str(tmp_path), "--arch", "color"]
    assert cli.main([*argv, "--quiet", "--output", str(out), "--workers", "0"]) == 0
    res = json.loads(out.read_text())
    assert res["summary"]["images"] == 1 and res["summary"]["skipped"] == 1
    assert "b.xml" in res["skipped"][0]


def test_resume_with_another_architecture(run2, tmp_path, capsys):
    out = copy_run(run2, tmp_path)
    code = train("--resume", str(out / "last.pth"), "--arch", "vit_small_patch8")
    assert code == 2
    assert_clean_error(capsys.readouterr().err, "--arch random", "vit_small_patch8")


@pytest.mark.parametrize("device", ["tpu", "cuda:zero", "gpu"])
def test_unknown_device(device, tmp_path, capsys):
    assert train("--output", str(tmp_path / "x"), "--device", device) == 2
    assert_clean_error(capsys.readouterr().err, "--device")


def test_evaluation_checks_its_output_before_starting(quokka_ecssd, tmp_path, capsys):
    root = quokka_ecssd
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = ["eval-saliency", "--dataset", "ecssd", "--root", str(root), "--arch", "color"]
    assert cli.main([*argv, "--quiet", "--output", str(blocker / "r.json")]) == 2
    err = capsys.readouterr().err
    assert_clean_error(err, "--output", "not writable")
    assert cli.main([*argv, "--quiet", "--output", str(tmp_path)]) == 2
    assert_clean_error(capsys.readouterr().err, "is a directory")


@pytest.mark.parametrize("spec", ["synthetics", "synthetic", "synthetic:", "synthetic:0"])
def test_data_is_a_path_or_exactly_synthetic_n(spec, tmp_path, capsys):
    assert train("--output", str(tmp_path / "x"), "--data", spec) == 2
    assert_clean_error(capsys.readouterr().err, "synthetic:N")


def test_visualize_into_a_folder(tmp_path):
    imgs = []
    for name in ("a", "b"):
        p = tmp_path / f"{name}.jpg"
        shutil.copy(DATA / "quokka.jpg", p)
        imgs.append(str(p))
    out = tmp_path / "figs"
    argv = ["visualize", *imgs, "--arch", "color", "--max-side", "96", "--out", str(out)]
    assert cli.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    single = tmp_path / "one.png"
    assert cli.main([*argv[:-2], "--out", str(single)]) == 0 and single.is_file()


# -------------------------------------------------------------------------- 10: files clean


def test_export_into_a_directory_leaves_no_tmp(run2, tmp_path, capsys):
    out = tmp_path / "exported"
    out.mkdir()
    assert cli.main(["export", str(run2 / "last.pth"), str(out)]) == 0
    assert [p.name for p in out.iterdir()] == ["backbone.pth"]
    assert f"wrote {out / 'backbone.pth'}" in capsys.readouterr().out
    assert not list(run2.glob(".*tmp*"))


def test_interrupted_save_leaves_no_tmp(tmp_path, monkeypatch):
    def interrupted(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_save({"x": torch.ones(3)}, tmp_path / "c.pth")
    assert list(tmp_path.iterdir()) == []


def test_log_has_no_repeated_steps_after_resume(run2, tmp_path):
    out = copy_run(run2, tmp_path)
    step2 = (out / "last.pth").read_bytes()
    assert train("--resume", str(out / "last.pth"), "--max-steps", "3", "--log-every", "1") == 0
    assert steps(out) == [1, 2, 3]
    # the step-3 save is lost (a kill between logging and saving): resume from step 2 again
    (out / "last.pth").write_bytes(step2)
    assert train("--resume", str(out / "last.pth"), "--max-steps", "3", "--log-every", "1") == 0
    assert steps(out) == [1, 2, 3]


def test_corrupted_checkpoint_is_refused(run2, tmp_path, capsys):
    state = torch.load(run2 / "last.pth", weights_only=True)
    assert len(state["checksum"]) == 64
    key = next(iter(state["model"]))
    state["model"][key] = state["model"][key] + 1  # a flipped value, old checksum kept
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError, match="do not match the checksum"):
        checkpoint.load_checkpoint(bad)
    assert train("--resume", str(bad), "--output", str(tmp_path / "o")) == 2
    assert_clean_error(capsys.readouterr().err, "corrupt")
    cut = tmp_path / "cut.pth"
    cut.write_bytes((run2 / "last.pth").read_bytes()[:5000])
    assert cli.main(["export", str(cut), str(tmp_path / "bb.pth")]) == 2
    assert_clean_error(capsys.readouterr().err, "not a readable checkpoint")


@pytest.mark.slow
def test_f_beta_in_bounded_memory():
    # 3000 x 3000 pixels: the old 255 x H x W float64 temporary alone was 18 GB.
    code = textwrap.dedent(
        """
        import resource, torch
        from diffeig.dncut.eval.metrics import f_beta_curve
        g = torch.Generator().manual_seed(0)
        pred = torch.rand(3000, 3000, generator=g)
        gt = torch.rand(3000, 3000, generator=g) > 0.5
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        f = f_beta_curve(pred, gt)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        assert f.shape == (255,) and 0 < float(f.max()) <= 1
        print(grown // 1024)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.strip()) < 400  # MB


# ------------------------------------------------- a gradient spike at saturated masks


def test_saturated_mask_gives_no_gradient_spike():
    """z2 is solved in float64; a float64 sigmoid that rounds to 1.0 in float32 kept its
    derivative and met the BCE's 1 / (m (1 - m)): 3e4 - 5e4 per saturated token."""
    from diffeig.dncut.train.losses import _bce
    from diffeig.dncut.train.model import NCutOptions, ncut_masks

    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 8, 4, 4, generator=g)  # float32 maps, as in training
    f[0, :, 0, 0] = 40 * f[0, :, 1, 1]  # a token far from the rest: |z2| large there
    f = f.requires_grad_()
    masks, z2 = ncut_masks(f, NCutOptions(sign="max", temperature=0.01))
    assert masks.dtype == torch.float32 and (masks == 1).any()  # saturated entries
    z2.retain_grad()
    _bce(masks, torch.full_like(masks, 0.5)).sum().backward()
    # d BCE / d z2 = (m - t) / T per token: at most 0.5 / 0.01 / 16 tokens here
    assert z2.grad.abs().max().item() <= 0.5 / 0.01 / 16 * 1.01
