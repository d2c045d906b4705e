"""Fine-tune a ViT with differentiable normalized cuts (DNCut) and evaluate it.

Commands: train, export, eval-saliency, eval-discovery, visualize, pseudo-masks,
eval-instances. Run one with --help for its options; docs/dncut.md, docs/evaluation.md and
docs/pseudo-masks.md describe them.
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
    "bf16": "bf16 autocast for the backbone on CUDA: faster, but the keys move by about "
    "5e-3 (relative) from the authors' float32 ones",
    "image_size": "crop side in pixels",
    "crop_scale": "area range of the random crops (two numbers, lo <= hi in (0, 1])",
    "min_overlap": "view 2's crop is redrawn (10 tries, as the authors' code) until this "
    "fraction of its area lies in view 1's",
    "synthetic_size": "side of the generated images of synthetic:N",
    "workers": "image-loading processes",
    "proj_hidden": "hidden width of the projector and predictor (None: the backbone's width)",
    "proj_dim": "output width of the projector and predictor",
    "tau": "affinity threshold on the cosine similarity, in [-1, 1]",
    "eps": "affinity of the pairs at or below tau (keeps the graph connected)",
    "temperature": "mask = sigmoid(z2 / temperature), > 0",
    "sign": "sign rule of z2: sum (sum >= 0, the authors') or max (largest entry > 0)",
    "alpha": "weight of the structural regularization",
    "solver": "eigen solver of the NCut: auto (the faster of the two for the token count: "
    "LOBPCG from N = 100 on CPUs), dense (torch.linalg.eigh, the authors') or lobpcg; the "
    "same float64 results up to the sign that --sign sum reads from rounding",
    "renormalize": "L2-normalize the aligned features again before the affinity (cosine "
    "affinity); default: their raw dot products, as the authors' code",
    "joint_bn": "run both views through the projector and predictor as one batch (shared "
    "BatchNorm statistics); default: one view at a time, as the authors' code",
    "iou_threshold": "keep a sample when its masks' IoU exceeds this, in [0, 1]",
    "min_kept": "lower the IoU threshold until this many samples are kept",
    "threshold_step": "how much to lower it each time, in [1e-4, 1]",
    "min_lr": "learning rate at the end of the cosine",
    "weight_decay": "weight decay of the weights (LARS-adapted)",
    "momentum": "SGD momentum, in [0, 1]",
    "trust_coeff": "LARS trust coefficient, > 0",
    "warmup_epochs": "epochs of linear warm-up",
    "output": "run folder: config.yaml, log.jsonl, last.pth, epochN.pth, vis/",
    "device": "auto, cpu, cuda or cuda:N",
    "seed": "seed of the data order, the augmentations and the heads",
    "log_every": "write log.jsonl every N steps",
    "tensorboard": "also log to <output>/tb (needs tensorboard)",
    "save_epochs": "keep epochN.pth at the end of each epoch besides last.pth",
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
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an --output that holds a run (its log and checkpoints are replaced)",
    )
    _add_config_flags(t)

    e = sub.add_parser("export", help="write a training checkpoint's backbone for evaluation")
    e.add_argument("checkpoint", help="a training checkpoint (last.pth or epochN.pth)")
    e.add_argument(
        "output",
        help="the backbone file to write, or an existing folder (backbone.pth inside); it "
        "records the architecture, which the evaluation commands read",
    )
    e.add_argument(
        "--force", action="store_true", help="replace an existing output file (never the input)"
    )

    from diffeig.dncut.eval import evaluate

    evaluate.add_commands(sub)
    return p


EXTRA = ("timm", "torchvision", "PIL", "tqdm", "yaml", "scipy", "pycocotools")


def missing_extra() -> list[str]:
    """The [dncut] extra's modules that cannot be imported here."""
    import importlib.util

    return [m for m in EXTRA if importlib.util.find_spec(m) is None]


def main(argv=None) -> int:
    # --help (and a bad flag) work without the extra: the parser imports none of it
    args = parser().parse_args(argv)
    missing = missing_extra()
    if missing:
        print(
            f"error: the DNCut recipe needs the [dncut] extra (missing: {', '.join(missing)}); "
            'from a checkout: pip install -e ".[dncut]"; from PyPI: pip install "diffeig[dncut]"',
            file=sys.stderr,
        )
        return 2
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "export":
            from diffeig.dncut.train import export

            payload = export(args.checkpoint, args.output, force=args.force)
            print(
                f"wrote {payload['path']}: {payload['arch']} backbone, "
                f"{len(payload['model'])} tensors, step {payload['step']}"
            )
            return 0
        from diffeig.dncut.eval import evaluate

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
        record = train(
            cfg, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite
        )
    except NonFiniteLoss as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    if record and os.environ.get("RANK", "0") == "0":
        print(
            f"done: step {record['step']} (epoch {record['epoch']:.2f}), "
            f"loss {record['loss']:.4f}, "
            f"kept {record['kept']:.2f}, IoU {record['iou']:.3f}; checkpoints in {cfg.output}\n"
            "  IoU: agreement of the two views' hard masks on their overlap (not accuracy: no "
            "labels are used); kept: the share of samples that passed the IoU filter"
        )
        if "figure" in record:
            print(
                f"figure: {record['figure']}: per sample, the two views' overlap, the online "
                "mask of view 1, the target mask of view 2, and the h1, v1 and uniform "
                "pseudo-masks the regularization pushes away from"
            )
    return 0
