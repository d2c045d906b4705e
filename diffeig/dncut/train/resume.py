"""The training state on disk: checking a training checkpoint, restoring it exactly,
trimming the log to the restored step, and exporting the trained backbone."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffeig.dncut.checkpoint import atomic_save, atomic_write, check_output, load_checkpoint
from diffeig.dncut.config import TrainConfig

__all__ = ["check_state_dict", "export", "restore", "training_checkpoint", "trim_log"]


def training_checkpoint(path, what: str) -> dict:
    """A diffeig.dncut training checkpoint (see :func:`load_checkpoint`), its keys checked."""
    state = load_checkpoint(path, what=what)
    if not isinstance(state, dict):
        raise ValueError(f"{what} {path} is not a diffeig.dncut training checkpoint")
    missing = [k for k in ("model", "optimizer", "step", "config") if k not in state]
    if missing:
        raise ValueError(
            f"{what} {path} is not a diffeig.dncut training checkpoint: it lacks the "
            f"key(s) {', '.join(map(repr, missing))}"
        )
    return state


def check_state_dict(saved: dict, expected: dict, what: str) -> None:
    """Raise ``ValueError`` naming the first key that ``saved`` lacks, has in excess, or
    holds with another shape than ``expected``."""
    missing = [k for k in expected if k not in saved]
    extra = [k for k in saved if k not in expected]
    if missing or extra:
        key, how = (missing[0], "lacks") if missing else (extra[0], "has an unexpected")
        more = len(missing) + len(extra) - 1
        raise ValueError(
            f"{what} does not fit this model: it {how} key {key!r}"
            + (f" ({more} more)" if more else "")
        )
    for key, t in expected.items():
        got = saved[key]
        if not isinstance(got, torch.Tensor) or got.shape != t.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ValueError(
                f"{what} does not fit this model: {key!r} has shape {shape}, the model "
                f"expects {tuple(t.shape)}"
            )


def restore(path, cfg: TrainConfig, model, optimizer) -> int:
    """Load a training checkpoint into ``model`` and ``optimizer``; return its step."""
    state = training_checkpoint(path, "--resume")
    saved = state["config"].get("arch")
    if saved != cfg.arch:
        raise ValueError(
            f"--resume {path} was trained with --arch {saved}; this run asks for {cfg.arch} "
            "(drop --arch to continue it as it was)"
        )
    check_state_dict(state["model"], model.state_dict(), f"--resume {path}")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"--resume {path} does not fit this model: {first}") from None
    return int(state["step"])


def trim_log(path: Path, step: int) -> None:
    """Keep the records of ``log.jsonl`` up to ``step`` (none for 0), atomically."""
    if not path.exists():
        return
    keep = []
    if step > 0:
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if rec.get("step", 0) <= step:
                keep.append(line + "\n")
    atomic_write(path, lambda f: f.write("".join(keep).encode()))


def export(checkpoint: str, output: str, *, force: bool = False) -> dict:
    """The backbone of a training checkpoint in timm's naming, for evaluation.

    ``output`` is a file, or an existing folder to write ``backbone.pth`` into. The
    payload records the architecture (``arch``) and the training step. An ``output`` that
    is the checkpoint itself (also through a link) is refused, and so is any existing
    file unless ``force``: the training state must never be replaced by a backbone."""
    out = Path(output)
    if out.is_dir():
        out = out / "backbone.pth"
    check_output(
        out,
        [(checkpoint, "the checkpoint (the training state)")],
        flag="export: the output",
        force=force,
    )
    state = training_checkpoint(checkpoint, "export")
    prefix = "backbone.model."
    weights = {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"{checkpoint}: the model has no ViT backbone to export")
    trained = state["config"]["arch"]
    # the architecture the weights load into ('random' is a seeded ViT-S/16)
    arch = "vit_small_patch16" if trained == "random" else trained
    payload = {"model": weights, "arch": arch, "trained_arch": trained, "step": state["step"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    payload["path"] = str(atomic_save(payload, out))
    return payload
