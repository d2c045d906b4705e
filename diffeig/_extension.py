"""Loading the native extension ``diffeig._C``.

Importing ``diffeig._C`` registers the ``torch.ops.diffeig`` operators (schemas in
``csrc/diffeig.cpp``, CPU and CUDA kernels beside it). A missing or broken build never
makes ``import diffeig`` fail: every operator then runs its pure-PyTorch twin from
``diffeig/_reference.py``, which gives the same numbers, only slower.

Set ``DIFFEIG_NO_EXT=1`` to ignore a built extension (the reference path alone), or
``DIFFEIG_DISABLE_CUDA_KERNELS=1`` to keep the CPU kernels and route every operator on a
CUDA tensor to its pure-PyTorch twin (a one-line way out of a CUDA kernel bug).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings

import torch

__all__ = ["has_ops", "has_cuda_kernels", "load_error", "use_native", "native_for"]

_LOAD_ERROR: str | None = None
_LOADED = False
_FORCE_REFERENCE = False
CUDA_KERNELS_DISABLED = os.environ.get("DIFFEIG_DISABLE_CUDA_KERNELS", "0") == "1"


def _load() -> None:
    global _LOADED, _LOAD_ERROR
    if os.environ.get("DIFFEIG_NO_EXT", "0") == "1":
        _LOAD_ERROR = "disabled by DIFFEIG_NO_EXT=1"
        return
    if importlib.util.find_spec("diffeig._C") is None:
        _LOAD_ERROR = "diffeig._C was not built (e.g. installed with DIFFEIG_SKIP_EXT=1)"
        warnings.warn(
            "diffeig: the native extension was not built; the pure-PyTorch reference path "
            "runs (same results, slower). Build it with `make ext` or "
            "`pip install --no-build-isolation -e .`.",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    _check_torch_version()
    try:
        from diffeig import _C  # noqa: F401  (importing registers the ops)
    except (ImportError, OSError) as exc:
        _LOAD_ERROR = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            "diffeig: the native extension diffeig._C could not be loaded "
            f"({_LOAD_ERROR}); using the pure-PyTorch reference kernels, which give the "
            "same results more slowly. Rebuild with `make ext` or "
            "`pip install --no-build-isolation -e .`.",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    _LOADED = hasattr(torch.ops.diffeig, "eigh_backward_core")
    if not _LOADED:
        _LOAD_ERROR = "diffeig._C imported but registered no operators"


def _check_torch_version() -> None:
    """Warn once when the torch in use is not the one diffeig._C was compiled against."""
    try:
        from diffeig._build_info import TORCH_VERSION
    except ImportError:
        return
    if TORCH_VERSION.split("+")[0] != torch.__version__.split("+")[0]:
        warnings.warn(
            f"diffeig: the native extension was compiled against torch {TORCH_VERSION} but "
            f"torch {torch.__version__} is loaded; operators may fail to load or misbehave. "
            "Reinstall diffeig for this torch (or the torch it was built for).",
            RuntimeWarning,
            stacklevel=4,
        )


def has_ops() -> bool:
    """Whether the native kernels of ``diffeig._C`` are loaded and in use.

    Returns:
        ``True`` when the compiled operators are registered (and not switched off by
        :func:`use_native`), ``False`` when diffeig runs its pure-PyTorch reference path.
    """
    return _LOADED and not _FORCE_REFERENCE


def has_cuda_kernels() -> bool:
    """Whether ``diffeig._C`` was compiled with its CUDA kernels (they are not used when
    ``DIFFEIG_DISABLE_CUDA_KERNELS=1``; see :func:`native_for`)."""
    return _LOADED and torch._C._dispatch_has_kernel_for_dispatch_key(
        "diffeig::eigh_backward_core", "CUDA"
    )


def native_for(device: torch.device) -> bool:
    """Whether an operator on ``device`` runs its native kernel (else its reference twin):
    the extension is loaded and in use, and CUDA kernels are not switched off for CUDA."""
    if not has_ops():
        return False
    return not (device.type == "cuda" and CUDA_KERNELS_DISABLED)


def load_error() -> str | None:
    """Why the native extension is not in use, or ``None`` when it is loaded."""
    return _LOAD_ERROR


@contextlib.contextmanager
def use_native(enabled: bool):
    """Switch the native kernels off (``False``) or back on inside a ``with`` block.

    Used by the tests to run the reference path beside the native one. Under
    ``torch.compile`` the choice is fixed when a function is traced.
    """
    global _FORCE_REFERENCE
    previous = _FORCE_REFERENCE
    _FORCE_REFERENCE = not enabled
    try:
        yield
    finally:
        _FORCE_REFERENCE = previous


_load()
