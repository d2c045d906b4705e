"""Print the Markdown table of a backward_timing.py JSON (as quoted in the README).

python benchmarks/report.py [results.json ...]

Without arguments: bench-results/backward_timing.json (what `make bench` writes) if it
exists, else the recorded benchmarks/results/cpu-2core-float32.json.
"""

from __future__ import annotations

import json


def report(path: str) -> str:
    with open(path) as fh:
        d = json.load(fh)
    md = d["metadata"]
    lines = [
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
            f"total ours dense / ours LOBPCG **{q['dense_over_lobpcg_total']:.2f}x**; ours is "
            f"{q['ours_backward_over_floor']:.1f}x the memory floor (read V twice, write dL/dW once "
            f"at the measured {d['bandwidth_GBps']:.0f} GB/s) and "
            f"{q['ours_backward_over_fresh_allocation_floor']:.1f}x that floor plus the page faults "
            "of a freshly allocated dL/dW."
        )
    for r in d["results"]:
        errs = next(v for k, v in r["check"].items() if k.endswith("_rel_error_vs_float64"))
        lines.append(
            f"- {r['setting']}, {d['args']['dtype']} gradient error against float64 on "
            f"{d['args']['check_samples']} graphs: "
            + ", ".join(f"{m} {e:.1e}" for m, e in errs.items())
            + " (the first three methods start from float32 torch.linalg.eigh, whose "
            "eigenvectors carry most of their error; the LOBPCG forward iterates to its "
            "own tolerance)."
        )
    lines.append("")
    lines.append(
        f"Machine: {md['device']}, {md['threads']} threads, torch {md['torch']}, "
        f"git {md['git_sha'][:10]}{'-dirty' if md['git_sha'].endswith('dirty') else ''}, "
        f"{md['date']}; {d['args']['dtype']}, "
        f"laplacian={d['args']['laplacian']}."
    )
    return "\n".join(lines)


def default_paths() -> list[str]:
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for p in (
        root / "bench-results/backward_timing.json",
        root / "benchmarks/results/cpu-2core-float32.json",
    ):
        if p.is_file():
            return [str(p)]
    return []


if __name__ == "__main__":
    import argparse
    import sys

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("json", nargs="*", help="JSON files written by backward_timing.py --json")
    paths = p.parse_args().json or default_paths()
    if not paths:
        sys.exit("error: no results: run `make bench` first, or give a JSON file")
    print("\n\n".join(f"{path}:\n\n{report(path)}" for path in paths))
