"""The checks of a sparse affinity: its layout, its entries (duplicates, order, a
symmetric pattern), its values, what it may be combined with, and whether its solve fits
in memory. The sparse path's part of the floor of checks (:mod:`diffeig._checks`)."""

from __future__ import annotations

import torch

from diffeig import _extension, _reference
from diffeig._checks import FLOAT_DTYPES

__all__ = [
    "COMPRESSED_LAYOUTS",
    "SPARSE_BYTES_PER_ENTRY",
    "SPARSE_BYTES_PER_NODE_PAIR",
    "SPARSE_LAYOUTS",
    "check_fits",
    "check_info_for_sparse",
    "check_sparse_entries",
    "check_sparse_layout",
    "check_sparse_method",
    "check_sparse_values",
    "is_sparse",
    "physical_memory",
    "sparse_mirror_stats",
]


SPARSE_LAYOUTS = (torch.sparse_coo, torch.sparse_csr)


# Other sparse layouts, converted to COO by the solver.
COMPRESSED_LAYOUTS = (torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc)


def is_sparse(W) -> bool:
    return isinstance(W, torch.Tensor) and W.layout in SPARSE_LAYOUTS + COMPRESSED_LAYOUTS


def check_sparse_layout(W: torch.Tensor) -> None:
    """A sparse affinity: COO ``(N, N)`` or ``(B, N, N)``, or CSR ``(N, N)``; float;
    no dense dimensions."""
    shape = tuple(W.shape)
    if W.dim() not in (2, 3) or shape[-1] != shape[-2]:
        raise ValueError(
            f"a sparse W must be (N, N), or (B, N, N) for a batch of graphs, got shape {shape}"
        )
    if W.layout == torch.sparse_csr and W.dim() != 2:
        raise ValueError(
            "a batch of sparse graphs must be a 3-D sparse COO tensor (B, N, N); got a 3-D "
            "sparse CSR tensor: convert it with W.to_sparse_coo()"
        )
    if W.dense_dim() != 0:
        raise ValueError(f"a sparse W must hold scalar values, got {W.dense_dim()} dense dim(s)")
    if W.dtype not in FLOAT_DTYPES:
        raise ValueError(f"W must have dtype float32, float64; got {W.dtype}")
    if shape[-1] == 0:
        raise ValueError(f"W must have at least one node, got shape {shape}")


def check_sparse_entries(duplicates: int, order_ok: bool) -> None:
    if duplicates:
        raise ValueError(
            f"W holds {duplicates} duplicate (uncoalesced) entr{'y' if duplicates == 1 else 'ies'}:"
            " an entry stored twice is ambiguous; sum the duplicates with W.coalesce() or "
            "remove them"
        )
    if not order_ok:
        raise ValueError(
            "W (sparse CSR) must have sorted, unique column indices in each row: convert it "
            "with W.to_sparse_coo().coalesce()"
        )


def sparse_mirror_stats(crow, col, values) -> tuple[int, float]:
    """``(missing, max |v_ij - v_ji|)`` of a CSR pattern: ``diffeig::sparse_mirror_stats``
    on CPU (one pass, no sort), its pure-PyTorch twin elsewhere (a sort of the columns)."""
    if _extension.native_for(values.device) and values.device.type == "cpu":
        out = torch.ops.diffeig.sparse_mirror_stats(crow, col, values.detach())
    else:
        out = _reference.sparse_mirror_stats(crow, col, values.detach())
    missing, asym = out.tolist()
    return int(missing), asym


def check_sparse_values(values: torch.Tensor, missing: int, asym: float) -> float:
    """Finite, non-negative values on a symmetric pattern, symmetric to ``sqrt(eps)`` of
    ``max W``; returns ``max W`` (0 without entries)."""
    if values.numel() and not bool(torch.isfinite(values).all()):
        bad = int((~torch.isfinite(values)).sum())
        raise ValueError(f"W must be finite, got {bad} NaN or inf stored value(s)")
    lo = float(values.min()) if values.numel() else 0.0
    hi = float(values.max()) if values.numel() else 0.0
    if lo < 0:
        raise ValueError(f"W must be non-negative, got a minimum stored value of {lo:.3g}")
    if missing:
        raise ValueError(
            f"W's sparsity pattern must be symmetric: {missing} stored entr"
            f"{'y' if missing == 1 else 'ies'} (i, j) without (j, i); symmetrize it, e.g. "
            "(W + W.transpose(-2, -1)).coalesce() / 2"
        )
    tol = torch.finfo(values.dtype).eps ** 0.5 * max(hi, torch.finfo(values.dtype).tiny)
    if asym > tol:
        raise ValueError(
            f"W must be symmetric: max |W_ij - W_ji| = {asym:.3g} over the stored entries "
            f"exceeds {tol:.3g}; symmetrize it, e.g. (W + W.transpose(-2, -1)).coalesce() / 2"
        )
    return hi


def check_info_for_sparse(info) -> None:
    if info is not None:
        raise ValueError(
            "info is filled by the sparse solve only (a torch sparse W); a dense W's "
            "solvers keep no statistics"
        )


def check_sparse_method(method: str) -> None:
    if method == "dense":
        raise ValueError(
            "method='dense' needs a dense W (N x N memory): pass W.to_dense(), or use "
            "method='lobpcg' or 'auto', which solve a sparse W without forming it"
        )


def physical_memory() -> int:
    """This machine's memory in bytes (8 GiB where it cannot be read)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


# Peak bytes of the sparse path per stored weight and per node and wanted pair, measured
# on pixel graphs (pixel_affinity, forward and backward: 79 bytes a weight at 896 px) and
# rounded up; used only to refuse what cannot fit, before it is allocated.
SPARSE_BYTES_PER_ENTRY = 96


SPARSE_BYTES_PER_NODE_PAIR = 256


def check_fits(need: int, what: str, remedy: str) -> None:
    """Refuse, before any allocation, work whose estimate ``need`` (bytes) exceeds this
    machine's memory, naming ``what`` it is and the ``remedy``."""
    have = physical_memory()
    if need > have:
        raise ValueError(
            f"{what} needs about {need / 2**30:.1f} GiB, more than this machine's "
            f"{have / 2**30:.1f} GiB; {remedy}"
        )
