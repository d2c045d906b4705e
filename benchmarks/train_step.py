"""One DNCut training step, timed part by part.

    python benchmarks/train_step.py [--device cpu|cuda] [--arch vit_small_patch16]
        [--image-size 224] [--batch-size 8] [--steps 3] [--bf16] [--json out.json]

The step runs the recipe's own code (``DNCut.backbone_features``, ``aligned_maps``,
``ncut_masks``, ``objective``: what ``DNCut.forward`` calls) on generated two-view batches
(``--data synthetic:N``) with a randomly initialized backbone, cut at detached boundaries
so that each backward is timed alone:

    backbone forward | heads + alignment forward | NCut forward | loss forward
    loss backward | NCut backward | heads + backbone backward | optimizer step

Medians over ``--steps`` timed steps after ``--warmup`` ones, CUDA-synchronized between
parts. The NCut share is (NCut forward + NCut backward) / step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import metadata, summarize, sync, write_json  # noqa: E402

PARTS = (
    "backbone forward",
    "heads + alignment forward",
    "NCut forward",
    "loss forward",
    "loss backward",
    "NCut backward",
    "heads + backbone backward",
    "optimizer step",
)


def timed_step(model, optimizer, batch, device) -> dict[str, float]:
    """One training step of ``model`` (a ``DNCut``), seconds per part."""
    from diffeig.dncut.train.model import ncut_masks

    times: dict[str, float] = {}

    def mark(name, t0):
        sync(device)
        t = time.perf_counter()
        times[name] = t - t0
        return t

    sync(device)
    t = time.perf_counter()
    f = model.backbone_features(batch)
    t = mark("backbone forward", t)
    maps = model.aligned_maps(f, batch)
    t = mark("heads + alignment forward", t)
    maps_in = maps.detach().requires_grad_()
    masks, _ = ncut_masks(maps_in, model.ncut)
    t = mark("NCut forward", t)
    masks_in = masks.detach().requires_grad_()
    loss = model.objective(masks_in)["loss"]
    t = mark("loss forward", t)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t = mark("loss backward", t)
    masks.backward(masks_in.grad)
    t = mark("NCut backward", t)
    maps.backward(maps_in.grad)
    t = mark("heads + backbone backward", t)
    optimizer.step()
    mark("optimizer step", t)
    return times


def run(args) -> dict:
    from diffeig.dncut.config import TrainConfig
    from diffeig.dncut.train import build_model, build_optimizer
    from diffeig.dncut.train.data import ImageSource, TwoViews

    device = torch.device(args.device)
    cfg = TrainConfig(
        data=f"synthetic:{args.batch_size}",
        arch=args.arch,
        image_size=args.image_size,
        synthetic_size=max(args.image_size, 64),
        batch_size=args.batch_size,
        bf16=args.bf16,
        solve_dtype=args.solve_dtype,
        laplacian=args.laplacian,
        solver=args.solver,
        min_kept=min(20, args.batch_size),
    )
    cfg.validate()
    torch.manual_seed(0)
    data = TwoViews(
        ImageSource(cfg.data, synthetic_size=cfg.synthetic_size),
        size=cfg.image_size,
        scale=cfg.crop_scale,
        min_overlap=cfg.min_overlap,
    )
    batch = torch.utils.data.default_collate([data[i] for i in range(args.batch_size)])
    batch = {k: v.to(device) for k, v in batch.items()}
    model = build_model(cfg).to(device).train()
    optimizer = build_optimizer(model, cfg)
    for g in optimizer.param_groups:
        g["lr"] = 1e-6
    rows = []
    for i in range(args.warmup + args.steps):
        times = timed_step(model, optimizer, batch, device)
        if i >= args.warmup:
            rows.append(times)
        if not args.quiet:
            total = sum(times.values())
            print(f"  step {i + 1}/{args.warmup + args.steps}: {total:.3f} s", flush=True)
    parts = {p: summarize([r[p] for r in rows]) for p in PARTS}
    step = summarize([sum(r.values()) for r in rows])
    ncut = parts["NCut forward"]["median"] + parts["NCut backward"]["median"]
    return {
        "config": {
            k: getattr(args, k)
            for k in (
                "arch",
                "image_size",
                "batch_size",
                "bf16",
                "solve_dtype",
                "laplacian",
                "solver",
            )
        },
        "tokens": (args.image_size // model.backbone.patch_size) ** 2,
        "parts": parts,
        "step": step,
        "ncut_share": ncut / step["median"],
    }


def table(result: dict) -> str:
    lines = ["| part | median (s) | share |", "|---|---:|---:|"]
    total = result["step"]["median"]
    for p, s in result["parts"].items():
        lines.append(f"| {p} | {s['median']:.4f} | {100 * s['median'] / total:.1f} % |")
    lines.append(f"| **step** | **{total:.4f}** | |")
    lines.append(f"| NCut forward + backward | | **{100 * result['ncut_share']:.1f} %** |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument(
        "--arch", default="vit_small_patch16", help="vit_small_patch16 | vit_small_patch8 | random"
    )
    p.add_argument("--image-size", type=int, default=224, help="crop side in pixels (224)")
    p.add_argument("--batch-size", type=int, default=8, help="two-view samples per step (8)")
    p.add_argument("--steps", type=int, default=3, help="timed steps (3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (1)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast of the backbone (CUDA)")
    p.add_argument("--solve-dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--laplacian", default="unnormalized", choices=["unnormalized", "ncut"])
    p.add_argument(
        "--solver",
        nargs="+",
        default=["dense", "auto"],
        choices=["dense", "lobpcg", "auto"],
        help="one or more eigen solvers, timed in the same run on the same batch "
        "(default: dense auto, the authors' path and the recipe's default)",
    )
    p.add_argument("--quiet", action="store_true", help="no line per step")
    p.add_argument("--json", default=None, help="write the figures and metadata here")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    results = {}
    for solver in args.solver:
        one = argparse.Namespace(**{**vars(args), "solver": solver})
        print(f"solver {solver}:", flush=True)
        results[solver] = run(one)
        print(table(results[solver]))
    result = {
        "benchmark": "train_step",
        "args": vars(args),
        "metadata": metadata(torch.device(args.device)),
        "solvers": results,
    }
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
