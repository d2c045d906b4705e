"""The training room: the DNCut model (heads, alignment, NCut masks), its losses, LARS,
two-view data, and the loop (:mod:`~diffeig.dncut.train.loop`: torchrun, exact resume,
checkpoints, export).

``from diffeig.dncut.train import train, export`` keeps working: the loop's public names
are re-exported here.
"""

from diffeig.dncut.train.loop import (
    NonFiniteLoss,
    build_model,
    build_optimizer,
    export,
    freeze_unused,
    lr_schedule,
    save_visual,
    train,
    training_checkpoint,
)

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
