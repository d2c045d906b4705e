"""Checkpoints that are written atomically, loaded safely and checked for corruption.

Every checkpoint the recipe writes (``last.pth``, ``epochN.pth``, exported backbones) is a
dict of tensors and plain Python values (the config is stored as plain types), so it
loads with ``torch.load(weights_only=True)``: a file that holds any other object (a pickle
with a code payload) is refused instead of executed. Each one records a SHA-256 of its
tensors under ``"checksum"``; a file whose tensors no longer match is refused.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

__all__ = [
    "atomic_save",
    "atomic_write",
    "check_output",
    "load_checkpoint",
    "tensor_checksum",
    "CHECKSUM_KEY",
]

CHECKSUM_KEY = "checksum"


def _tensors(obj, prefix: str = ""):
    """``(path, tensor)`` of every tensor in nested dicts / lists, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            if prefix == "" and key == CHECKSUM_KEY:
                continue
            yield from _tensors(obj[key], f"{prefix}/{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}/{i}")


def tensor_checksum(state) -> str:
    """SHA-256 over every tensor's path, dtype, shape and bytes (hex)."""
    h = hashlib.sha256()
    for path, t in _tensors(state):
        t = t.detach().cpu().contiguous()
        h.update(f"{path}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """``write(f)`` into a temporary file beside ``path``, fsync, then rename it over
    ``path``: ``path`` is always either the old file or the whole new one. The temporary
    file is removed if writing fails or is interrupted. Returns the path written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt and SystemExit too: never leave a .tmp
        tmp.unlink(missing_ok=True)
        raise
    return path


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (through links too); a missing path is no file."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(
    path: str | os.PathLike, inputs, *, flag: str, force: bool, what: str = "the input"
) -> Path:
    """Refuse to write ``path`` where it is one of ``inputs`` (dataset files, images,
    masks, weights: the same file also through a symbolic or hard link), even with
    ``force``; refuse an existing ``path`` unless ``force``. ``inputs``: paths, or
    ``(path, description)`` pairs. Raises ``ValueError`` naming ``flag``."""
    path = Path(path)
    for item in inputs:
        inp, desc = item if isinstance(item, tuple) else (item, what)
        if inp is not None and _same_file(path, Path(inp)):
            raise ValueError(
                f"{flag} {path} is {desc} {inp}; writing there would destroy it. Give another file"
            )
    if path.exists() and not force:
        raise ValueError(f"{flag} {path} exists; pass --force to replace it, or give another file")
    return path


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries (``.<name>.tmp<pid>``) that :func:`atomic_write` leaves only
    when its process was killed mid-write (SIGKILL, power loss). Returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(".*.tmp*") if re.fullmatch(r"\..+\.tmp\d+", p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_save(state: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` of ``state`` with its checksum to ``path``, atomically
    (:func:`atomic_write`). Returns the path written."""
    if Path(path).is_dir():
        raise ValueError(f"{path} is a directory: give a file name to write the checkpoint to")
    state = dict(state)
    state[CHECKSUM_KEY] = tensor_checksum(state)
    return atomic_write(path, lambda f: torch.save(state, f))


# The first bytes of what torch.save writes: a zip archive (the default since torch 1.6),
# or a legacy pickle (protocol 2+ opens with 0x80), and of what users mistake for one.
_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")
_OTHER_FORMATS = {
    b"\xff\xd8\xff": "a JPEG image",
    b"\x89PNG": "a PNG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF",
    b"\x93NUMPY": "a NumPy .npy array",
    b"\x89HDF": "an HDF5 file",
}


def check_checkpoint_format(path: Path, what: str) -> None:
    """Refuse a file that is not a ``torch.save`` file before unpickling anything."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_CHECKPOINT_MAGIC):
        return
    kind = next((k for m, k in _OTHER_FORMATS.items() if head.startswith(m)), None)
    if kind is None and head[:1] == b"{":
        kind = "a JSON or text file"
    raise ValueError(
        f"{what} {path} is not a PyTorch checkpoint (a file written by torch.save)"
        + (f": it is {kind}" if kind else "")
    )


def load_checkpoint(path: str | os.PathLike, *, what: str = "checkpoint") -> dict:
    """Load a checkpoint with ``weights_only=True`` and verify its checksum if it has one.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is
    not a readable checkpoint (truncated, corrupt, holding objects other than tensors and
    plain values, or whose tensors do not match the recorded checksum). ``what`` names
    the file's role in the messages (e.g. ``"--resume"``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file: {path}")
    check_checkpoint_format(path, what)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL [\w.]+", str(err))
        detail = f" ({found.group(0)})" if found else ""
        raise ValueError(
            f"{what} {path}: refused to load: the file holds objects other than tensors and "
            f"plain Python values{detail}, which could run code when unpickled; diffeig "
            "loads checkpoints with torch.load(weights_only=True)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        raise ValueError(
            f"{what} {path}: not a readable checkpoint (truncated or corrupt?): "
            f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
        ) from None
    if isinstance(state, dict) and CHECKSUM_KEY in state:
        if tensor_checksum(state) != state[CHECKSUM_KEY]:
            raise ValueError(
                f"{what} {path}: corrupt: its tensors do not match the checksum recorded "
                "when it was written"
            )
    return state
