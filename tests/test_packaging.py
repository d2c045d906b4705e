"""What a new user meets (issue 12): install messages, help texts, runs that don't surprise.

The sdist -> wheel -> fresh venv path is checked by `make dist-check` (CI runs it)."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import diffeig

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"


def run_py(code: str, *args):
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_project_files_ship():
    for name in ("LICENSE", "CHANGELOG.md", "CITATION.cff", "MANIFEST.in", "diffeig/py.typed"):
        assert (ROOT / name).is_file(), name
    manifest = (ROOT / "MANIFEST.in").read_text()
    assert "recursive-include csrc *.h *.cpp *.cu" in manifest
    assert isinstance(diffeig.__version__, str)


def test_ncut_operator_has_its_real_signature():
    params = inspect.signature(diffeig.ncut.ncut_operator).parameters
    assert list(params)[:4] == ["matmul", "params", "shape", "k"]
    assert "on_fail" in params and not any(p.kind == p.VAR_POSITIONAL for p in params.values())


def test_extension_not_built_is_said_once_and_plainly():
    code = (
        "import sys, warnings; warnings.simplefilter('always'); sys.modules['diffeig._C'] = None\n"
        "import diffeig; print(diffeig.has_ops(), diffeig.load_error())"
    )
    res = run_py(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("False diffeig._C was not built")
    assert res.stderr.count("the native extension was not built") == 1
    assert "circular" not in res.stderr


def test_torch_version_mismatch_warns_naming_both(monkeypatch):
    from diffeig import _extension

    fake = type(sys)("diffeig._build_info")
    fake.TORCH_VERSION = "1.13.0+cu117"
    monkeypatch.setitem(sys.modules, "diffeig._build_info", fake)
    with pytest.warns(RuntimeWarning, match=r"compiled against torch 1\.13\.0\+cu117 but torch"):
        _extension._check_torch_version()
    import torch

    fake.TORCH_VERSION = torch.__version__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _extension._check_torch_version()


# ------------------------------------------------------------------------------- the recipe

pytest.importorskip("timm")

from diffeig.dncut import cli  # noqa: E402


def subcommands():
    p = cli.parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize(
    "command", ["train", "export", "eval-saliency", "eval-discovery", "visualize"]
)
def test_every_flag_has_help(command):
    parser = subcommands()[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), (command, action.dest)
        if action.option_strings and action.default not in (None, False):
            assert "default" in action.help, (command, action.dest)


def test_top_level_help_has_no_rest_markup():
    text = cli.parser().format_help()
    assert "``" not in text and ":func:" not in text


def test_recipe_without_its_extra_is_one_line():
    def run_cli(*argv):
        code = (
            "import sys, runpy; sys.modules['timm'] = None; "
            f"sys.argv = ['python -m diffeig.dncut', *{list(argv)!r}]; "
            "runpy.run_module('diffeig.dncut', run_name='__main__')"
        )
        return run_py(code)

    # --help needs none of the extra (issue 23): the parser imports none of it
    res = run_cli("train", "--help")
    assert res.returncode == 0 and "usage:" in res.stdout
    res = run_cli("train", "--data", "synthetic:4")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: the DNCut recipe needs the [dncut] extra (missing: timm); from a checkout: "
        'pip install -e ".[dncut]"; from PyPI: pip install "diffeig[dncut]"'
    ]


def train(*args):
    return cli.main(["train", "--config", "demo", "--no-progress", "--image-size", "64", *args])


def test_a_fresh_run_does_not_overwrite_a_run(tmp_path, capsys):
    out = tmp_path / "r"
    assert train("--output", str(out), "--max-steps", "1") == 0
    assert not list(out.glob("epoch*.pth"))  # demo: save_epochs false
    log = (out / "log.jsonl").read_text()
    assert train("--output", str(out), "--max-steps", "1") == 2
    err = capsys.readouterr().err
    assert "holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "log.jsonl").read_text() == log
    assert train("--output", str(out), "--max-steps", "1", "--overwrite") == 0

    # the exported backbone records its architecture; the evaluations read it
    assert cli.main(["export", str(out / "last.pth"), str(tmp_path / "bb.pth")]) == 0
    img = tmp_path / "q.jpg"
    shutil.copy(DATA / "quokka.jpg", img)
    vis = ["visualize", str(img), "--weights", str(tmp_path / "bb.pth"), "--max-side", "64"]
    assert cli.main([*vis, "--out", str(tmp_path / "v.png")]) == 0  # no --arch needed
    assert cli.main([*vis, "--arch", "vit_small_patch8", "--out", str(tmp_path / "w.png")]) == 2
    assert "is a vit_small_patch16 backbone (recorded by export)" in capsys.readouterr().err


def test_report_without_arguments():
    res = subprocess.run(
        [sys.executable, "benchmarks/report.py"], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr
    assert "| Method | Architecture |" in res.stdout
    data = json.loads((ROOT / "benchmarks/results/cpu-2core-float32.json").read_text())
    assert data["results"]


def test_the_extension_is_built_without_debug_information():
    import diffeig
    from diffeig import _extension

    if not _extension._LOADED:
        pytest.skip("diffeig._C is not built")
    so = next(Path(diffeig.__file__).parent.glob("_C*.so"))
    if shutil.which("readelf") is None:
        pytest.skip("readelf is not installed")
    sections = subprocess.run(["readelf", "-S", str(so)], capture_output=True, text=True).stdout
    if os.environ.get("DIFFEIG_DEBUG") == "1":
        pytest.skip("DIFFEIG_DEBUG=1 keeps debug information")
    assert ".debug_info" not in sections and ".symtab" not in sections
    if not diffeig.has_cuda_kernels():
        assert so.stat().st_size < 2 << 20  # 0.3 MB stripped, 12.5 MB with -g
