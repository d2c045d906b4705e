"""``pseudo-masks``: MaskCut over a folder of images, written as COCO instances.

    python -m diffeig.dncut pseudo-masks --root imagenet/train --arch vit_small_patch8 \\
        --weights dino_deitsmall8_pretrain.pth --output imagenet-maskcut.json
    torchrun --nproc-per-node 4 -m diffeig.dncut pseudo-masks ...   (the same flags)

Each image is resized to ``--image-size`` squared (Lanczos, as CutLER), its token
features are cut by :func:`diffeig.dncut.maskcut` (all images of a batch solved
together), and each mask is brought to the image's own size (optionally refined at
pixel resolution first, ``--refine pixel-ncut``). docs/pseudo-masks.md has the recipe.

Work is written as it is done: each process appends one JSON line per image to its own
file in ``<output>.parts/`` (flushed and fsynced; a line cut short by a kill is dropped
on resume), so a kill loses at most the batch being processed and ``--resume`` skips
every image already written. The images are cut in batches of ``--batch-size`` in sorted
order, batch j by process ``j mod P``; process 0 then merges the parts in that order
(image ids: the position in the sorted list + 1), so the merged file is byte-identical
whatever the number of processes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from diffeig.dncut.checkpoint import atomic_write, check_output
from diffeig.dncut.coco import dataset, instance
from diffeig.dncut.eval import maskcut as mc
from diffeig.dncut.eval import pixel_ncut, postprocess
from diffeig.dncut.eval.features import load_backbone, memory_limit, to_tensor

__all__ = ["add_command", "run", "merge", "read_parts"]

PARTS = ".parts"
# How long process 0 waits for the others at the end (a slow shard of a large dataset).
BARRIER_HOURS = 72
# Memory of one image's cuts per token pair: the float64 graph (8), the similarities
# (float32, 8 with their transpose), the masks (2) and the solver's blocks, rounded up.
BYTES_PER_PAIR = 32
# A refined mask is dropped where its IoU with the token mask is below this (CutLER's
# check after its CRF).
MIN_REFINED_IOU = 0.5
# Scores and the refined masks' threshold are written rounded: equal bytes from equal work.
SCORE_DIGITS = 4


def add_command(sub, common) -> None:
    """The ``pseudo-masks`` subcommand; ``common`` adds the backbone and device flags."""
    p = sub.add_parser(
        "pseudo-masks",
        help="MaskCut pseudo-masks of a folder of images as COCO instances (also under torchrun)",
    )
    p.add_argument("--root", required=True, help="a folder of images (searched recursively)")
    common(p)
    p.add_argument(
        "--output", default="annotations.json", help="the COCO JSON (default: annotations.json)"
    )
    p.add_argument(
        "--max-objects", type=int, default=mc.MAX_OBJECTS, help="cuts per image (default: 3)"
    )
    p.add_argument(
        "--tau", type=float, default=mc.TAU, help="binary graph's similarity threshold (0.2)"
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=480,
        help="images are resized to this squared, as CutLER (default: 480)",
    )
    p.add_argument(
        "--refine",
        default="none",
        choices=("none", "pixel-ncut"),
        help="none: token masks upsampled; pixel-ncut: each mask refined by a pixel-resolution "
        "cut (in place of CutLER's dense CRF)",
    )
    p.add_argument(
        "--solver",
        default="auto",
        choices=("auto", "dense", "lobpcg"),
        help="eigen solver of the cuts (default: auto)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="images cut together (default: 8)")
    p.add_argument("--workers", type=int, default=2, help="image-loading processes (default: 2)")
    p.add_argument(
        "--resume", action="store_true", help="skip the images <output>.parts already holds"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="start afresh: replace --output and the work in <output>.parts",
    )
    pixel_ncut.add_options(p)


# ------------------------------------------------------------------------------ the parts


def read_parts(folder: Path) -> dict[str, dict]:
    """Every image record in ``folder``'s part files, by file name (the first of repeats).
    A last line cut short by a kill is ignored."""
    records: dict[str, dict] = {}
    for part in sorted(folder.glob("part-*.jsonl")) if folder.is_dir() else []:
        for line in part.read_bytes().split(b"\n"):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # empty, or cut short
            records.setdefault(record["file"], record)
    return records


def open_part(folder: Path, rank: int):
    """This process's part file for appending, a partial last line cut off first."""
    path = folder / f"part-{rank:05d}.jsonl"
    if path.exists():
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            with open(path, "r+b") as f:
                f.truncate(keep)
    return open(path, "ab")


def append(part, record: dict) -> None:
    part.write(json.dumps(record).encode() + b"\n")
    part.flush()
    os.fsync(part.fileno())


def merge(names: list[str], records: dict[str, dict], output: Path) -> dict:
    """Write the COCO file of ``names`` (sorted) from their records; returns counts."""
    images, annotations, skipped = [], [], 0
    missing = [n for n in names if n not in records]
    if missing:
        raise ValueError(
            f"{len(missing)} images have no record in the parts (a process did not finish), "
            f"e.g. {missing[:3]}; run again with --resume"
        )
    for i, name in enumerate(names):
        rec = records[name]
        if "skipped" in rec:
            skipped += 1
            continue
        images.append(
            {"id": i + 1, "file_name": name, "width": rec["width"], "height": rec["height"]}
        )
        for m in rec["masks"]:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **m})
    coco = dataset(images, annotations, "MaskCut pseudo-masks (diffeig)")
    atomic_write(output, lambda f: f.write(json.dumps(coco).encode()))
    return {"images": len(images), "masks": len(annotations), "skipped": skipped}


# ------------------------------------------------------------------------------- the work


class _Batches(torch.utils.data.Dataset):
    """Batches of images read in the loader's workers: per image ``(index, tensor,
    resized PIL image, (width, height))`` or ``(index, None, why, None)``."""

    def __init__(self, files, batches, side):
        self.files, self.batches, self.side = files, batches, side

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, j):
        from PIL import Image

        from diffeig.dncut.images import UnreadableImage, read_image

        out = []
        for i in self.batches[j]:
            try:
                im = read_image(self.files[i])
            except UnreadableImage as err:
                out.append((i, None, str(err), None))
                continue
            shown = im.resize((self.side, self.side), Image.LANCZOS)
            out.append((i, to_tensor(shown), shown, im.size))
        return out


def side_of(image_size: int, patch: int) -> int:
    """The resized side: ``image_size`` rounded to the nearest multiple of the patch
    (CutLER's ``resize_pil``), at least one patch."""
    return max(patch, round(image_size / patch) * patch)


def to_image(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A mask at the resized square brought to the image's ``size = (width, height)``
    as CutLER does: 8-bit, resized (Pillow's default filter), over half-way is foreground."""
    from PIL import Image

    im = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.BICUBIC)
    return np.asarray(im) > 127


def image_masks(args, cut, b, shown, size, features, patch) -> list[dict]:
    """The annotations of image ``b`` of a :class:`~diffeig.dncut.eval.maskcut.MaskCut`."""
    from scipy import ndimage

    out = []
    for mask, value in zip(cut.masks[b], cut.eigenvalues[b]):
        if not mask.any():
            continue
        up = mask.numpy().repeat(patch, 0).repeat(patch, 1)  # nearest, as CutLER
        if args.refine == "pixel-ncut":
            prior = postprocess.upsample(mask, up.shape)
            refined = pixel_ncut.refine(shown, prior, features, **pixel_ncut.options(args)).mask
            refined = ndimage.binary_fill_holes(refined.numpy())  # as CutLER after its CRF
            if mc.iou(refined, up) < MIN_REFINED_IOU:
                continue
            up = refined
        full = to_image(up, size)
        if full.any():
            score = round(max(0.0, 1.0 - float(value)), SCORE_DIGITS)
            out.append(instance(full, score=score))
    return out


def cut_batch(args, backbone, items, patch):
    """Records of one batch's readable items; an image whose cut fails is skipped alone."""
    x = torch.stack([t for _, t, _, _ in items]).to(args.device)
    with torch.no_grad():
        feats = backbone(x).float()  # (B, C, h, w)
    h, w = feats.shape[-2:]
    tokens = feats.flatten(2).transpose(1, 2)
    method = None if args.solver == "auto" else args.solver
    kwargs = dict(max_objects=args.max_objects, tau=args.tau, method=method)
    try:
        cuts = [(mc.maskcut(tokens, (h, w), **kwargs), range(len(items)))]
    except (ValueError, RuntimeError):  # one bad image: cut them one at a time
        cuts = []
        for b in range(len(items)):
            try:
                cuts.append((mc.maskcut(tokens[b : b + 1], (h, w), **kwargs), [b]))
            except (ValueError, RuntimeError) as err:
                yield items[b][0], {"skipped": f"the cut failed: {err}"}
    for cut, members in cuts:
        for j, b in enumerate(members):
            i, _, shown, size = items[b]
            masks = image_masks(args, cut, j, shown, size, feats[b].cpu(), patch)
            yield i, {"width": size[0], "height": size[1], "masks": masks}


def _world():
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", timeout=timedelta(hours=BARRIER_HOURS))
    return rank, world


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _check(args, patch: int) -> None:
    from diffeig.dncut.config import check_number

    check_number("max_objects", args.max_objects, integer=True, lo=1, hi=64)
    check_number("tau", args.tau, lo=-1, hi=1)
    check_number("image_size", args.image_size, integer=True, lo=2 * patch, hi=4096)
    check_number("batch_size", args.batch_size, integer=True, lo=1)
    check_number("workers", args.workers, integer=True, lo=0)
    n = (side_of(args.image_size, patch) // patch) ** 2
    need = BYTES_PER_PAIR * n * n * args.batch_size
    if need > memory_limit():
        raise ValueError(
            f"--batch-size {args.batch_size} at --image-size {args.image_size} (patch {patch}: "
            f"{n} tokens) needs about {need / 2**30:.1f} GiB for its cuts, more than half of "
            "this machine's memory; pass a smaller --batch-size"
        )


def run(args) -> int:
    rank, world = _world()
    if args.device == "cuda" and world > 1:
        args.device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    backbone = load_backbone(args)
    patch = backbone.patch_size
    _check(args, patch)
    root = Path(args.root)
    from diffeig.dncut.images import list_images

    files = list_images(root, "--root")
    names = [Path(f).relative_to(root).as_posix() for f in files]
    output = Path(args.output)
    if output.suffix.lower() != ".json":
        raise ValueError(f"--output {output}: the annotations are JSON; give a name ending .json")
    parts = output.with_name(output.name + PARTS)
    inputs = [(f, "an input image") for f in files] + [(args.weights, "the --weights file")]
    check_output(output, inputs, flag="--output", force=args.force or args.resume)
    if parts.exists() and not (args.resume or args.force):
        raise ValueError(
            f"{parts} holds work of an earlier run: pass --resume to continue it or --force "
            "to start afresh"
        )
    _barrier(world)  # every process has checked before process 0 makes the folder
    if rank == 0:
        if args.force and not args.resume and parts.exists():
            for old in parts.glob("part-*.jsonl"):
                old.unlink()
        parts.mkdir(parents=True, exist_ok=True)
    _barrier(world)
    done = read_parts(parts) if args.resume else {}
    side = side_of(args.image_size, patch)
    batches = [
        [i for i in range(j, min(j + args.batch_size, len(files))) if names[i] not in done]
        for j in range(0, len(files), args.batch_size)
    ]
    mine = [b for j, b in enumerate(batches) if j % world == rank and b]
    t0 = time.perf_counter()
    _work(args, backbone, files, names, mine, side, patch, parts, rank, world)
    _barrier(world)
    if rank != 0:
        return 0
    counts = merge(names, read_parts(parts), output)
    seconds = time.perf_counter() - t0
    new = sum(len(b) for b in batches)
    rate = new / seconds if seconds > 0 else float("inf")
    print(
        f"pseudo-masks: {counts['images']} images, {counts['masks']} masks "
        f"({counts['masks'] / max(1, counts['images']):.2f} per image), "
        f"{counts['skipped']} skipped; {new} cut in this run in {seconds:.1f} s "
        f"({rate:.2f} images/s over {world} process{'es' if world > 1 else ''}) -> {output}"
    )
    return 0


def _work(args, backbone, files, names, mine, side, patch, parts, rank, world) -> None:
    from tqdm import tqdm

    loader = torch.utils.data.DataLoader(
        _Batches(files, mine, side), batch_size=None, num_workers=args.workers
    )
    desc = "pseudo-masks" + (f" (process 0 of {world})" if world > 1 else "")
    with (
        open_part(parts, rank) as part,
        tqdm(
            total=sum(map(len, mine)), desc=desc, unit="img", disable=args.quiet or rank != 0
        ) as bar,
    ):
        for batch in loader:
            readable = [item for item in batch if item[1] is not None]
            for i, tensor, why, _ in batch:
                if tensor is None:
                    append(part, {"file": names[i], "skipped": why})
                    bar.write(f"warning: skipped {names[i]}: {why}", file=sys.stderr)
            if readable:
                for i, record in cut_batch(args, backbone, readable, patch):
                    append(part, {"file": names[i], **record})
            bar.update(len(batch))
