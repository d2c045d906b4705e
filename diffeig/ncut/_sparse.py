"""The normalized cut of sparse graphs (pixel graphs of 10^4 - 10^6 nodes), batched and
differentiable w.r.t. the stored weights.

A batch of B graphs of N nodes is one block-diagonal graph of B N nodes held in CSR order:
a product with all of them is one sparse-dense product. The forward is LOBPCG with the
trivial pair deflated exactly and an aggregation multigrid preconditioner
(:mod:`diffeig.ncut._multigrid`); the backward solves the shifted systems by
preconditioned CG with the same hierarchy and assembles the gradient on the stored
entries only: ``O(nnz k)`` memory and time, never an ``N x N`` tensor.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import torch

from diffeig._checks import check_degrees, check_k, check_not_meta, check_solver_options
from diffeig._implicit.ncut import (
    assemble_at_edges,
    laplacian_operator,
    ncut_factors,
    warn_ill_conditioned,
)
from diffeig._scaling import scale2, unit_scale
from diffeig._sparse_checks import (
    COMPRESSED_LAYOUTS,
    SPARSE_BYTES_PER_ENTRY,
    SPARSE_BYTES_PER_NODE_PAIR,
    check_fits,
    check_sparse_entries,
    check_sparse_layout,
    check_sparse_values,
    sparse_mirror_stats,
)
from diffeig._threads import solve_threads
from diffeig._tolerances import SMALL_EIGENVALUE, SolverOptions, default_tol, resolved_gap_rtol
from diffeig.ncut import _common
from diffeig.ncut._islands import island_start, missed_pairs
from diffeig.ncut._lobpcg_pairs import lobpcg_ncut_pairs
from diffeig.ncut._multigrid import Multigrid, csr, edge_chunks

__all__ = ["SparseGraphs", "SparseInfo", "solve_sparse"]


@dataclasses.dataclass
class SparseInfo:
    """What one sparse solve did, filled in when passed as ``sym_eigh_ncut(..., info=)``
    (the backward's fields when the gradient is taken): products with W in columns and in
    calls (one call per LOBPCG or CG iteration, plus the first), and the multigrid
    hierarchy's level sizes and operator complexity."""

    forward_products: int = 0
    forward_calls: int = 0
    backward_products: int = 0
    backward_calls: int = 0
    levels: list[int] = dataclasses.field(default_factory=list)
    operator_complexity: float = 0.0


class SparseGraphs:
    """The pattern of a sparse ``W``, validated: the batch as one block-diagonal graph.

    ``values`` are W's stored values in CSR order, differentiable (through
    ``coalesce``/``values``, so that gradients reach a sparse leaf ``W`` as a sparse
    tensor with W's pattern, or the ``values`` a COO tensor was built from); ``row``,
    ``col`` their global indices ``b N + i`` (int64).
    """

    def __init__(self, W: torch.Tensor):
        check_sparse_layout(W)
        self.batched = W.dim() == 3
        self.B = W.shape[0] if self.batched else 1
        self.N = W.shape[-1]
        n_all = self.B * self.N
        if W.layout == torch.sparse_csr:
            crow, col = W.crow_indices(), W.col_indices()
            row = torch.repeat_interleave(
                torch.arange(self.N, device=W.device), crow[1:] - crow[:-1]
            )
            key = row * self.N + col
            dup = int((key[1:] == key[:-1]).sum()) if key.numel() > 1 else 0
            check_sparse_entries(0, dup == 0 and bool((key[1:] > key[:-1]).all()))
            values = W.values()
        else:
            if not W.is_coalesced():
                idx = W._indices()
                key = (
                    idx[0] * self.N + idx[1]
                    if not self.batched
                    else ((idx[0] * self.N + idx[1]) * self.N + idx[2])
                )
                key = key.sort().values
                check_sparse_entries(int((key[1:] == key[:-1]).sum()), True)
                W = W.coalesce()  # a sort, differentiable (no duplicates to sum)
            idx = W.indices()
            values = W.values()
            if self.batched:
                row = idx[0] * self.N + idx[1]
                col = idx[0] * self.N + idx[2]
            else:
                row, col = idx[0], idx[1]
        self.row, self.col = row.contiguous(), col.contiguous()
        self.values = values
        self.crow = torch.zeros(n_all + 1, dtype=torch.int64, device=W.device)
        self.crow[1:] = torch.bincount(self.row, minlength=n_all).cumsum(0)
        # W's pattern and values symmetric (one pass on CPU, a sort of the columns elsewhere)
        missing, asym = sparse_mirror_stats(self.crow, self.col, values)
        self.max_value = check_sparse_values(values.detach(), missing, asym if not missing else 0.0)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return (self.B,) if self.batched else ()

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """The block-diagonal ``(B N, B N)`` CSR matrix with these values."""
        return csr(self.crow, self.col, values, self.B * self.N)

    def degrees(self, values: torch.Tensor) -> torch.Tensor:
        """``(B, N)``: ``W 1`` per graph."""
        d = torch.zeros(self.B * self.N, dtype=values.dtype, device=values.device)
        return d.index_add_(0, self.row, values).reshape(self.B, self.N)


def _matmul(M, B, N, info: SparseInfo, phase: str):
    """``X -> W X`` for ``(B, N, m)`` blocks, counted in ``info``'s ``phase`` fields."""

    def apply(X):
        m = X.shape[-1]
        setattr(info, f"{phase}_products", getattr(info, f"{phase}_products") + m)
        setattr(info, f"{phase}_calls", getattr(info, f"{phase}_calls") + 1)
        return (M @ X.reshape(B * N, m)).reshape(B, N, m)

    return apply


def _edge_rayleigh(graphs, values, lam, Z, d, normalized):
    """The edge form of the Rayleigh quotient for the returned small eigenvalues
    (``diffeig.ncut._common.refine_small_eigenvalues``), over the stored entries."""
    if lam.shape[-1] < 2:
        return lam
    small = lam[..., 1:] < SMALL_EIGENVALUE * _common.ncut_spectral_bound(d, normalized).unsqueeze(
        -1
    )
    if not bool(small.any()):
        return lam
    k = Z.shape[-1]
    Zf = Z.reshape(-1, k)[:, 1:].contiguous()
    # each graph's entries are one contiguous run of the CSR order: summed run by run
    bounds = graphs.crow[:: graphs.N].tolist()
    edge = Z.new_zeros(graphs.B, k - 1)
    for b in range(graphs.B):
        for e in edge_chunks(bounds[b + 1] - bounds[b], start=bounds[b]):
            diff = Zf.index_select(0, graphs.row[e]).sub_(Zf.index_select(0, graphs.col[e]))
            edge[b] += diff.square_().mul_(values[e, None]).sum(0)
    weight = d.unsqueeze(-1) if normalized else 1.0
    Z3 = Z.reshape(graphs.B, graphs.N, k)[..., 1:]
    edge = 0.5 * edge / (Z3 * Z3 * weight).sum(-2)
    out = lam.clone()
    out[..., 1:] = torch.where(small, edge, lam[..., 1:])
    return out


def _recheck(solve, lap, graphs, v, d, normalized, lam, U, Z, islands):
    """Where the island vectors prove a skipped pair (:func:`missed_pairs`), solve again
    from the Rayleigh-Ritz vectors of both; warn where the proof still holds."""
    missed, ritz = missed_pairs(lap, U, lam, islands)
    if not bool(missed.any()):
        return lam, U, Z
    lam, U, Z = solve(start=ritz)
    lam = _edge_rayleigh(graphs, v, lam, Z, d, normalized)
    missed, _ = missed_pairs(lap, U, lam, islands)
    if bool(missed.any()):
        warnings.warn(
            f"sym_eigh_ncut: {int(missed.sum())} of {missed.numel()} sparse graph(s) fall "
            "apart into near-islands whose pairs LOBPCG did not resolve: a smaller "
            "eigenvalue than the returned ones exists (their Rayleigh-Ritz values prove it). "
            "The spectrum is not resolved there; check with shift-invert (docs/ncut.md, "
            "Limits), or add a floor to the weights",
            RuntimeWarning,
            stacklevel=5,
        )
    return lam, U, Z


def _preconditioner(mg, d, normalized):
    """``R -> T R`` with ``T ~ L^+`` for the operator LOBPCG and CG iterate on:
    ``D - W`` itself, or ``L_sym = D^-1/2 (D - W) D^-1/2`` (then ``D^1/2 mg D^1/2``)."""
    if not normalized:
        return mg
    dsq = d.sqrt().unsqueeze(-1)
    return lambda R: dsq * mg(dsq * R)


class _SparseNCut(torch.autograd.Function):
    """The k smallest NCut pairs of a batch of sparse graphs; gradient on the values."""

    @staticmethod
    def forward(ctx, values, graphs, k, normalized, sign, options, info):
        o = options
        v = values.detach()
        d = graphs.degrees(v)
        check_degrees(d, normalized=normalized, sparse=True)
        M = graphs.matrix(v)
        lap = laplacian_operator(_matmul(M, graphs.B, graphs.N, info, "forward"), d, normalized)
        ctx.lap_backward = laplacian_operator(
            _matmul(M, graphs.B, graphs.N, info, "backward"), d, normalized
        )
        mg = Multigrid(graphs.row, graphs.col, v, d, matrix=M)
        info.levels, info.operator_complexity = mg.sizes, mg.operator_complexity
        prec = _preconditioner(mg, d, normalized)
        # near-islands start the search (their pairs lie near 0, a random start misses them)
        islands = island_start(graphs, v, d, normalized, k - 1)
        start = None if islands is None else torch.cat([islands, d.unsqueeze(-1)], -1)
        # never formed densely: a pair LOBPCG does not converge is reported, not replaced
        solve = functools.partial(
            lobpcg_ncut_pairs,
            lap,
            d,
            k,
            normalized,
            sign,
            o.tol,
            o.max_iter,
            o.on_fail,
            preconditioner=prec,
            block=o.block,
            fallback=False,
        )
        lam, U, Z = solve(start=start)
        lam = _edge_rayleigh(graphs, v, lam, Z, d, normalized)
        if islands is not None and k > 1:
            lam, U, Z = _recheck(solve, lap, graphs, v, d, normalized, lam, U, Z, islands)
        ctx.M, ctx.prec = M, prec
        ctx.normalized, ctx.options = normalized, options
        ctx.save_for_backward(d, lam, U)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(U)
        return lam, Z, U

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_lam, grad_Z, _):
        if grad_lam is None and grad_Z is None:
            return (None,) * 7
        d, lam, U = ctx.saved_tensors
        warn_ill_conditioned(lam, d, ctx.normalized, ctx.options.gap_rtol)
        grad_lam = torch.zeros_like(lam) if grad_lam is None else grad_lam
        grad_Z = torch.zeros_like(U) if grad_Z is None else grad_Z
        with solve_threads(ctx.M.values().numel()):
            return _SparseNCut._backward(ctx, d, lam, U, grad_lam, grad_Z)

    @staticmethod
    def _backward(ctx, d, lam, U, grad_lam, grad_Z):
        P, c, g = ncut_factors(
            ctx.lap_backward,
            d,
            lam,
            U,
            grad_lam,
            grad_Z,
            ctx.normalized,
            ctx.options,
            preconditioner=ctx.prec,
        )
        return (assemble_at_edges(ctx.M, P, U, c, g),) + (None,) * 6


def solve_sparse(
    W,
    k,
    normalized,
    sign,
    gap_rtol,
    gap_atol,
    tol,
    max_iter,
    on_fail,
    block: int | None = None,
    info: SparseInfo | None = None,
):
    """``(eigenvalues, eigenvectors)`` of a sparse ``W`` (validated here), dense outputs
    ``(*, k)`` and ``(*, N, k)``, by preconditioned LOBPCG.

    ``block``: LOBPCG's block (default: the library's, whose guard vectors keep the
    gradients within 4e-7 of the dense path's). A forward-only caller may pass ``k``
    (the k - 1 pairs plus one guard): 12 % faster at k = 3 on pixel graphs, the same
    eigenvalues, and on small pixel graphs gradients up to 8.6e-7 off instead of 3.8e-7
    (120 graphs, k = 3 - 5, default tol)."""
    if W.layout in COMPRESSED_LAYOUTS:  # CSC, BSR, BSC: as COO (the entries, in order)
        W = W.to_sparse_coo()
    check_sparse_layout(W)
    check_not_meta(W, "the sparse NCut", hint=None)  # a sparse W has no dense way out
    k = check_k(k, W.shape[-1])
    batch = W.shape[0] if W.dim() == 3 else 1
    check_fits(
        W._nnz() * SPARSE_BYTES_PER_ENTRY
        + batch * W.shape[-1] * (k + 2) * SPARSE_BYTES_PER_NODE_PAIR,
        f"the sparse NCut of {batch} graph(s) of {W.shape[-1]} nodes, {W._nnz()} stored "
        f"weights, k = {k}",
        "solve a smaller graph (downscale the image) or fewer graphs at once",
    )
    if batch == 0:
        return W.new_zeros(0, k, dtype=W.dtype), W.new_zeros(0, W.shape[-1], k, dtype=W.dtype)
    # checks and forward on no more threads than free cores (diffeig/_threads.py)
    with solve_threads(W._nnz()):
        return _solve(
            W, k, normalized, sign, gap_rtol, gap_atol, tol, max_iter, on_fail, block, info
        )


def _solve(W, k, normalized, sign, gap_rtol, gap_atol, tol, max_iter, on_fail, block, info):
    graphs = SparseGraphs(W)
    check_solver_options(tol, max_iter, on_fail)
    gap_rtol = resolved_gap_rtol(gap_rtol, tol, W.dtype)
    tol = default_tol(W.dtype) if tol is None else tol  # W's dtype, also when upcast below
    # solved at unit scale and scaled back exactly, as the dense path (sym_eigh_ncut)
    e = unit_scale(graphs.max_value, power=4)
    values = scale2(graphs.values, -e)
    if e and not normalized:
        gap_atol = scale2(gap_atol, -e)
    # float32 W is solved in float64 (to float32's tolerance) and returned in float32:
    # float32 products on pixel graphs stall LOBPCG where l2 ~ 1e-5 (no convergence in
    # 1000 iterations at 448 px, l2 1.6e-3 off); in float64 it takes the same iterations
    # as a float64 W at that tolerance. The cost is a float64 copy of the values.
    out_dtype = values.dtype
    if out_dtype == torch.float32:
        values = values.to(torch.float64)
    lam, Z, _ = _SparseNCut.apply(
        values,
        graphs,
        k,
        normalized,
        sign,
        SolverOptions(
            tol=tol,
            max_iter=max_iter,
            on_fail=on_fail,
            gap_rtol=gap_rtol,
            gap_atol=gap_atol,
            block=block,
        ),
        SparseInfo() if info is None else info,
    )
    lam, Z = lam.to(out_dtype), Z.to(out_dtype)
    lam, Z = _common.unscaled_pairs(lam, Z, e, normalized)
    if not graphs.batched:
        lam, Z = lam[0], Z[0]
    return lam, Z
