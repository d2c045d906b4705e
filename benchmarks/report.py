"""Every benchmark figure quoted in README.md and docs/, written from the committed JSON.

    python benchmarks/report.py [results.json ...]     print a backward_timing table
    python benchmarks/report.py --update-readme        rewrite the generated blocks
    python benchmarks/report.py --check                exit 1 if a block is out of date

The documents hold blocks of the form

    <!-- report KIND path/to/results.json [more.json ...] -->
    ... written by this script ...
    <!-- end report -->

KIND is the benchmark that wrote the JSON (``backward_timing``, ``ncut_speed``,
``scaling``, ``sparse_ncut``, ``token_graph``, ``pixel_refine``, ``maskcut``, ``sparse_profile``). ``--update-readme`` replaces each block's body with what the
JSON says, including the command that produced it and the machine it ran on;
``tests/test_readme.py`` fails when a block differs from that. To refresh a figure: rerun
the command a block names (it writes the JSON), then ``make readme``.

Without arguments or flags: the table of bench-results/backward_timing.json (what
`make bench` writes) if it exists, else the recorded benchmarks/results/cpu-2core-float32.json.
"""

from __future__ import annotations

import json
import math
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


def _repeats(d: dict) -> str:
    a = d["args"]
    if "pinv_repeats" in a and a["pinv_repeats"] != a["repeats"]:  # files before equal repeats
        return f"{a['repeats']} runs ({a['pinv_repeats']} for the pseudo-inverse)"
    return f"{a['repeats']} runs of every method"


def backward_timing(d: dict) -> str:
    """The paper's Table 3 as backward_timing.py measures it, with its ratios and each
    row's gradient error (so no ratio compares answers of different accuracy unseen)."""
    dt = d["args"]["dtype"]
    lines = [
        produced_by(d),
        f"Seconds, medians of {_repeats(d)}, {dt}, laplacian={d['args']['laplacian']}. Error: "
        f"the {dt} gradient's distance from the float64 one, relative, on "
        f"{d['args']['check_samples']} graphs.",
        "",
        "| Method | Architecture | Forward | Backward | Total | Error |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in d["results"]:
        errs = next(v for k, v in r["check"].items() if k.endswith("_rel_error_vs_float64"))
        for m, row in r["methods"].items():
            nan = (
                f" (non-finite grads on {100 * row['nan_fraction']:.1f}% of the "
                f"{r['batch']} timed graphs)"
                if row["nan_fraction"]
                else ""
            )
            err = f"{errs[m]:.1e}" if m in errs else ""
            lines.append(
                f"| {m}{nan} | {r['setting']} | {row['forward']['median']:.4f} | "
                f"{row['backward']['median']:.4f} | {row['total']:.4f} | {err} |"
            )
    lines.append("")
    for r in d["results"]:
        q = r["ratios"]
        strongest = (
            f" (strongest pseudo-inverse: **{q['strongest_pinv_over_ours_backward']:.0f}x** "
            f"backward, **{q['strongest_pinv_over_ours_total']:.1f}x** total)"
            if "strongest_pinv_over_ours_backward" in q
            else ""
        )
        lines.append(
            f"- {r['setting']}: backward pinv / ours **{q['pinv_over_ours_backward']:.0f}x**, "
            f"total pinv / ours **{q['pinv_over_ours_total']:.1f}x**{strongest}, "
            f"backward torch / ours **{q['torch_over_ours_backward']:.1f}x**; ours' "
            f"backward is {q['ours_backward_over_floor']:.1f}x the memory floor (read V twice, "
            f"write dL/dW once at the {d['bandwidth_GBps']:.0f} GB/s measured in the same run) "
            f"and {q['ours_backward_over_fresh_allocation_floor']:.1f}x the time, measured in the "
            "same run, to allocate and fill a new dL/dW (page faults included, unless the "
            "allocator recycles the block) and read V once."
        )
    lines.append(
        "- Dense against LOBPCG forward is not a ratio at equal accuracy: the rows' errors "
        "differ (the dense rows start from torch.linalg.eigh in the timed dtype, whose "
        "eigenvectors carry most of their error; the LOBPCG forward stops at its tolerance, "
        "7e-5 in float32). `make bench`'s ncut_speed table compares the two at equal "
        "accuracy (float64, both within 1e-7 of each other)."
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
    """Pixel graphs: diffeig's sparse NCut against ARPACK and the others (sparse_ncut.py),
    every solver under the fairness contract, at each thread count; where shift-invert ran,
    whether each solver returned the right pair."""
    a = d["args"]
    baselines = [
        "ARPACK",
        "ARPACK, projected",
        "scipy lobpcg",
        "scipy lobpcg + pyamg",
        "torch.lobpcg",
    ]
    photos = a.get("photos", ["quokka"])
    if "primme" in a.get("solvers", []):
        baselines.append("primme")
    baselines = [b for b in baselines if any(b in r["solvers"] for r in d["results"])]
    checked = any("shift-invert" in r["solvers"] for r in d["results"])
    md = d["metadata"]
    lines = [
        produced_by(d),
        f"{', '.join(photos)} at S x S px, `pixel_affinity` (radius 5), `(D - W) z = l D z`, "
        f"k = 2, {a['dtype']}, tol {a['tol']:g} for every solver. Each solver in its own "
        f"process at the thread count shown, {a['warmup']} warm-up and {a['repeats']} timed "
        "runs, median; r: the relative residual `|(D - W) z - l D z| / |D z|` of its Fiedler "
        "pair, measured after it. diffeig: forward + backward (forward, LOBPCG iterations); "
        "the others: forward only (iterations where known)"
        + (
            "; GB: the process's peak RSS; WRONG: its l2 is not the second smallest "
            "eigenvalue (nearer shift-invert's l1 or l3 than its l2; shift-invert Lanczos, "
            "an LU of `L - sigma D`, ran once per graph as the reference)"
            if checked
            else ""
        )
        + (f"; {a['load']} busy-loop processes ran beside every solver" if a.get("load") else "")
        + (f"; OMP_WAIT_POLICY={a['wait_policy']}" if a.get("wait_policy") else "")
        + (
            "; diffeig on a fixed thread count (DIFFEIG_ADAPTIVE_THREADS=0)"
            if a.get("fixed_threads")
            else ""
        )
        + f". Load average at the start {md.get('load_average', '?')}, at the end "
        f"{d.get('load_average_end', '?')}.",
        "",
        "| photo, S (N), batch | threads | diffeig |" + "".join(f" {b} |" for b in baselines),
        "| --- | ---: |" + " ---: |" * (1 + len(baselines)),
    ]

    def tail(x):
        out = ""
        if checked and "peak_rss_GB" in x:
            out += f", {x['peak_rss_GB']:.1f} GB"
        if x.get("right_pair") is False:
            out += ", **WRONG pair**"
        return out

    def cell(x):
        if x is None:
            return "-"
        it = f", {x['iterations']} it" if x.get("iterations") is not None else ""
        conv = "" if x.get("converged", True) else ", not converged"
        return f"{x['forward']:.2f} s{it}{conv}, r {x['residual']:.0e}{tail(x)}"

    ratios = []
    for r in d["results"]:
        f = r["solvers"]["diffeig"]
        ours = (
            f"{f['total']:.2f} s ({f['forward']:.2f} s, {f['iterations']} it), "
            f"r {f['residual']:.0e}{tail(f)}"
        )
        cells = [cell(r["solvers"].get(b)) for b in baselines]
        lines.append(
            f"| {r.get('photo', 'quokka')}, {r['side']} ({r['N']}), {r['batch']} | "
            f"{r['threads']} | {ours} |" + "".join(f" {c} |" for c in cells)
        )
        got = [(b, r["solvers"][b]["forward"]) for b in baselines if b in r["solvers"]]
        if not got:
            continue  # diffeig alone (--no-baselines): no ratio to give
        fastest = min(got, key=lambda x: x[1])
        ratios.append(
            f"- {r.get('photo', 'quokka')}, {r['side']} px, batch {r['batch']}, {r['threads']} "
            f"thread(s): fastest peer {fastest[0]}, its forward / diffeig's forward + backward "
            f"**{fastest[1] / f['total']:.2f}x**; "
            + ", ".join(
                f"{b} / diffeig forward {t / f['forward']:.1f}x "
                f"(/ forward + backward {t / f['total']:.1f}x)"
                for b, t in got
            )
        )
    if ratios:
        lines += ["", "Each baseline's forward time over diffeig's (same run, same threads):", ""]
        lines += ratios
    if checked:
        lines += ["", "Shift-invert's seconds and peak RSS (once per graph, the reference):", ""]
        for r in d["results"]:
            x = r["solvers"].get("shift-invert")
            if x and r["threads"] == d["results"][0]["threads"]:
                lines.append(
                    f"- {r['photo']}, {r['side']} px: {x['forward']:.1f} s, "
                    f"{x['peak_rss_GB']:.1f} GB, l2 {x['l2'][0]:.6e} (l1 {x['l1']:.1e}, "
                    f"l3 {x['l3']:.6e})"
                )
    isl = d.get("island")
    if isinstance(isl, dict):  # one photo (the quokka) before the photos were added
        isl = [dict(isl, photo="quokka")]
    for one in isl or ():
        right = "right pair | " if "reference" in one else ""
        lines += [
            "",
            f"No skipped pair: {one['photo']}'s 8-neighbour graph (radius 1.5) at "
            f"{one['side']} px, l2 of each solver against shift-invert Lanczos (an LU of "
            "`L - sigma D`), and how many pixels hold 90 % of z2's D-weighted mass.",
            "",
            f"| solver | l2 | relative difference | {right}pixels of z2 |",
            "| --- | ---: | ---: |" + (" :---: |" if right else "") + " ---: |",
        ]
        for name, r in one.items():
            if isinstance(r, dict) and "l2" in r and name != "reference":
                ok = ("yes | " if r["right_pair"] else "**no** | ") if right else ""
                lines.append(
                    f"| {name} | {r['l2']:.6e} | {r['rel_diff']:.1e} | {ok}{r.get('pixels', '-')} |"
                )
    return "\n".join(lines)


def sparse_targets(ds: list[dict]) -> str:
    """Issue #35's targets read off sparse_ncut runs (photographs at 224 / 448 / 896 px,
    the megapixel run): each target, what the runs measured, met or not."""
    rows = [dict(r, photo=r.get("photo", "quokka")) for d in ds for r in d["results"]]
    peers = ("ARPACK", "ARPACK, projected", "scipy lobpcg + pyamg", "primme", "scipy lobpcg")
    peers += ("torch.lobpcg",)
    lines = [
        "Issue #35's targets, read by `benchmarks/report.py` off the runs above "
        f"({', '.join('`' + Path(d['args']['json']).name + '`' for d in ds)}):",
        "",
        "| target | measured | met |",
        "| --- | --- | :---: |",
    ]

    def verdict(ok):
        return "yes" if ok else "**no**"

    for side in sorted({r["side"] for r in rows}):
        for threads in sorted({r["threads"] for r in rows}):
            got = []
            for r in rows:
                if r["side"] != side or r["threads"] != threads or r["batch"] != 1:
                    continue
                fwd = [(r["solvers"][b]["forward"], b) for b in peers if b in r["solvers"]]
                if fwd:
                    t, b = min(fwd)
                    got.append((r["solvers"]["diffeig"]["total"] / t, r["photo"], b))
            if got:
                worst = max(got)
                lines.append(
                    f"| {side} px, {threads} thread(s): diffeig forward + backward <= the "
                    f"fastest peer's forward | {len(got)} photo(s); at worst {worst[0]:.2f}x "
                    f"of {worst[2]}'s ({worst[1]}); best {min(got)[0]:.2f}x | "
                    f"{verdict(worst[0] <= 1)} |"
                )
    for r in rows:
        if r["side"] == 448 and "ARPACK" in r["solvers"]:
            f = r["solvers"]["diffeig"]
            a = r["solvers"]["ARPACK"]["forward"]
            p = r["solvers"].get("ARPACK, projected", {}).get("forward")
            proj = f"; projected ARPACK {p / f['forward']:.1f}x" if p else ""
            lines.append(
                f"| 448 px, {r['threads']} thread(s): ARPACK's forward >= 10x diffeig's | "
                f"{a / f['forward']:.1f}x ({r['photo']}; {a / f['total']:.1f}x of forward + "
                f"backward{proj}) | {verdict(a / f['forward'] >= 10)} |"
            )
    for r in rows:
        if r["side"] == 896:
            gb = r["solvers"]["diffeig"]["peak_rss_GB"]
            lines.append(
                f"| 896 px, {r['threads']} thread(s): diffeig's peak RSS <= 4 GB | "
                f"{gb:.2f} GB ({r['photo']}) | {verdict(gb <= 4)} |"
            )
        if r["side"] == 1024 and r["threads"] == 2:
            t = r["solvers"]["diffeig"]["total"]
            lines.append(
                f"| 1024 px, 2 threads: forward + backward <= 60 s | {t:.1f} s | "
                f"{verdict(t <= 60)} |"
            )
    by = {(r["photo"], r["side"], r["threads"]): r for r in rows if r["batch"] == 1}
    for (photo, side, threads), r in sorted(by.items()):
        big = by.get((photo, 4 * side, threads))
        if side == 224 and big:
            t0, t1 = r["solvers"]["diffeig"]["total"], big["solvers"]["diffeig"]["total"]
            p = math.log(t1 / t0) / math.log(big["N"] / r["N"])
            lines.append(
                f"| {photo}, {threads} thread(s): time grows at most N^1.1 from 224 to 896 px "
                f"| {t0:.2f} -> {t1:.2f} s: N^{p:.2f} | {verdict(p <= 1.1)} |"
            )
    wrong = {}
    for r in rows:
        for b, x in r["solvers"].items():
            if "right_pair" in x and r["threads"] == rows[0]["threads"]:
                wrong.setdefault(b, [0, 0])[0] += not x["right_pair"]
                wrong[b][1] += 1
    if wrong:
        lines.append(
            "| the right pair (l2 against shift-invert) | "
            + "; ".join(
                f"{b}: {n - w} of {n}" for b, (w, n) in wrong.items() if b != "shift-invert"
            )
            + f" | {verdict(wrong.get('diffeig', [1])[0] == 0)} |"
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
    """One dense token graph at a time: diffeig against ARPACK and ARPACK with the trivial
    vector projected out, at each thread count (token_graph.py)."""
    a = d["args"]
    md = d["metadata"]
    lines = [
        produced_by(d),
        f"One token graph (batch 1), k = 2, float64, tol {a['tol']:g} for every solver, "
        f"forward only (diffeig's input checks included), one warm-up and {a['repeats']} "
        "timed runs each, median; products with W in brackets (diffeig: one per Lanczos "
        "step); r: the relative residual `|(D - W) z - l D z| / |D z|` measured after each. "
        f"Load average at the start {md.get('load_average', '?')}, at the end "
        f"{d.get('load_average_end', '?')}.",
        "",
        '| N | graph | threads | diffeig `method="lobpcg"` | ARPACK | ARPACK, projected '
        "| ARPACK / diffeig | projected / diffeig | l2 difference |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def cell(x):
        return f"{1e3 * x['seconds']:.1f} ms ({x['products']}), r {x['residual']:.0e}"

    for r in d["results"]:
        s = r["solvers"]
        lines.append(
            f"| {r['N']} | {r['graph']} | {r['threads']} | {cell(s['diffeig'])} | "
            f"{cell(s['ARPACK'])} | {cell(s['ARPACK, projected'])} | "
            f"**{s['ARPACK']['ratio']:.2f}x** | **{s['ARPACK, projected']['ratio']:.2f}x** | "
            f"{s['diffeig']['l2_rel_diff_vs_arpack']:.0e} |"
        )
    return "\n".join(lines)


def train_step(ds: list[dict]) -> str:
    """One DNCut training step part by part, per backbone and solver (train_step.py)."""
    lines = [
        "\n".join(produced_by(d) for d in ds),
        "Medians of the timed steps after a warm-up step; NCut share = (NCut forward + "
        "backward) / step.",
        "",
        "| backbone, N (batch) | solver | NCut forward | NCut backward | step | NCut share |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for d in ds:
        for solver, r in d["solvers"].items():
            c, parts = r["config"], r["parts"]
            lines.append(
                f"| {c['arch']}, {r['tokens']} ({c['batch_size']}) | {solver} | "
                f"{parts['NCut forward']['median']:.3f} s | "
                f"{parts['NCut backward']['median']:.3f} s | {r['step']['median']:.2f} s | "
                f"{100 * r['ncut_share']:.1f} % |"
            )
    return "\n".join(lines)


def auto_crossover(d: dict) -> str:
    """dense time / LOBPCG time by N and k: the measurements behind method='auto'."""
    res = d["results"]
    ks = sorted({r["k"] for r in res})
    rows: dict[tuple, dict] = {}
    for r in res:
        rows.setdefault((r["N"], r["batch"]), {})[r["k"]] = r
    lines = [
        produced_by(d),
        f"Dense time / LOBPCG time, forward + backward, medians of {d['args']['repeats']} "
        "(> 1: LOBPCG faster); the largest gradient difference between the two: "
        f"{max(r['grad_rel_diff'] for r in res):.1e} relative.",
        "",
        "| N (batch) | " + " | ".join(f"k = {k}" for k in ks) + " |",
        "| --- |" + " ---: |" * len(ks),
    ]
    for (n, b), by_k in sorted(rows.items()):
        cells = [f"{by_k[k]['ratio']:.2f}" if k in by_k else "" for k in ks]
        lines.append(f"| {n} ({b}) | " + " | ".join(cells) + " |")
    picks = sum((r["auto"] == "lobpcg") == (r["ratio"] > 1) for r in res)
    lines += ["", f"`auto_method` picks the faster solver in {picks} of the {len(res)} cells."]
    return "\n".join(lines)


def iterative(ds: list[dict]) -> str:
    """The LOBPCG partial solver against the dense path, speed and accuracy (iterative.py)."""
    lines = [
        "\n".join(produced_by(d) for d in ds),
        f"{ds[0]['args']['dtype']}, forward + backward, medians of {ds[0]['args']['repeats']}; "
        "errors against the float64 dense answer on "
        f"{ds[0]['args']['check_samples']} graphs (each method's own, so the ratio is shown "
        "beside the accuracy it buys).",
        "",
        "| Setting | Laplacian | run | dense | LOBPCG | dense / LOBPCG | dL/dW error dense "
        "| dL/dW error LOBPCG | eigenvectors 1 - abs(cos) LOBPCG |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for d in ds:
        env = d["metadata"].get("allocator_env") or {}
        run = "glibc recycling" if env else "default allocator"
        for r in d["results"]:
            t, acc = r["times"], r["accuracy"]
            lines.append(
                f"| N = {r['N']} ({r['setting']}), batch {r['batch']} | {r['laplacian']} | {run} "
                f"| {t['dense']['median']:.3f} s | {t['lobpcg']['median']:.3f} s | "
                f"**{r['dense_over_lobpcg']:.1f}x** | {acc['dense']['grad_rel_error']:.1e} | "
                f"{acc['lobpcg']['grad_rel_error']:.1e} | "
                f"{acc['lobpcg']['eigenvector_1_minus_cos']:.1e} |"
            )
    return "\n".join(lines)


def sparse_profile(d: dict) -> str:
    """The sparse NCut's seconds and peak memory by stage and size (sparse_profile.py)."""
    res = d["results"]
    stages = list(res[0]["seconds"])
    lines = [
        produced_by(d),
        "Seconds per stage, one run each (the quokka at S x S, `pixel_affinity` radius 5, "
        "k = 2, tol 1e-6, forward and a backward of a mask loss on z2), each size in its own "
        "process. Products with W and V-cycles are also inside LOBPCG's and CG's seconds. "
        f"Load average at the start {d['metadata'].get('load_average', '?')}, at the end "
        f"{d.get('load_average_end', '?')}.",
        "",
        "| stage | " + " | ".join(f"{r['side']} px" for r in res) + " |",
        "| --- |" + " ---: |" * len(res),
        "| pixels / stored weights | "
        + " | ".join(f"{r['pixels']:,} / {r['weights'] / 1e6:.1f}M" for r in res)
        + " |",
    ]
    for st in stages:
        lines.append(f"| {st} | " + " | ".join(f"{r['seconds'][st]:.2f} s" for r in res) + " |")
    for part in ("affinity", "forward", "backward"):
        lines.append(
            f"| **{part}, total** | " + " | ".join(f"{r['total'][part]:.2f} s" for r in res) + " |"
        )
    lines.append(
        "| iterations (forward / backward) | "
        + " | ".join(f"{r['iterations']['forward']} / {r['iterations']['backward']}" for r in res)
        + " |"
    )
    lines.append("| peak RSS | " + " | ".join(f"{r['peak_gb']:.2f} GB" for r in res) + " |")
    lines.append(
        "| peak RSS per stored weight | "
        + " | ".join(
            f"{(r['peak_gb'] - r['peak_gb_at_start']) * 2**30 / r['weights']:.0f} B" for r in res
        )
        + " |"
    )
    return "\n".join(lines)


def maskcut(d: dict) -> str:
    """MaskCut's cuts per image by solver, and the pseudo-masks command's throughput
    (maskcut.py)."""
    a = d["args"]
    lines = [
        produced_by(d),
        f"{a['images']} generated multi-object images at {a['size']} px, patch {a['patch']}: "
        f"N = {d['tokens']} tokens of {d['dims']} dimensions, max_objects {a['max_objects']}, "
        f"tau {a['tau']}. Seconds per image, medians over the images; every solver runs in "
        "the same MaskCut loop (graph, flip rule, components, drop rule), only the eigen "
        "solve differs. Residual: the largest `||(D - A) z - l D z|| / ||D z||` of any cut. "
        "Agree: masks equal to CutLER's path at IoU >= 0.99. Load average at the start "
        f"{d['metadata'].get('load_average', '?')}, at the end {d.get('load_average_end', '?')}.",
        "",
        "| solver | images at a time | cuts (3 per image) | eigen solves | speed-up vs CutLER "
        "| residual | masks agree |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in d["solvers"].items():
        lines.append(
            f"| {name} | {r['batch']} | {r['seconds']:.3f} s | {r['eigen_seconds']:.3f} s | "
            f"**{r['speedup_vs_cutler']:.1f}x** | {r['max_residual']:.0e} | "
            f"{100 * r['masks_agree']:.1f} % |"
        )
    lines += [
        "",
        "The whole `pseudo-masks` command (reading, resizing, backbone, cuts, COCO writing), "
        "one process:",
        "",
        "| backbone | tokens | images | images / s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in d["pipeline"]:
        lines.append(
            f"| {r['arch']} | {r['tokens']} | {r['images']} | {r['images_per_second']:.2f} |"
        )
    return "\n".join(lines)


# kinds that read another benchmark's JSON
SOURCE = {"sparse_targets": "sparse_ncut"}

RENDER = {
    "maskcut": lambda ds: "\n\n".join(maskcut(d) for d in ds),
    "sparse_profile": lambda ds: "\n\n".join(sparse_profile(d) for d in ds),
    "train_step": train_step,
    "auto_crossover": lambda ds: "\n\n".join(auto_crossover(d) for d in ds),
    "iterative": iterative,
    "backward_timing": lambda ds: "\n\n".join(backward_timing(d) for d in ds),
    "ncut_speed": ncut_speed,
    "scaling": lambda ds: "\n".join(scaling(d) for d in ds),
    "sparse_ncut": lambda ds: "\n\n".join(sparse_ncut(d) for d in ds),
    "sparse_targets": sparse_targets,
    "token_graph": lambda ds: "\n\n".join(token_graph(d) for d in ds),
    "pixel_refine": lambda ds: "\n\n".join(pixel_refine(d) for d in ds),
}


def render(kind: str, paths: list[str]) -> str:
    if kind not in RENDER:
        raise ValueError(f"report block: unknown kind {kind!r}; one of {sorted(RENDER)}")
    ds = [load(p) for p in paths]
    for p, d in zip(paths, ds):
        if d.get("benchmark") != SOURCE.get(kind, kind):
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
