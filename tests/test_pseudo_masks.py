"""``pseudo-masks`` and ``eval-instances`` on generated multi-object images with COCO ground
truth (diffeig.dncut.images.write_multi_object): recall, the pycocotools round trip,
resume after a kill, torchrun, bad images."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402

from diffeig.dncut import cli  # noqa: E402
from diffeig.dncut.coco import decode  # noqa: E402
from diffeig.dncut.eval import pseudo_masks  # noqa: E402
from diffeig.dncut.eval.instances import evaluate_instances  # noqa: E402
from diffeig.dncut.images import write_multi_object  # noqa: E402

# The colour baseline with MaskCut's scales (docs/pseudo-masks.md), 224 px, patch 8.
FLAGS = [
    "--arch", "color", "--patch-size", "8", "--color-sigma", "14", "--position-sigma", "0.5",
    "--max-objects", "4", "--image-size", "224", "--batch-size", "3", "--workers", "0",
    "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    gt = write_multi_object(root, 8, size=224, seed=0)
    return root / "images", gt


def run(root, out, *extra):
    return cli.main(["pseudo-masks", "--root", str(root), "--output", str(out), *FLAGS, *extra])


@pytest.fixture(scope="module")
def one_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "annotations.json"
    assert run(data[0], out) == 0
    return out


def test_pseudo_masks_find_the_objects_and_load_in_pycocotools(data, one_run, capsys):
    coco = COCO(str(one_run))  # unchanged, as detectron2 and CutLER's training read it
    assert len(coco.getImgIds()) == 8 and coco.getCatIds() == [1]
    for ann in coco.dataset["annotations"]:
        mask = decode(ann)
        img = coco.imgs[ann["image_id"]]
        assert mask.shape == (img["height"], img["width"])
        assert ann["area"] == mask.sum() > 0 and 0 <= ann["score"] <= 1
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    m = evaluate_instances(str(data[1]), str(one_run))
    assert m["mask_recall"] >= 0.8 and m["detection_rate"] >= 0.8  # measured: 0.96 and 0.96
    assert m["segm_AP50"] >= 0.5


def test_eval_instances_scores_the_ground_truth_perfectly(data, tmp_path, capsys):
    gt = json.loads(Path(data[1]).read_text())
    results = [{**a, "score": 1.0} for a in gt["annotations"]]
    pred = tmp_path / "perfect.json"
    pred.write_text(json.dumps(results))
    out = tmp_path / "metrics.json"
    assert cli.main(["eval-instances", "--gt", str(data[1]), "--pred", str(pred),
                     "--output", str(out)]) == 0  # fmt: skip
    m = json.loads(out.read_text())
    assert m["segm_AP"] == m["bbox_AP"] == 1.0 and m["corloc"] == 1.0
    assert m["mask_recall"] == m["detection_rate"] == 1.0
    assert "| mask | 100.0 | 100.0 | 100.0 | 100.0 |" in capsys.readouterr().out


def test_eval_instances_on_a_discovery_dataset_s_boxes(data, one_run, tmp_path, capsys):
    gt = json.loads(Path(data[1]).read_text())
    names = {im["id"]: im["file_name"] for im in gt["images"]}
    table: dict = {}
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        table.setdefault(names[a["image_id"]], []).append([x, y, x + w, y + h])
    root = tmp_path / "boxes"
    (root / "images").mkdir(parents=True)
    for name in table:
        (root / "images" / name).write_bytes((data[0] / name).read_bytes())
    (root / "boxes.json").write_text(json.dumps(table))
    out = tmp_path / "m.json"
    argv = ["eval-instances", "--dataset", "boxes", "--root", str(root), "--pred", str(one_run)]
    assert cli.main([*argv, "--output", str(out)]) == 0
    m, ref = json.loads(out.read_text()), evaluate_instances(str(data[1]), str(one_run))
    for key in ("bbox_AP", "bbox_AP50", "bbox_AR100", "corloc", "detection_rate"):
        assert m[key] == pytest.approx(ref[key]), key
    assert m["segm_AP"] is None and m["mask_recall"] is None
    assert "| mask | - | - | - | - |" in capsys.readouterr().out
    assert cli.main(["eval-instances", "--dataset", "boxes", "--pred", str(one_run)]) == 2


def test_resume_after_a_kill_gives_the_same_bytes(data, one_run, tmp_path, monkeypatch):
    out = tmp_path / "annotations.json"
    real, calls = pseudo_masks.cut_batch, []

    def dies_on_the_second_batch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is killed mid-batch
        yield from real(*args)

    monkeypatch.setattr(pseudo_masks, "cut_batch", dies_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run(data[0], out)
    monkeypatch.setattr(pseudo_masks, "cut_batch", real)
    part = out.with_name(out.name + ".parts") / "part-00000.jsonl"
    assert len(part.read_bytes().splitlines()) == 3  # the first batch survived
    with open(part, "ab") as f:
        f.write(b'{"file": "00004.png", "wid')  # a line cut short by the kill
    assert not out.exists()
    assert run(data[0], out) == 2  # the parts are not silently overwritten ...
    assert run(data[0], out, "--resume") == 0  # ... but resumed
    assert out.read_bytes() == one_run.read_bytes()
    assert len(part.read_bytes().splitlines()) == 8


def test_bad_images_are_skipped_and_counted(data, tmp_path, capsys):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    for name in ("00000.png", "00001.png"):
        (root / "sub" / name).write_bytes((data[0] / name).read_bytes())
    (root / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "a.json"
    assert run(root, out) == 0
    text = capsys.readouterr()
    assert "2 images" in text.out and "1 skipped" in text.out and "broken.png" in text.err
    coco = json.loads(out.read_text())
    assert [im["file_name"] for im in coco["images"]] == ["sub/00000.png", "sub/00001.png"]


def test_refine_pixel_ncut_keeps_the_objects(data, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    for name in ("00000.png", "00001.png"):
        (root / name).write_bytes((data[0] / name).read_bytes())
    gt = json.loads(Path(data[1]).read_text())
    gt["images"] = gt["images"][:2]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] <= 2]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    out = tmp_path / "refined.json"
    assert run(root, out, "--refine", "pixel-ncut") == 0
    m = evaluate_instances(str(tmp_path / "gt.json"), str(out))
    assert m["mask_recall"] >= 0.8


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--max-objects", "0"], "--max-objects"),
        (["--tau", "2"], "--tau"),
        (["--batch-size", "0"], "--batch-size"),
        (["--image-size", "8"], "--image-size"),
        (["--position-sigma", "0"], "--position-sigma"),
    ],
)
def test_bad_options_are_refused(data, tmp_path, capsys, extra, match):
    assert run(data[0], tmp_path / "a.json", *extra) == 2
    assert match in capsys.readouterr().err


def test_existing_output_and_bad_names_are_refused(data, one_run, tmp_path, capsys):
    assert run(data[0], one_run) == 2
    assert "exists" in capsys.readouterr().err
    assert run(data[0], tmp_path / "a.txt") == 2
    assert ".json" in capsys.readouterr().err
    assert cli.main(["eval-instances", "--gt", str(tmp_path / "no.json"), "--pred",
                     str(one_run)]) == 2  # fmt: skip
    assert "no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(data, one_run, tmp_path):
    out = tmp_path / "annotations.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = ["pseudo-masks", "--root", str(data[0]), "--output", str(out), *FLAGS]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "diffeig.dncut", *argv]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "over 2 processes" in done.stdout
    assert out.read_bytes() == one_run.read_bytes()
    parts = sorted(p.name for p in out.with_name(out.name + ".parts").iterdir())
    assert parts == ["part-00000.jsonl", "part-00001.jsonl"]
