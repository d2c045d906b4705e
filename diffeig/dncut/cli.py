"""``python -m diffeig.dncut <command>``.

Commands: train, export, eval-saliency, eval-discovery, visualize.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from diffeig.dncut.config import TrainConfig

HELP = {
    "data": "image folder (flat or ImageFolder), a file list, or synthetic:N (generated shapes)",
    "arch": "vit_small_patch16 | vit_small_patch8 | vit_base_patch16 | vit_base_patch8 | "
    "mocov3_vit_small | random",
    "weights": "local DINO / MAE / MoCo v3 checkpoint of the backbone",
    "laplacian": "unnormalized (D - W, the authors' code) or ncut ((D - W) z = l D z)",
    "solve_dtype": "dtype of the eigen solve (float64 as the authors' code)",
    "batch_size": "global batch over all processes",
    "base_lr": "learning rate for batch 256 (scaled linearly)",
    "epochs": "epochs of the cosine schedule",
    "stop_epoch": "stop after this epoch (the schedule keeps its length)",
    "max_steps": "stop after this many steps in total",
    "vis_every": "save a PNG grid of views, masks and pseudo-masks every N steps",
    "bf16": "bf16 autocast for the backbone on CUDA",
}


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_ = f"{HELP.get(f.name, '')} (default: {default})".strip()
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif f.name == "crop_scale":
            p.add_argument(flag, type=float, nargs=2, default=None, help=help_)
        else:
            base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
            p.add_argument(flag, type=base, default=None, help=help_)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m diffeig.dncut", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune a backbone with DNCut (also under torchrun)")
    t.add_argument(
        "--config", help="a YAML file or a packaged config (vit_s16, vit_s8, vit_b16_mae, demo)"
    )
    t.add_argument("--resume", help="continue a run from its checkpoint (e.g. runs/x/last.pth)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_flags(t)

    e = sub.add_parser("export", help="write a training checkpoint's backbone for evaluation")
    e.add_argument("checkpoint")
    e.add_argument("output")

    from diffeig.dncut import evaluate

    evaluate.add_commands(sub)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "export":
            from diffeig.dncut.train import export

            payload = export(args.checkpoint, args.output)
            print(
                f"wrote {payload['path']}: {payload['arch']} backbone, "
                f"{len(payload['model'])} tensors, step {payload['step']}"
            )
            return 0
        from diffeig.dncut import evaluate

        return evaluate.run(args)
    except (ValueError, OSError) as err:  # user errors: bad options, files, data
        print(f"error: {message(err)}", file=sys.stderr)
        return 2


def message(err: BaseException) -> str:
    """An exception as one line for the user. An error raised in a DataLoader worker
    arrives with the worker's traceback in its text: keep its last line, the error."""
    text = str(err).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.splitlines()[-1]
        name, sep, rest = last.partition(": ")
        text = rest if sep and ("." in name or name.endswith("Error")) else last
    return text


def _train(args) -> int:
    import os

    from diffeig.dncut.config import resolve
    from diffeig.dncut.train import NonFiniteLoss, train, training_checkpoint

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    overrides = {n: getattr(args, n) for n in names}
    base = None
    if args.resume:
        base = training_checkpoint(args.resume, "--resume")["config"]
        # A run continues where its checkpoint is (a run folder may have been moved).
        if overrides["output"] is None:
            overrides["output"] = os.path.dirname(os.path.abspath(args.resume))
    cfg = resolve(args.config, overrides, base)
    try:
        record = train(cfg, resume=args.resume, progress=not args.no_progress)
    except NonFiniteLoss as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    if record and os.environ.get("RANK", "0") == "0":
        print(
            f"done: step {record['step']} (epoch {record['epoch']:.2f}), "
            f"loss {record['loss']:.4f}, "
            f"kept {record['kept']:.2f}, IoU {record['iou']:.3f}; checkpoints in {cfg.output}"
        )
        if "figure" in record:
            print(f"figure: {record['figure']} (views, masks and pseudo-masks of the last batch)")
    return 0
