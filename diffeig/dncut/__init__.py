"""DNCut: fine-tune a ViT with differentiable normalized cuts (Liu & Gould, ECCV 2024).

The recipe and its evaluation, run as ``python -m diffeig.dncut {train,export,
eval-saliency,eval-discovery,visualize}``. Needs the ``[dncut]`` extra (timm,
torchvision, pillow, tqdm, pyyaml). ``import diffeig`` never imports this package.

Modules: :mod:`~diffeig.dncut.backbone` (ViT keys, checkpoint loading, the ``color`` and
``random`` backbones), :mod:`~diffeig.dncut.data` (two-view crops, image folders, the
synthetic generator), :mod:`~diffeig.dncut.model` (heads, alignment, NCut masks),
:mod:`~diffeig.dncut.losses`, :mod:`~diffeig.dncut.train`, :mod:`~diffeig.dncut.evaluate`.
"""
