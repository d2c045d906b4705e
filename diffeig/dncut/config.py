"""The recipe's options: defaults as the paper and the authors' code, YAML configs, flags."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path


@dataclass
class TrainConfig:
    # data
    data: str | None = None  # folder / file list / "synthetic:N"
    image_size: int = 224
    crop_scale: list = field(default_factory=lambda: [0.2, 1.0])
    min_overlap: float = 0.01
    synthetic_size: int = 224
    workers: int = 4
    # backbone and heads
    arch: str = "vit_small_patch16"
    weights: str | None = None
    proj_hidden: int | None = None  # default: the backbone's width
    proj_dim: int = 256
    # NCut masks and objective
    tau: float = 0.0
    eps: float = 1e-6
    laplacian: str = "unnormalized"
    solve_dtype: str = "float64"
    temperature: float = 0.05
    sign: str = "sum"
    solver: str = "auto"
    renormalize: bool = False  # ours: cosine affinity of the aligned features
    joint_bn: bool = False  # ours: both views through the heads as one batch
    alpha: float = 0.05
    iou_threshold: float = 0.5
    min_kept: int = 20
    threshold_step: float = 0.05
    # optimization
    batch_size: int = 256  # global, over all processes
    base_lr: float = 5e-4  # scaled by batch_size / 256
    min_lr: float = 1e-6
    weight_decay: float = 5e-4
    momentum: float = 0.9
    trust_coeff: float = 0.001
    warmup_epochs: float = 1.0
    epochs: int = 10  # scheduled (cosine length)
    stop_epoch: int | None = None  # stop early, e.g. 2 (the paper evaluates epochs 1-2)
    max_steps: int | None = None  # stop after this many steps in total (smoke runs)
    # run
    output: str = "runs/dncut"
    device: str = "auto"
    bf16: bool = False  # CUDA only: bf16 autocast for the backbone (the authors: float32)
    seed: int = 0
    log_every: int = 10
    vis_every: int = 500
    tensorboard: bool = False
    save_epochs: bool = True  # also keep epochN.pth at the end of each epoch

    def validate(self) -> None:
        """Raise ``ValueError`` naming the flag of the first option that is out of range."""
        if not self.data:
            raise ValueError("--data is required (a folder, a file list, or synthetic:N)")
        check_data(self.data)
        check_choice("laplacian", self.laplacian, ("unnormalized", "ncut"))
        check_choice("solve_dtype", self.solve_dtype, ("float32", "float64"))
        check_choice("sign", self.sign, ("sum", "max"))
        check_choice("solver", self.solver, ("dense", "lobpcg", "auto"))
        check_device(self.device)
        for name, kwargs in NUMERIC_OPTIONS.items():
            check_number(name, getattr(self, name), **kwargs)
        if not isinstance(self.crop_scale, (list, tuple)) or len(self.crop_scale) != 2:
            raise ValueError(f"--crop-scale must be two numbers lo <= hi, got {self.crop_scale}")
        for v in self.crop_scale:
            check_number("crop_scale", v, lo=0, hi=1, lo_open=True)
        if not self.crop_scale[0] <= self.crop_scale[1]:
            raise ValueError(f"--crop-scale must be two numbers lo <= hi, got {self.crop_scale}")
        if self.arch == "color":
            raise ValueError(
                "--arch color has no parameters to train; it is an evaluation baseline"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Every numeric option of `train`, checked in one place: finite, of its type, in range.
NUMERIC_OPTIONS: dict[str, dict] = {
    # at least 2 x 2 patches of 16 px; at most 2048 px (16,384 tokens, a 2 GB dense graph)
    "image_size": dict(integer=True, lo=32, hi=2048),
    "min_overlap": dict(lo=0, hi=1),
    "synthetic_size": dict(integer=True, lo=32, hi=4096),
    "workers": dict(integer=True, lo=0),
    "proj_hidden": dict(integer=True, lo=1, optional=True),
    "proj_dim": dict(integer=True, lo=1),
    "tau": dict(lo=-1, hi=1),
    "eps": dict(lo=0),
    "temperature": dict(lo=0, lo_open=True),
    "alpha": dict(),
    "iou_threshold": dict(lo=0, hi=1),
    "min_kept": dict(integer=True, lo=1),
    "threshold_step": dict(lo=1e-4, hi=1),
    "batch_size": dict(integer=True, lo=1),
    "base_lr": dict(lo=0, lo_open=True),
    "min_lr": dict(lo=0),
    "weight_decay": dict(lo=0),
    "momentum": dict(lo=0, hi=1),
    "trust_coeff": dict(lo=0, lo_open=True),
    "warmup_epochs": dict(lo=0),
    "epochs": dict(integer=True, lo=1),
    "stop_epoch": dict(integer=True, lo=1, optional=True),
    "max_steps": dict(integer=True, lo=1, optional=True),
    "seed": dict(integer=True, lo=0),
    "log_every": dict(integer=True, lo=1),
    "vis_every": dict(integer=True, lo=1),
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_number(
    name: str,
    value,
    *,
    integer: bool = False,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    optional: bool = False,
) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number (an int if ``integer``) in
    ``[lo, hi]`` (``(lo, hi]`` if ``lo_open``); ``None`` passes when ``optional``. The
    error names the command-line flag of ``name``."""
    if value is None and optional:
        return
    kind = "an integer" if integer else "a finite number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        raise ValueError(f"{flag(name)} must be {kind}, got {value!r}")
    low_ok = lo is None or (value > lo if lo_open else value >= lo)
    if not (low_ok and (hi is None or value <= hi)):
        left = "(" if lo_open else "["
        rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ValueError(f"{flag(name)} must be in {rng}, got {value!r}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{flag(name)} must be one of {', '.join(choices)}, got {value!r}")


def synthetic_count(spec: str) -> int | None:
    """N of a ``--data synthetic:N`` (exactly that form, N > 0), or ``None`` for a path."""
    spec = str(spec)
    if not spec.startswith("synthetic"):
        return None
    if not re.fullmatch(r"synthetic:\d+", spec) or int(spec.partition(":")[2]) <= 0:
        raise ValueError(
            f"--data synthetic:N needs an integer N > 0 (e.g. synthetic:1024), got {spec!r}"
        )
    return int(spec.partition(":")[2])


def check_data(spec: str) -> None:
    """``--data``: an existing folder or file list, or exactly ``synthetic:N`` (N > 0)."""
    if synthetic_count(spec) is None and not Path(spec).exists():
        raise FileNotFoundError(f"--data: no such folder or file list: {spec}")


def check_device(device: str) -> None:
    """``--device``: auto, cpu, cuda or cuda:N (and what else torch names)."""
    if device == "auto":
        return
    import torch

    try:
        torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}") from None


def builtin_configs() -> list[str]:
    return sorted(
        p.name[:-5]
        for p in resources.files("diffeig.dncut.configs").iterdir()
        if p.name.endswith(".yaml")
    )


def load_yaml(name_or_path: str) -> dict:
    """A config by path, or a packaged one by name (``vit_s16``, ``configs/vit_s16.yaml``)."""
    import yaml

    path = Path(name_or_path)
    if not path.is_file():
        stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
        packaged = resources.files("diffeig.dncut.configs") / f"{stem}.yaml"
        if not packaged.is_file():
            raise FileNotFoundError(
                f"--config: no file {name_or_path} and no packaged config {stem!r} "
                f"(packaged: {', '.join(builtin_configs())})"
            )
        text = packaged.read_text()
    else:
        text = path.read_text()
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"--config {name_or_path}: not valid YAML: {what}{where}") from None
    if not isinstance(values, dict):
        raise ValueError(
            f"--config {name_or_path}: must be a YAML mapping of options, got "
            f"{type(values).__name__}"
        )
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key in map(str, values):
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"--config {name_or_path}: unknown option {key!r}{hint}")
    for name, value in values.items():
        # YAML reads 1e-3 (no dot) as a string: take numbers written that way as numbers.
        if isinstance(value, str) and name in NUMERIC_OPTIONS:
            try:
                values[name] = int(value) if NUMERIC_OPTIONS[name].get("integer") else float(value)
            except ValueError:
                pass  # validate() names it
    for name, value in values.items():
        check_type(name, value, fields[name].type, f"--config {name_or_path}: ")
    return values


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,)}


def check_type(name: str, value, annotation: str, where: str = "") -> None:
    """``value`` of a YAML config must have the option's type (``TrainConfig``'s
    annotation, e.g. ``'int | None'``); numbers that are out of range are validate()'s."""
    names = [a.strip() for a in str(annotation).split("|")]
    if value is None and "None" in names:
        return
    allowed = tuple(t for a in names for t in _TYPES.get(a, ()))
    if not allowed:
        return
    if isinstance(value, bool) and bool not in allowed:
        ok = False
    else:
        ok = isinstance(value, allowed)
    if not ok:
        words = {"int": "an integer", "float": "a number", "bool": "true or false"}
        words.update({"str": "a string", "list": "a list", "None": "null"})
        want = " or ".join(words.get(n, n) for n in names)
        raise ValueError(f"{where}{name} must be {want}, got {value!r} ({type(value).__name__})")


def resolve(config: str | None, overrides: dict, base: dict | None = None) -> TrainConfig:
    """Defaults < YAML < ``base`` (a resumed run's saved config) < explicit flags."""
    values = load_yaml(config) if config else {}
    values.update(base or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg
