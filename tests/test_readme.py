"""The benchmark figures quoted in README.md and docs/ are what the committed JSON says.

benchmarks/report.py writes every ``<!-- report KIND json... -->`` block; a block edited by
hand, or a JSON re-recorded without ``make readme``, fails here.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _report():
    spec = importlib.util.spec_from_file_location("report", ROOT / "benchmarks" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


report = _report()


@pytest.mark.parametrize("doc", report.DOCUMENTS)
def test_generated_blocks_match_the_committed_json(doc):
    text = (ROOT / doc).read_text()
    assert text == report.update(text), f"{doc}: a benchmark block is stale: run `make readme`"


def test_readme_quotes_its_tables_through_the_script():
    text = (ROOT / "README.md").read_text()
    kinds = [k for k, _ in report.blocks(text)]
    assert kinds.count("backward_timing") == 2 and "ncut_speed" in kinds
    for _, paths in report.blocks(text):
        for p in paths:
            d = report.load(p)
            md = d["metadata"]
            # what a reader needs to trust a figure: machine, torch, threads, date, command
            for key in ("device", "torch", "threads", "date", "command"):
                assert md.get(key), f"{p}: metadata lacks {key}"
    # every Markdown table of timings in the README sits inside a generated block
    outside = report.BLOCK.sub("", text)
    assert not re.search(r"^\| .*\| \d+\.\d+ s? ?\|", outside, re.M), (
        "a timing table outside a block"
    )


def test_a_hand_edit_is_caught(tmp_path):
    text = (ROOT / "README.md").read_text()
    m = re.search(r"\| Ours \| ViT-S/16 \| (\d+\.\d+) \|", text)
    assert m
    edited = text.replace(m[0], m[0].replace(m[1], "9.9999"))
    assert report.update(edited) != edited
    assert report.update(edited) == text


def test_unknown_kind_and_wrong_file_are_refused():
    with pytest.raises(ValueError, match="unknown kind"):
        report.render("nope", [])
    with pytest.raises(ValueError, match="written by"):
        report.render("ncut_speed", ["benchmarks/results/cpu-2core-float32.json"])
