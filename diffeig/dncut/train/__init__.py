"""The training room: the DNCut model (heads, alignment, NCut masks), its losses, LARS,
two-view data, the loop (:mod:`~diffeig.dncut.train.loop`: torchrun, checkpoints) and
the training state on disk (:mod:`~diffeig.dncut.train.resume`: exact resume, export).

``from diffeig.dncut.train import train, export`` keeps working: the loop's public names
are re-exported here.
"""

from diffeig.dncut.train.loop import (
    NonFiniteLoss,
    build_model,
    build_optimizer,
    freeze_unused,
    lr_schedule,
    save_visual,
    train,
)
from diffeig.dncut.train.resume import export, training_checkpoint

__all__ = [
    "NonFiniteLoss",
    "build_model",
    "build_optimizer",
    "export",
    "freeze_unused",
    "lr_schedule",
    "save_visual",
    "train",
    "training_checkpoint",
]
