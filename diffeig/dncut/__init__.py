"""DNCut: fine-tune a ViT with differentiable normalized cuts (Liu & Gould, ECCV 2024).

The recipe and its evaluation, run as ``python -m diffeig.dncut {train,export,
eval-saliency,eval-discovery,visualize,pseudo-masks,eval-instances}``;
:func:`maskcut` (``diffeig.dncut.maskcut``, torch and scipy only) is MaskCut's many
objects per image (docs/pseudo-masks.md). Needs the ``[dncut]`` extra (timm,
torchvision, pillow, tqdm, pyyaml). ``import diffeig`` never imports this package.

Rooms (``docs/design.md``): :mod:`~diffeig.dncut.train` (model, losses, LARS, two-view
data, the loop) and :mod:`~diffeig.dncut.eval` (datasets, metrics, post-processing,
features, the benchmark commands, figures). What both use sits here:
:mod:`~diffeig.dncut.backbone` (ViT keys, checkpoint loading, the ``color`` and ``random``
backbones), :mod:`~diffeig.dncut.config`, :mod:`~diffeig.dncut.checkpoint`,
:mod:`~diffeig.dncut.images`, :mod:`~diffeig.dncut.figures`, and the command line
:mod:`~diffeig.dncut.cli`.
"""


def __getattr__(name: str):
    # diffeig.dncut.maskcut without importing the recipe's modules (torch and scipy only)
    if name in ("maskcut", "MaskCut"):
        from diffeig.dncut.eval import maskcut as module

        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
