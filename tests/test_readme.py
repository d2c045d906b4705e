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


# A table row with a figure in seconds, milliseconds, a ratio or gigabytes.
FIGURE_ROW = re.compile(r"^\|.*\|\s*\**~?\d+(\.\d+)?\s*(s|ms|x|GB)\**\s*(\(.*?\))?\s*\|", re.M)


@pytest.mark.parametrize("doc", report.DOCUMENTS)
def test_no_table_of_figures_is_typed_by_hand(doc):
    outside = report.BLOCK.sub("", (ROOT / doc).read_text())
    rows = [m[0] for m in FIGURE_ROW.finditer(outside)]
    assert rows == [], f"{doc}: table rows of figures outside a generated block: {rows[:3]}"


def test_the_row_rule_sees_a_hand_typed_figure():
    assert FIGURE_ROW.search("| 784 (64) | 3.790 + 0.134 s | **11.1x** |")
    assert FIGURE_ROW.search("| a | 0.25 s |")
    assert not FIGURE_ROW.search("| name | value | where it comes from |")


def test_every_recorded_result_renders_and_names_its_command():
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        d = report.load(path.relative_to(ROOT))
        assert d.get("benchmark") in report.RENDER, f"{path.name}: no renderer"
        assert d["metadata"].get("command"), f"{path.name}: metadata lacks the command"
        report.render(d["benchmark"], [str(path.relative_to(ROOT))])


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
