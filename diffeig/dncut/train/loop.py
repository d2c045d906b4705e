"""The DNCut training loop: single process or torchrun / DDP, exact resume."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from diffeig.dncut.backbone import build_backbone
from diffeig.dncut.checkpoint import (
    atomic_save,
    remove_stale_temporaries,
)
from diffeig.dncut.config import TrainConfig
from diffeig.dncut.train.data import ImageSource, TwoViews
from diffeig.dncut.train.model import DNCut, NCutOptions, align
from diffeig.dncut.train.resume import restore, trim_log


class NonFiniteLoss(RuntimeError):
    """Training stopped because a loss term, a gradient, the backbone's features or the
    updated parameters were not finite. Nothing of that step was saved."""


def non_finite(what: str, step: int, iters: int, last_good, detail: str = "") -> NonFiniteLoss:
    return NonFiniteLoss(
        f"non-finite {what} at step {step} (epoch {step / iters:.2f}){detail}. Stopped before "
        "saving anything of this step; the last good checkpoint is "
        f"{last_good or 'none (no checkpoint yet)'}"
    )


# ----------------------------------------------------------------------------- pieces


def lr_schedule(cfg: TrainConfig, iters_per_epoch: int) -> np.ndarray:
    """Per-iteration learning rates: linear warm-up from 0 (the first step's) over
    ``warmup_epochs``, then cosine from ``base_lr * batch / 256`` to ``min_lr`` at the end
    of ``epochs``."""
    peak = cfg.base_lr * cfg.batch_size / 256
    total = cfg.epochs * iters_per_epoch
    warm = min(int(round(cfg.warmup_epochs * iters_per_epoch)), total)
    # As the authors' adjust_learning_rate: step T of the warm-up runs at peak * T / warm,
    # so the first step's learning rate is 0.
    warmup = peak * np.arange(warm) / max(warm, 1)
    t = np.arange(total - warm) / max(total - warm, 1)
    cosine = cfg.min_lr + 0.5 * (peak - cfg.min_lr) * (1 + np.cos(np.pi * t))
    return np.concatenate([warmup, cosine])


def build_optimizer(model, cfg: TrainConfig):
    """The authors' optimizer: SGD with momentum and their LARS (``diffeig.dncut.train.optim``),
    biases and ``bn`` parameters without decay or adaptation."""
    from diffeig.dncut.train.optim import LARS, authors_param_groups

    return LARS(
        authors_param_groups(model, cfg.weight_decay),
        lr=0.0,
        momentum=cfg.momentum,
        trust_coeff=cfg.trust_coeff,
        eps=0.0,
    )


def build_model(cfg: TrainConfig) -> DNCut:
    backbone = build_backbone(cfg.arch, cfg.weights)
    if hasattr(backbone, "model"):
        freeze_unused(backbone.model)
    ncut = NCutOptions(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(NCutOptions)})
    return DNCut(
        backbone,
        proj_hidden=cfg.proj_hidden,
        proj_dim=cfg.proj_dim,
        ncut=ncut,
        alpha=cfg.alpha,
        iou_threshold=cfg.iou_threshold,
        min_kept=cfg.min_kept,
        threshold_step=cfg.threshold_step,
        autocast_backbone=cfg.bf16,
        joint_bn=cfg.joint_bn,
    )


def freeze_unused(vit: torch.nn.Module) -> None:
    """The parameters after the last block's qkv projection never reach the keys: they get
    no gradient (which DDP requires to be declared) and stay as loaded."""
    last = vit.blocks[-1]
    for mod in (
        last.attn.proj,
        last.ls1,
        last.norm2,
        last.mlp,
        last.ls2,
        vit.norm,
        vit.fc_norm,
        vit.head,
    ):
        for p in mod.parameters():
            p.requires_grad_(False)


def unwrap(model):
    return model.module if hasattr(model, "module") else model


# ------------------------------------------------------------------------- distributed


class Dist:
    """torchrun's environment (or a single process)."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ValueError(f"--device {device}: no CUDA device is available")
            if device == "cuda":
                device = f"cuda:{self.local_rank}"
            torch.cuda.set_device(device)
        self.device = torch.device(device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_true(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([0.0 if flag else 1.0], device=self.device)
        dist.all_reduce(t)
        return t.item() == 0

    def mean(self, values: dict) -> dict:
        if self.world == 1:
            return values
        keys = sorted(values)
        t = torch.stack([values[k].detach().float().reshape(()) for k in keys]).to(self.device)
        dist.all_reduce(t)
        return dict(zip(keys, t / self.world))

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def close(self):
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def epoch_batches(n: int, cfg: TrainConfig, dst: Dist, epoch: int) -> list[list[int]]:
    """This process's batches of one epoch: DistributedSampler's shuffle (seeded by
    ``seed`` and ``epoch``), the global batch split over processes, last partial dropped."""
    sampler = torch.utils.data.DistributedSampler(
        range(n), num_replicas=dst.world, rank=dst.rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    sampler.set_epoch(epoch)
    idx = list(sampler)
    b = cfg.batch_size // dst.world
    return [idx[i * b : (i + 1) * b] for i in range(len(idx) // b)]


# --------------------------------------------------------------------------- figures


def save_visual(batch: dict, out: dict, path: Path, rows: int = 4) -> None:
    """A PNG grid, one row per sample: both views' overlap (aligned), online mask of view
    1, target mask of view 2, and the pseudo-masks h1, v1 and uniform of view 1."""

    from diffeig.dncut.backbone import IMAGENET_MEAN, IMAGENET_STD
    from diffeig.dncut.train.losses import pseudo_masks

    B = batch["view1"].shape[0]
    r = min(rows, B)
    S = batch["view1"].shape[-1]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def img(v, box, flip):
        # the same alignment as the features', on the (un-normalized) views themselves
        v = (v[:r].detach().float().cpu() * std + mean).clamp(0, 1)
        return align(v, box[:r].float().cpu(), flip[:r].cpu())

    def mask(m):
        m = m[:r].detach().float().cpu().unsqueeze(1)
        m = torch.nn.functional.interpolate(m, (S, S), mode="nearest")
        return m.expand(r, 3, S, S)

    m1 = out["masks_online"][:B]
    p = pseudo_masks(m1.detach().float())
    cols = [
        img(batch["view1"], batch["box1"], batch["flip1"]),
        img(batch["view2"], batch["box2"], batch["flip2"]),
        mask(m1),
        mask(out["masks_target"][B:]),
        mask(p["h1"]),
        mask(p["v1"]),
        mask(p["uniform"]),
    ]
    from PIL import Image

    from diffeig.dncut.figures import compose

    def pil(t):
        return Image.fromarray((t.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))

    labels = [
        "view 1, overlap (aligned)",
        "view 2, overlap (aligned)",
        "online mask, view 1",
        "target mask, view 2",
        "pseudo-mask h1 (top / bottom)",
        "pseudo-mask v1 (left / right)",
        "pseudo-mask uniform",
    ]
    rows = [([pil(c[i]) for c in cols], labels) for i in range(r)]
    path.parent.mkdir(parents=True, exist_ok=True)
    legend = [
        "Masks: white = 1 (foreground), black = 0, grey = 0.5, where the mask is undecided "
        "(a sample whose masks stay grey contributes little to the loss).",
        "The sign of z2 is arbitrary, so a target mask can look inverted against the online "
        "one: the loss compares the online mask with both the target and 1 - target and "
        "keeps the better match.",
    ]
    rows_ = [f"sample {i + 1}" for i in range(r)]
    compose(rows, rows_, header=True, footer=legend).save(path)


# ------------------------------------------------------------------------------ train


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train(
    cfg: TrainConfig, *, resume: str | None = None, progress: bool = True, overwrite: bool = False
) -> dict:
    """Run (or continue) a training; returns the last logged record.

    A fresh run (no ``resume``) into an ``output`` that already holds a run (``last.pth``
    or ``log.jsonl``) is refused unless ``overwrite``."""
    out_dir = Path(cfg.output)
    held = [n for n in ("last.pth", "log.jsonl") if (out_dir / n).exists()]
    if not resume and held and not overwrite:
        raise ValueError(
            f"--output {out_dir} holds a run ({', '.join(held)}): continue it with --resume "
            f"{out_dir / 'last.pth'}, or replace it with --overwrite"
        )
    dst = Dist(cfg.device)
    try:
        return _train(cfg, dst, resume, progress)
    finally:
        dst.close()


def _train(cfg: TrainConfig, dst: Dist, resume, progress) -> dict:
    """The run, in named steps: prepare the data and the output folder, build the model
    and optimizer (restored where resuming), open the logs, then the steps."""
    from tqdm import tqdm

    out_dir, dataset, iters = _prepare(cfg, dst)
    schedule = lr_schedule(cfg, iters)
    model, optimizer, step = _build(cfg, dst, resume, iters)
    last_epoch = cfg.stop_epoch if cfg.stop_epoch else cfg.epochs
    total = min(last_epoch, cfg.epochs) * iters
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    log = _Log(cfg, dst, out_dir, step if resume else 0)
    last_good = resume
    record: dict = {}
    quiet = not (progress and dst.main)
    bar = tqdm(total=total, initial=step, disable=quiet, desc="dncut", dynamic_ncols=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()
    while step < total:
        epoch = step // iters
        dataset.set_epoch(epoch)
        batches = epoch_batches(len(dataset), cfg, dst, epoch)[step - epoch * iters :]
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=cfg.workers,
            pin_memory=dst.device.type == "cuda",
            persistent_workers=False,
        )
        for batch in loader:
            if step >= total:
                break
            batch = _to(batch, dst.device)
            lr = float(schedule[step])
            for g in optimizer.param_groups:
                g["lr"] = lr
            out, terms = _step(model, optimizer, batch, trainable, dst, (step, iters, last_good))
            step += 1
            bar.update(1)
            record = {"step": step, "epoch": step / iters, "lr": lr}
            record.update({k: float(v) for k, v in dst.mean(terms).items()})
            record["kept"] = 0.5 * (record["kept_12"] + record["kept_21"])
            record["iou"] = 0.5 * (record["iou_12"] + record["iou_21"])
            if dst.main:
                log.write(record, batch, out, bar, last=step == total)
            # checkpoints: every half epoch (last.pth) and every epoch (also epochN.pth)
            if step % iters == 0 or step % max(iters // 2, 1) == 0 or step == total:
                last_good = _checkpoint(cfg, dst, out_dir, model, optimizer, step, iters)
    bar.close()
    log.close()
    return record


def _prepare(cfg: TrainConfig, dst: Dist):
    """Check the options, list the images (before anything is written to ``--output``),
    then write the run's config.yaml: ``(out_dir, dataset, iterations per epoch)``."""
    out_dir = Path(cfg.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--output {out_dir} exists and is not a directory")
    if cfg.batch_size % dst.world:
        raise ValueError(
            f"--batch-size {cfg.batch_size} must be a multiple of the {dst.world} processes"
        )
    torch.manual_seed(cfg.seed)
    source = ImageSource(cfg.data, synthetic_size=cfg.synthetic_size, seed=cfg.seed)
    if dst.main:
        # a write killed mid-way (SIGKILL) leaves its temporary: the checkpoint beside it
        # is the old one, whole (atomic_write renames only a complete file)
        remove_stale_temporaries(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        import yaml

        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    dataset = TwoViews(
        source,
        size=cfg.image_size,
        scale=cfg.crop_scale,
        min_overlap=cfg.min_overlap,
        seed=cfg.seed,
    )
    iters = len(dataset) // cfg.batch_size
    if iters == 0:
        raise ValueError(
            f"--batch-size {cfg.batch_size} is larger than the {len(dataset)} images of --data"
        )
    return out_dir, dataset, iters


def _build(cfg: TrainConfig, dst: Dist, resume, iters: int):
    """``(model, optimizer, step)``: restored from ``resume`` where given, wrapped for
    DistributedDataParallel over several processes."""
    model = build_model(cfg).to(dst.device)
    optimizer = build_optimizer(model, cfg)
    step = 0
    if resume:
        step = restore(resume, cfg, model, optimizer)
        if dst.main:
            print(f"resumed from {resume} at step {step} (epoch {step / iters:.2f})", flush=True)
    if dst.world > 1:
        if dst.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dst.device.index] if dst.device.type == "cuda" else None
        )
    return model, optimizer, step


def _step(model, optimizer, batch, trainable, dst: Dist, where):
    """One update, every value checked finite on every process before it is used (the
    forward's features, the loss, the gradients, the parameters after the update):
    ``(model output, scalar terms)``."""
    out = model(batch)
    if not dst.all_true(bool(out["features_finite"])):
        raise non_finite("features", *where, " (weights or input images)")
    loss = out["loss"]
    terms = {k: v.detach() for k, v in out.items() if not k.startswith("masks") and v.dim() == 0}
    terms.pop("features_finite")
    if not dst.all_true(bool(torch.isfinite(loss))):
        values = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
        raise non_finite("loss", *where, detail=f": {values}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if not dst.all_true(all_finite(p.grad for p in trainable if p.grad is not None)):
        raise non_finite("gradients", *where)
    optimizer.step()
    if not dst.all_true(all_finite(trainable)):
        raise non_finite("parameters after the update", *where, " (lr too high?)")
    return out, terms


def _checkpoint(cfg: TrainConfig, dst: Dist, out_dir: Path, model, optimizer, step, iters):
    """Write last.pth (and epochN.pth at an epoch's end with ``save_epochs``) atomically
    on the main process; returns the checkpoint every process can resume from."""
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "epoch": step / iters,
        "config": cfg.to_dict(),
    }
    if dst.main:
        atomic_save(state, out_dir / "last.pth")
        if step % iters == 0 and cfg.save_epochs:
            atomic_save(state, out_dir / f"epoch{step // iters}.pth")
    dst.barrier()
    return str(out_dir / "last.pth")


class _Log:
    """log.jsonl (every ``log_every`` steps), TensorBoard (``--tensorboard``), the
    progress bar's figures and the figures (every ``vis_every`` steps), main process
    only. A fresh run starts a fresh log; a resumed one keeps the records up to its step
    (a run killed after logging but before saving would otherwise log steps twice)."""

    def __init__(self, cfg: TrainConfig, dst: Dist, out_dir: Path, keep_to: int):
        self.cfg, self.out_dir = cfg, out_dir
        self.path = out_dir / "log.jsonl"
        self.writer = None
        self.t_last = time.perf_counter()
        if not dst.main:
            return
        trim_log(self.path, keep_to)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ValueError(
                    "--tensorboard needs the tensorboard package (pip install tensorboard)"
                ) from err
            self.writer = SummaryWriter(str(out_dir / "tb"))

    def write(self, record: dict, batch, out, bar, last: bool) -> None:
        now = time.perf_counter()
        record["seconds"] = now - self.t_last
        self.t_last = now
        step = record["step"]
        bar.set_postfix(
            loss=f"{record['loss']:.4f}", kept=f"{record['kept']:.2f}", lr=f"{record['lr']:.2e}"
        )
        if step % self.cfg.log_every == 0 or last:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.writer:
                for k, v in record.items():
                    self.writer.add_scalar(k, v, step)
        if step % self.cfg.vis_every == 0 or last:
            record["figure"] = str(self.out_dir / "vis" / f"step{step:07d}.png")
            save_visual(batch, out, Path(record["figure"]))

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def all_finite(tensors) -> bool:
    """Whether every entry of every tensor is finite, with one host synchronization."""
    tensors = [t.detach() for t in tensors]
    if not tensors:
        return True
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(tensors, norm_type=math.inf)))
