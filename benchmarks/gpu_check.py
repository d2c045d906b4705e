"""Everything a GPU machine must show, in one command (``make gpu-check``).

    python benchmarks/gpu_check.py [--device cuda|cpu] [--out DIR] [--quick] [--skip STEP ...]

Steps, each a subprocess whose exit status, wall time and output tail are recorded:

  build       the extension with CUDA kernels for the GPU present (FORCE_CUDA=1 and
              TORCH_CUDA_ARCH_LIST from its compute capability)
  tests       the whole test suite; on CUDA the `cuda`-marked tests must run (the run
              fails if torch.cuda.is_available() is false inside it)
  opcheck     torch.library.opcheck of every native op on the device
  table3      benchmarks/backward_timing.py (the paper's Table 3)
  iterative   benchmarks/iterative.py (dense vs LOBPCG)
  ncut        benchmarks/ncut_speed.py (the recipe's NCut: dense vs auto)
  scaling     benchmarks/scaling.py
  train       20 steps of `python -m diffeig.dncut train` (random ViT-S/16, 224 px,
              batch 64, bf16 autocast on CUDA)
  step        benchmarks/train_step.py: one step split into backbone, heads, NCut forward,
              NCut backward and loss

Everything goes under ``--out`` (default ``$OUT``, else ``gpu-check/``): one JSON or log
per step, ``summary.json`` and ``summary.md``. The exit status is non-zero when a step
failed, and the summary names it. ``--device cpu`` runs the same steps on the CPU (the
CUDA-only ones are skipped) so that CI exercises the script; ``--quick`` shrinks every
workload to seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("build", "tests", "opcheck", "table3", "iterative", "ncut", "scaling", "train", "step")

OPCHECK = r"""
import sys, torch, diffeig
from diffeig import _extension
dev = torch.device(sys.argv[1])
assert _extension.native_for(dev), f"native kernels are not in use on {dev}"
d = dict(dtype=torch.float64, device=dev)
g = torch.Generator().manual_seed(0)
r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dev)
W = r(3, 7, 7).abs(); W = W + W.mT
l, V = torch.linalg.eigh(r(3, 7, 7) + r(3, 7, 7).mT)
cases = {
    "eigh_backward_core": (l, r(3, 7, 2), r(3, 2), 1e-12, 0.0),
    "laplacian": (W, True),
    "ncut_grad_assemble": (r(3, 7, 2), r(3, 7, 2), r(3, 7).abs(), r(3, 7)),
    "ncut_backward": (V, l, W.sum(-1), r(3, 7, 2), r(3, 2), True, 1e-12, 0.0),
    "symmetry_stats": (W,),
    "sym_matmul": (W, r(2, 7, 3), torch.tensor([2, 0], device=dev)),
    "cg_step": (r(3, 7, 2), r(3, 7, 2), r(3, 7, 2), r(3, 7, 2), r(3, 2).abs(),
                torch.zeros(3, 2, **d), torch.ones(3, 2, dtype=torch.bool, device=dev)),
    "ncut_lanczos": (W[0], W[0].sum(-1).rsqrt(), W[0].sum(-1).sqrt() / W[0].sum(-1).sqrt().norm(),
                     r(7), 1e-9, 1e-12, 5),
}
cpu_only = ("ncut_backward", "symmetry_stats", "sym_matmul", "ncut_lanczos")
for name, args in cases.items():
    if name in cpu_only and dev.type != "cpu":
        continue  # a CPU-only kernel: elsewhere it runs as ATen products around the others
    torch.library.opcheck(getattr(torch.ops.diffeig, name).default, args)
    print("opcheck", name, "on", dev, "ok", flush=True)
"""


def arch_list() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def commands(args, out: Path) -> dict[str, tuple[list[str], dict]]:
    py = sys.executable
    dev = args.device
    q = args.quick
    env: dict[str, str] = {}
    cmds: dict[str, tuple[list[str], dict]] = {}
    build_env = {"FORCE_CUDA": "1" if dev == "cuda" else "0"}
    if dev == "cuda" and arch_list():
        build_env["TORCH_CUDA_ARCH_LIST"] = arch_list()
    cmds["build"] = ([py, "setup.py", "--quiet", "build_ext", "--inplace"], build_env)
    tests = [py, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider", "--durations=10"]
    if q:
        tests += ["-k", "reliability and not train and not resume", "-x"]
    cmds["tests"] = (tests, {"DIFFEIG_REQUIRE_CUDA": "1"} if dev == "cuda" else {})
    cmds["opcheck"] = ([py, "-c", OPCHECK, dev], env)
    scale = ["--batch-scale", "0.03"] if q else []
    cmds["table3"] = (
        [py, "benchmarks/backward_timing.py", "--device", dev, *scale]
        + (["--repeats", "1", "--check-samples", "2"] if q else [])
        + ["--json", str(out / "table3.json")],
        env,
    )
    cmds["iterative"] = (
        [py, "benchmarks/iterative.py", "--device", dev, *scale]
        + (["--repeats", "1", "--check-samples", "1", "--laplacians", "unnormalized"] if q else [])
        + ["--json", str(out / "iterative.json")],
        env,
    )
    cmds["ncut"] = (
        [py, "benchmarks/ncut_speed.py", "--device", dev]
        + (["--sizes", "64:4", "--repeats", "1"] if q else [])
        + ["--json", str(out / "ncut_speed.json")],
        env,
    )
    cmds["scaling"] = (
        [py, "benchmarks/scaling.py", "--device", dev]
        + (["--sides", "8", "12", "--repeats", "1"] if q else [])
        + ["--json", str(out / "scaling.json")],
        env,
    )
    size, batch, steps = (64, 4, 2) if q else (224, 64, 20)
    cmds["train"] = (
        [py, "-m", "diffeig.dncut", "train", "--data", f"synthetic:{batch * steps}"]
        + ["--arch", "random", "--image-size", str(size), "--synthetic-size", str(size)]
        + ["--batch-size", str(batch), "--max-steps", str(steps), "--workers", "4"]
        + ["--min-kept", str(min(20, batch)), "--device", dev, "--no-progress"]
        + ["--bf16" if dev == "cuda" else "--no-bf16", "--log-every", "1"]
        + ["--output", str(out / "train-run")],
        env,
    )
    cmds["step"] = (
        [py, "benchmarks/train_step.py", "--device", dev, "--arch", "vit_small_patch16"]
        + ["--image-size", str(size), "--batch-size", str(batch)]
        + (["--steps", "1"] if q else ["--steps", "5", "--bf16"] if dev == "cuda" else [])
        + ["--json", str(out / "train_step.json")],
        env,
    )
    return cmds


def run_step(name: str, cmd: list[str], env: dict, out: Path, timeout: float) -> dict:
    print(f"[gpu-check] {name}: {' '.join(cmd[:6])}{' ...' if len(cmd) > 6 else ''}", flush=True)
    t0 = time.perf_counter()
    log = out / f"{name}.log"
    try:
        res = subprocess.run(
            cmd,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        code, text = res.returncode, res.stdout
    except subprocess.TimeoutExpired as err:
        code = 124
        text = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        text += f"\n[gpu-check] {name} timed out after {timeout:.0f} s"
    log.write_text(text)
    seconds = time.perf_counter() - t0
    status = "ok" if code == 0 else "FAILED"
    print(f"[gpu-check] {name}: {status} in {seconds:.1f} s (log: {log})", flush=True)
    return {"status": status, "exit_code": code, "seconds": seconds, "log": str(log),
            "tail": text[-2000:]}  # fmt: skip


def summary_md(args, results: dict, meta: dict) -> str:
    lines = [
        f"# gpu-check ({args.device}{', quick' if args.quick else ''})",
        "",
        f"- device: {meta.get('device')}; torch {meta.get('torch')} (CUDA {meta.get('cuda')})",
        f"- git: {meta.get('git_sha')}; date: {meta.get('date')}",
        "",
        "| step | status | seconds |",
        "|---|---|---:|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['status']} | {r.get('seconds', 0):.1f} |")
    failed = [n for n, r in results.items() if r["status"] == "FAILED"]
    lines += ["", f"Failed: {', '.join(failed)}" if failed else "All steps passed."]
    step_json = Path(args.out) / "train_step.json"
    if step_json.is_file():
        for solver, s in json.loads(step_json.read_text())["solvers"].items():
            lines += ["", f"## One training step, solver {solver}", ""]
            lines += [f"| {p} | {v['median']:.4f} s |" for p, v in s["parts"].items()]
            lines.append(f"| NCut share | {100 * s['ncut_share']:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="(default: cuda)")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu-check", help="output folder")
    p.add_argument("--quick", action="store_true", help="tiny workloads (CI on a CPU)")
    p.add_argument("--skip", nargs="*", default=[], choices=STEPS, help="steps to leave out")
    p.add_argument("--timeout", type=float, default=600, help="seconds per step (600)")
    args = p.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: torch sees no CUDA device (use --device cpu)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmds = commands(args, out.resolve())
    results: dict[str, dict] = {}
    for name in STEPS:
        if name in args.skip:
            results[name] = {"status": "skipped"}
            continue
        if name == "build" and args.device == "cpu":
            results[name] = {"status": "skipped"}  # `make test` built the CPU extension
            continue
        cmd, env = cmds[name]
        results[name] = run_step(name, cmd, env, out, args.timeout)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import metadata

    meta = metadata(torch.device(args.device))
    meta["cuda"] = torch.version.cuda
    (out / "summary.json").write_text(
        json.dumps({"args": vars(args), "metadata": meta, "steps": results}, indent=1)
    )
    md = summary_md(args, results, meta)
    (out / "summary.md").write_text(md)
    print(md)
    failed = [n for n, r in results.items() if r["status"] == "FAILED"]
    if failed:
        print(f"error: gpu-check: failed step(s): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
