"""Every benchmark figure quoted in README.md and docs/, written from the committed JSON.

    python benchmarks/report.py [results.json ...]     print a backward_timing table
    python benchmarks/report.py --update-readme        rewrite the generated blocks
    python benchmarks/report.py --check                exit 1 if a block is out of date

The documents hold blocks of the form

    <!-- report KIND path/to/results.json [more.json ...] -->
    ... written by this script ...
    <!-- end report -->

KIND is the benchmark that wrote the JSON (``backward_timing``, ``ncut_speed``,
``scaling``, ``sparse_ncut``, ``token_graph``, ``pixel_refine``). ``--update-readme`` replaces each block's body with what the
JSON says, including the command that produced it and the machine it ran on;
``tests/test_readme.py`` fails when a block differs from that. To refresh a figure: rerun
the command a block names (it writes the JSON), then ``make readme``.

Without arguments or flags: the table of bench-results/backward_timing.json (what
`make bench` writes) if it exists, else the recorded benchmarks/results/cpu-2core-float32.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The documents whose blocks --update-readme rewrites and the test reads.
DOCUMENTS = (
    "README.md",
    "benchmarks/README.md",
    *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")),
)
BLOCK = re.compile(
    r"(?P<head><!-- report (?P<kind>\w+) (?P<paths>[^>]*?) -->\n)(?P<body>.*?)(?P<tail><!-- end report -->)",
    re.S,
)


def load(path: str | Path) -> dict:
    with open(ROOT / path) as fh:
        return json.load(fh)


def machine(d: dict) -> str:
    md = d["metadata"]
    sha = md["git_sha"]
    dirty = "-dirty" if sha.endswith("dirty") else ""
    alloc = md.get("allocator_env") or {}
    env = " ".join(f"{k}={v}" for k, v in sorted(alloc.items()))
    return (
        f"{md['device']}, {md['threads']} threads, torch {md['torch']}, git {sha[:10]}{dirty}, "
        f"{md['date'][:10]}" + (f", with {env}" if env else "")
    )


def produced_by(d: dict) -> str:
    md = d["metadata"]
    alloc = md.get("allocator_env") or {}
    env = "".join(f"{k}={v} " for k, v in sorted(alloc.items()))
    return f"Produced by `{env}{md['command']}` on {machine(d)}."


def backward_timing(d: dict) -> str:
    """The paper's Table 3 as backward_timing.py measures it, with its ratios."""
    lines = [
        produced_by(d),
        f"Seconds, medians of {d['args']['repeats']} runs ({d['args']['pinv_repeats']} for the "
        f"pseudo-inverse), {d['args']['dtype']}, laplacian={d['args']['laplacian']}.",
        "",
        "| Method | Architecture | Forward | Backward | Total |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in d["results"]:
        for m, row in r["methods"].items():
            nan = (
                f" (non-finite grads on {100 * row['nan_fraction']:.1f}% of the "
                f"{r['batch']} timed graphs)"
                if row["nan_fraction"]
                else ""
            )
            lines.append(
                f"| {m}{nan} | {r['setting']} | {row['forward']['median']:.4f} | "
                f"{row['backward']['median']:.4f} | {row['total']:.4f} |"
            )
    lines.append("")
    for r in d["results"]:
        q = r["ratios"]
        lines.append(
            f"- {r['setting']}: backward pinv / ours **{q['pinv_over_ours_backward']:.0f}x**, "
            f"total pinv / ours **{q['pinv_over_ours_total']:.1f}x**, "
            f"backward torch / ours **{q['torch_over_ours_backward']:.1f}x**, "
            f"total ours dense / ours LOBPCG **{q['dense_over_lobpcg_total']:.2f}x**; ours' "
            f"backward is {q['ours_backward_over_floor']:.1f}x the memory floor (read V twice, "
            f"write dL/dW once at the {d['bandwidth_GBps']:.0f} GB/s measured in the same run) "
            f"and {q['ours_backward_over_fresh_allocation_floor']:.1f}x the time, measured in the "
            "same run, to allocate and fill a new dL/dW (page faults included, unless the "
            "allocator recycles the block) and read V once."
        )
    for r in d["results"]:
        errs = next(v for k, v in r["check"].items() if k.endswith("_rel_error_vs_float64"))
        lines.append(
            f"- {r['setting']}, {d['args']['dtype']} gradient error relative to float64 on "
            f"{d['args']['check_samples']} graphs: "
            + ", ".join(f"{m} {e:.1e}" for m, e in errs.items())
            + ". The first three methods start from float32 torch.linalg.eigh, whose "
            "eigenvectors carry most of their error; the LOBPCG forward iterates to its own "
            "tolerance."
        )
    return "\n".join(lines)


def ncut_speed(ds: list[dict]) -> str:
    """dense against auto for the recipe's NCut (ncut_speed.py), one row per N."""
    lines = [
        "\n".join(produced_by(d) for d in ds),
        "Forward + backward seconds, medians; float64, `D - W`, k = 2; dL/dW of `auto` "
        "relative to the dense one.",
        "",
        "| N (batch) | dense (the authors' eigh) | auto | auto picks | dense / auto | dL/dW vs dense |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for d in ds:
        for r in d["results"]:
            m = r["methods"]
            lines.append(
                f"| {r['N']} ({r['batch']}) | {m['dense']['total']['median']:.3f} s | "
                f"{m['auto']['total']['median']:.3f} s | {r['auto_picks']} | "
                f"{r['dense_over_auto']:.1f}x | {r['agreement']['grad_rel_error']:.1e} |"
            )
    return "\n".join(lines)


def scaling(d: dict) -> str:
    """The fitted exponents of scaling.py (time ~ N^p)."""
    a = d["args"]
    ns = [s * s for s in a["sides"]]
    exps = ", ".join(f"{m} N^{p:.2f}" for m, p in d["exponents"].items())
    return (
        f"{produced_by(d)} Backward time against N (batch {a['batch']}, N = {ns[0]} ... "
        f"{ns[-1]}, {a['dtype']}; the pseudo-inverse to N = {a['pinv_max_n']}), fitted as "
        f"a power of N: {exps}."
    )


def sparse_ncut(d: dict) -> str:
    """Pixel graphs: diffeig's sparse NCut against ARPACK and the others (sparse_ncut.py)."""
    a = d["args"]
    lines = [
        produced_by(d),
        f"The quokka at S x S px, `pixel_affinity` (radius 5), `(D - W) z = l D z`, k = 2, "
        f"{a['dtype']}, relative residual {a['tol']:g} for every solver; diffeig: medians of "
        f"{a['repeats']}, LOBPCG iterations and the backward's products with W in brackets, "
        "peak RSS of its process; the others: one run, forward only.",
        "",
        "| S (N), batch | diffeig forward | diffeig backward | diffeig fwd + bwd | peak RSS "
        "| ARPACK | ARPACK / diffeig fwd + bwd | l2 vs ARPACK | scipy lobpcg | scipy lobpcg + pyamg "
        "| torch.lobpcg |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def cell(r, name):
        x = r["baselines"].get(name)
        if x is None:
            return "-"
        it = f" ({x['iterations']} it)" if x.get("iterations") is not None else ""
        conv = "" if x.get("converged", True) else ", not converged"
        return f"{x['seconds']:.2f} s{it}{conv}"

    for r in d["results"]:
        f = r["diffeig"]
        arp = r["baselines"].get("ARPACK")
        ratio = f"**{arp['seconds'] / f['total']:.1f}x**" if arp else "-"
        diff = f"{r['l2_rel_diff_vs_arpack']:.1e}" if arp else "-"
        lines.append(
            f"| {r['side']} ({r['N']}), {r['batch']} | {f['forward']:.3f} s ({f['iterations']}) "
            f"| {f['backward']:.3f} s ({f['backward_iterations']}) | {f['total']:.3f} s | "
            f"{f['peak_rss_GB']:.2f} GB | {cell(r, 'ARPACK')} | {ratio} | {diff} | "
            f"{cell(r, 'scipy lobpcg')} | {cell(r, 'scipy lobpcg + pyamg')} | "
            f"{cell(r, 'torch.lobpcg')} |"
        )
    isl = d.get("island")
    if isl:
        lines += [
            "",
            f"No skipped pair: the 8-neighbour graph (radius 1.5) at {isl['side']} px, l2 "
            "of each solver against shift-invert Lanczos (an LU of `L - sigma D`), and how "
            "many pixels hold 90 % of z2's D-weighted mass (where known).",
            "",
            "| solver | l2 | relative difference | pixels of z2 |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, r in isl.items():
            if isinstance(r, dict):
                lines.append(
                    f"| {name} | {r['l2']:.6e} | {r['rel_diff']:.1e} | {r.get('pixels', '-')} |"
                )
    return "\n".join(lines)


def pixel_refine(d: dict) -> str:
    """Saliency post-processings on generated thin-object images and the quokka."""
    a = d["args"]
    seeds = ", ".join(str(x) for x in a.get("seeds", [0]))
    lines = [
        produced_by(d),
        f"`eval-saliency` on {a['images']} generated {a['side']} px images per seed ({seeds}; "
        "irregular objects with 3 - 6 px arms; pixel-ncut's defaults were chosen on seeds 0 "
        "and 1, seed 2 is held out) and on the quokka; IoU, accuracy and max F-beta in %; "
        "seconds per image of the whole evaluation (features included, batches of 16), and "
        "the median per image of the eigenvectors and post-processing alone; for "
        "pixel-ncut, the images where the pixel cut was not decisive (l2 > 0.5 l3) and the "
        "bilateral solver refined the mask instead.",
        "",
        "| data | backbone | post | IoU | accuracy | max F-beta | s / image | post, median s "
        "| fallbacks |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in d["results"]:
        fb = r.get("pixel_fallbacks")
        fb = "-" if fb is None else f"{fb} of {r['images']}"
        post = r.get("post_seconds_median")
        lines.append(
            f"| {r['data']} | {r['arch']} | {r['post']} | {100 * r['iou']:.1f} | "
            f"{100 * r['accuracy']:.1f} | {100 * r['max_f_beta']:.1f} | "
            f"{r['seconds_per_image']:.2f} | {'-' if post is None else f'{post:.3f}'} | "
            f"{fb} |"
        )
    return "\n".join(lines)


def token_graph(d: dict) -> str:
    """One dense token graph at a time: diffeig's Lanczos against ARPACK (token_graph.py)."""
    a = d["args"]
    lines = [
        produced_by(d),
        f"One token graph (batch 1), k = 2, float64, relative residual {a['tol']:g} for "
        f"both, forward only (diffeig's input checks included), medians of {a['repeats']}; "
        "products with W in brackets (diffeig: one per Lanczos step).",
        "",
        '| N | graph | diffeig `method="lobpcg"` | ARPACK | ARPACK / diffeig | l2 difference |',
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in d["results"]:
        lines.append(
            f"| {r['N']} | {r['graph']} | {1e3 * r['diffeig']:.1f} ms ({r['diffeig_products']}) "
            f"| {1e3 * r['ARPACK']:.1f} ms ({r['arpack_products']}) | {r['ratio']:.2f}x | "
            f"{r['l2_rel_diff']:.0e} |"
        )
    return "\n".join(lines)


RENDER = {
    "backward_timing": lambda ds: "\n\n".join(backward_timing(d) for d in ds),
    "ncut_speed": ncut_speed,
    "scaling": lambda ds: "\n".join(scaling(d) for d in ds),
    "sparse_ncut": lambda ds: "\n\n".join(sparse_ncut(d) for d in ds),
    "token_graph": lambda ds: "\n\n".join(token_graph(d) for d in ds),
    "pixel_refine": lambda ds: "\n\n".join(pixel_refine(d) for d in ds),
}


def render(kind: str, paths: list[str]) -> str:
    if kind not in RENDER:
        raise ValueError(f"report block: unknown kind {kind!r}; one of {sorted(RENDER)}")
    ds = [load(p) for p in paths]
    for p, d in zip(paths, ds):
        if d.get("benchmark") != kind:
            raise ValueError(
                f"report block: {p} was written by {d.get('benchmark')!r}, not {kind!r}"
            )
    return RENDER[kind](ds)


def update(text: str) -> str:
    """``text`` with every report block's body rewritten from its JSON."""

    def sub(m: re.Match) -> str:
        body = render(m["kind"], m["paths"].split())
        return f"{m['head']}{body}\n{m['tail']}"

    return BLOCK.sub(sub, text)


def blocks(text: str) -> list[tuple[str, list[str]]]:
    return [(m["kind"], m["paths"].split()) for m in BLOCK.finditer(text)]


def stale_documents() -> list[str]:
    return [p for p in DOCUMENTS if (t := (ROOT / p).read_text()) != update(t)]


def update_documents() -> list[str]:
    changed = []
    for p in DOCUMENTS:
        t = (ROOT / p).read_text()
        if (u := update(t)) != t:
            (ROOT / p).write_text(u)
            changed.append(p)
    return changed


def default_paths() -> list[str]:
    for p in ("bench-results/backward_timing.json", "benchmarks/results/cpu-2core-float32.json"):
        if (ROOT / p).is_file():
            return [str(ROOT / p)]
    return []


if __name__ == "__main__":
    import argparse
    import sys

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("json", nargs="*", help="JSON files written by backward_timing.py --json")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--update-readme", action="store_true", help="rewrite the generated blocks")
    g.add_argument("--check", action="store_true", help="exit 1 if a generated block is stale")
    args = p.parse_args()
    if args.update_readme:
        changed = update_documents()
        print("rewrote " + ", ".join(changed) if changed else "every generated block is current")
    elif args.check:
        stale = stale_documents()
        if stale:
            sys.exit("stale generated blocks in " + ", ".join(stale) + ": run `make readme`")
        print("every generated block is current")
    else:
        paths = args.json or default_paths()
        if not paths:
            sys.exit("error: no results: run `make bench` first, or give a JSON file")
        print("\n\n".join(f"{path}:\n\n{backward_timing(load(path))}" for path in paths))
