"""The recipe's options: defaults as the paper and the authors' code, YAML configs, flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path


@dataclass
class TrainConfig:
    # data
    data: str | None = None  # folder / file list / "synthetic:N"
    image_size: int = 224
    crop_scale: list = field(default_factory=lambda: [0.2, 1.0])
    min_overlap: float = 0.05
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
    bf16: bool = True  # CUDA only: bf16 autocast for the backbone
    seed: int = 0
    log_every: int = 10
    vis_every: int = 500
    tensorboard: bool = False

    def validate(self) -> None:
        if not self.data:
            raise ValueError("--data is required (a folder, a file list, or synthetic:N)")
        if self.laplacian not in ("unnormalized", "ncut"):
            raise ValueError(
                f"--laplacian must be 'unnormalized' or 'ncut', got {self.laplacian!r}"
            )
        if self.solve_dtype not in ("float32", "float64"):
            raise ValueError(f"--solve-dtype must be float32 or float64, got {self.solve_dtype!r}")
        if self.sign not in ("sum", "max"):
            raise ValueError(f"--sign must be 'sum' or 'max', got {self.sign!r}")
        for name in ("batch_size", "epochs", "image_size", "log_every", "vis_every"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}"
                )
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be positive, got {self.temperature}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(
                f"--crop-scale must be two numbers 0 < lo <= hi <= 1, got {self.crop_scale}"
            )
        if self.arch == "color":
            raise ValueError(
                "--arch color has no parameters to train; it is an evaluation baseline"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
    values = yaml.safe_load(text) or {}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"--config {name_or_path}: unknown options {unknown}")
    return values


def resolve(config: str | None, overrides: dict, base: dict | None = None) -> TrainConfig:
    """Defaults < YAML < ``base`` (a resumed run's saved config) < explicit flags."""
    values = load_yaml(config) if config else {}
    values.update(base or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg
