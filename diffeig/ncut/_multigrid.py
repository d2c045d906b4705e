"""An aggregation multigrid preconditioner for graph Laplacians ``L = D - W``, in torch.

The sparse NCut's solves (LOBPCG's forward, the backward's shifted CG) converge in a number
of iterations that grows with ``sqrt(l_max / l_2)`` unpreconditioned: on pixel graphs
``l_2`` shrinks with N and ARPACK needs 40 s at 200k pixels. A multigrid V-cycle
approximates ``L^+`` at the cost of a few products with W, independently of N.

- **Aggregation** (setup, vectorized: no loop over nodes): every node points to its
  strongest neighbour (largest ``w_ij / sqrt(d_i d_j)``, ties broken by a fixed hash);
  the pointers form trees hanging off mutual pairs, and each tree, found by pointer
  jumping, is one coarse node. Pointer trees follow the heavy edges, so aggregates stay
  inside regions of similar colour. They are capped: a node more than ``MAX_DEPTH`` jumps
  from its root starts its own aggregate.
- **Coarse graphs**: piecewise-constant prolongation P, so ``P^T L P`` is the Laplacian of
  the graph whose edge weights are the summed weights between aggregates (its self-loops
  drop out): one ``coalesce`` of the mapped edge list.
- **V-cycle**: damped Jacobi sweeps before and after the coarse correction (symmetric,
  so the cycle is an SPD preconditioner for CG and LOBPCG), the coarse correction
  scaled by ``OVER_CORRECTION`` (unsmoothed aggregation's correction is too small by
  about that factor), and on the coarsest graph (at most ``COARSEST`` nodes per graph) a
  dense pseudo-inverse per graph.

A batch of graphs is one block-diagonal graph: aggregates never cross graphs (there are
no edges between them), and the coarsest level is split back per graph.
"""

from __future__ import annotations

import warnings

import torch

from diffeig._tolerances import (
    COARSEST,
    EDGE_CHUNK,
    MAX_DEPTH,
    MAX_LEVELS,
    MIN_SHRINK,
    OMEGA,
    OVER_CORRECTION,
    SWEEPS,
)

__all__ = ["Multigrid", "edge_chunks"]


def csr(crow, col, values, n):
    """An ``(n, n)`` CSR tensor from trusted indices (no invariant checks, no warning);
    int32 indices where they fit (the CPU product is 1.6x faster with them)."""
    if crow.device.type == "cpu" and max(n, col.numel()) < 2**31 - 1:
        crow, col = crow.to(torch.int32), col.to(torch.int32)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": ours to know
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, (n, n), check_invariants=False)


def _csr(row, col, val, n):
    crow = torch.zeros(n + 1, dtype=torch.int64, device=row.device)
    crow[1:] = torch.bincount(row, minlength=n).cumsum(0)
    return csr(crow, col, val, n)


class _Level:
    """One graph of the hierarchy: ``W`` (CSR, no self-loops), degrees ``d``, and the map
    ``agg`` of its nodes to the next level's (None on the coarsest)."""

    def __init__(self, row, col, val, d, owner, W=None):
        self.n = d.shape[0]
        self.W = _csr(row, col, val, self.n) if W is None else W
        self.d = d
        self.dinv = torch.where(d > 0, 1 / torch.where(d > 0, d, 1), 0).unsqueeze(-1)
        self.owner = owner  # the graph of the batch each node belongs to
        self.agg = None
        self.n_coarse = 0

    def lap(self, X):
        return self.d.unsqueeze(-1) * X - self.W @ X


def edge_chunks(n: int, start: int = 0) -> list[slice]:
    """Slices of at most :data:`~diffeig._tolerances.EDGE_CHUNK` edges covering
    ``start .. start + n``."""
    end = start + n
    return [slice(s, min(s + EDGE_CHUNK, end)) for s in range(start, end, EDGE_CHUNK)]


def _jitter(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """A fixed irregular number in [0, 1) per edge, the same for (i, j) and (j, i): ties in
    the strongest-neighbour choice of a uniform region must be broken irregularly, or
    pointers form long chains (golden-ratio sequences of the end points)."""
    a, b = torch.minimum(row, col).to(torch.float64), torch.maximum(row, col).to(torch.float64)
    return a.mul_(0.6180339887498949).add_(b.mul_(0.4142135623730951)).frac_()  # in place


def _strength(row, col, val, d):
    """``w_ij / sqrt(d_i d_j)`` of these edges, float64."""
    return val.to(torch.float64) / (d[row] * d[col]).to(torch.float64).clamp_min(1e-300).sqrt_()


def _aggregate(row, col, val, d, max_depth: int = MAX_DEPTH):
    """``(agg, n_coarse)``: each node's aggregate, numbered 0 .. n_coarse - 1; pointer
    trees are cut every ``max_depth`` levels."""
    n = d.shape[0]
    dev = d.device
    # the strength of each edge, computed a chunk of edges at a time (the temporaries of
    # a chunk, not of every edge: 2 GB less at 896 px), twice rather than stored (0.5 GB)
    best = torch.full((n,), -1.0, dtype=torch.float64, device=dev)
    for e in edge_chunks(row.numel()):
        best.scatter_reduce_(0, row[e], _strength(row[e], col[e], val[e], d), "amax")
    # Ties are broken by a hash of the edge: each strength times 1 + 1e-6 h, h in [0, 1),
    # far below any real difference. Only an edge within that factor of its row's
    # strongest can win, so only those (a few per node) are hashed: the same pointers as
    # hashing every edge, without a float64 hash of each stored weight.
    near, strength = [], []
    for e in edge_chunks(row.numel()):
        s = _strength(row[e], col[e], val[e], d)
        (i,) = (s * (1 + 2e-6) >= best[row[e]]).nonzero(as_tuple=True)
        near.append(i + e.start)
        strength.append(s[i])
    near = torch.cat(near)
    r, c = row[near], col[near]
    sj = torch.cat(strength).mul_(_jitter(r, c).mul_(1e-6).add_(1))
    best.fill_(-1.0).scatter_reduce_(0, r, sj, "amax")
    ptr = torch.full((n,), n, dtype=torch.int64, device=dev)
    ptr.scatter_reduce_(0, r, torch.where(sj == best[r], c, n), "amin")
    idx = torch.arange(n, device=dev)
    ptr = torch.where(ptr == n, idx, ptr)  # isolated nodes: their own root
    # mutual pairs: the smaller index is the root
    mutual = ptr[ptr] == idx
    ptr = torch.where(mutual & (idx < ptr), idx, ptr)
    # depth of each node below its root, by pointer doubling
    is_root = ptr == idx
    up, depth = ptr.clone(), (~is_root).to(torch.int64)
    while True:
        nxt = up[up]
        if bool((nxt == up).all()):
            break
        depth = depth + depth[up]  # distance from each node to its current `up`
        up = nxt
    # trees cut every max_depth levels: compact aggregates even along chains of pointers
    ptr = torch.where((depth % max_depth == 0), idx, ptr)
    root = ptr
    while True:
        nxt = root[root]
        if bool((nxt == root).all()):
            break
        root = nxt
    uniq, agg = torch.unique(root, return_inverse=True)
    return agg, uniq.shape[0]


class Multigrid:
    """``R -> T R`` with ``T ~ L^+`` for the block-diagonal Laplacian ``L = D - W`` of a
    batch of graphs (``(B, N)`` degrees, the edges as global indices ``b N + i``): an
    aggregation multigrid in the manner of pyamg's ``multilevel_solver`` (Vanek, Mandel &
    Brezina 1996 describe the smoothed variant; this one is unsmoothed, with an
    over-corrected coarse step).

    ``__call__`` takes ``(B, N, m)`` blocks and returns the same shape. The settings are
    keyword arguments (the module's constants are their defaults); setup runs in two named
    stages, :meth:`_coarsen` per level and :meth:`_coarsest_setup`; ``sizes`` and
    ``operator_complexity`` (stored weights of all levels over the finest's) describe the
    hierarchy, and ``repr`` shows them. ``matrix``: the finest graph as a CSR tensor the
    caller already holds (the same entries), used instead of building a second copy.
    """

    def __init__(
        self,
        row,
        col,
        val,
        d,
        *,
        coarsest: int = COARSEST,
        max_levels: int = MAX_LEVELS,
        max_depth: int = MAX_DEPTH,
        omega: float = OMEGA,
        sweeps: int = SWEEPS,
        over_correction: float = OVER_CORRECTION,
        matrix=None,
    ):
        B, N = d.shape
        self.batch, self.n = B, N
        self.coarsest, self.max_levels, self.max_depth = coarsest, max_levels, max_depth
        self.omega, self.sweeps, self.over_correction = omega, sweeps, over_correction
        owner = torch.arange(B, device=d.device).repeat_interleave(N)
        # the finest level is the caller's CSR matrix where given (one copy of the pattern)
        self.levels = [_Level(row, col, val, d.reshape(-1), owner, matrix)]
        edges = (row, col, val)
        while len(self.levels) < max_levels and edges is not None:
            edges = self._coarsen(*edges)
        self._coarsest_setup()

    def _coarsen(self, row, col, val):
        """Aggregate the last level into the next; returns the next level's edges, or
        None where the hierarchy ends (every graph small enough, or no longer shrinking)."""
        lv, B, dev = self.levels[-1], self.batch, self.levels[-1].d.device
        counts = torch.bincount(lv.owner, minlength=B)
        if int(counts.max()) <= self.coarsest:
            return None
        agg, nc = _aggregate(row, col, val, lv.d, self.max_depth)
        if nc > MIN_SHRINK * lv.n:  # no longer shrinking (e.g. nodes without edges)
            return None
        lv.agg, lv.n_coarse = agg, nc
        owner_c = torch.zeros(nc, dtype=torch.int64, device=dev).index_copy_(0, agg, lv.owner)
        # the coarse edges from one orientation (half the sort), then mirrored: of an edge's
        # two entries between two aggregates, the one from the lower aggregate's side; each
        # chunk's edges summed per pair of aggregates first (a few fine edges join each
        # pair: the final sort sees fewer; the same sums where one chunk holds every edge)
        keys, weights = [], []
        for e in edge_chunks(row.numel()):
            r, c = agg[row[e]], agg[col[e]]
            lower = r < c
            key, inv = torch.unique(r[lower] * nc + c[lower], return_inverse=True)
            keys.append(key)
            weights.append(val.new_zeros(key.numel()).index_add_(0, inv, val[e][lower]))
        key, inv = torch.unique(torch.cat(keys), return_inverse=True)
        del keys
        w = torch.zeros(key.numel(), dtype=val.dtype, device=dev).index_add_(
            0, inv, torch.cat(weights)
        )
        lo, hi = key // nc, key % nc
        row, col, val = torch.cat([lo, hi]), torch.cat([hi, lo]), torch.cat([w, w])
        order = torch.argsort(row * nc + col)
        row, col, val = row[order], col[order], val[order]
        dc = torch.zeros(nc, dtype=lv.d.dtype, device=dev).index_add_(0, row, val)
        self.levels.append(_Level(row, col, val, dc, owner_c))
        return row, col, val

    @property
    def operator_complexity(self) -> float:
        """Stored weights of every level over the finest level's (pyamg's measure)."""
        nnz = [lv.W.values().numel() for lv in self.levels]
        return sum(nnz) / max(1, nnz[0])

    def __repr__(self) -> str:
        return (
            f"Multigrid(batch={self.batch}, levels={self.sizes}, operator_complexity="
            f"{self.operator_complexity:.2f}, coarsest={self.coarsest}, omega={self.omega:.3g}"
            f", sweeps={self.sweeps}, over_correction={self.over_correction})"
        )

    @property
    def sizes(self) -> list[int]:
        return [lv.n for lv in self.levels]

    def _coarsest_setup(self):
        lv = self.levels[-1]
        B = self.batch
        counts = torch.bincount(lv.owner, minlength=B)
        m = int(counts.max())
        # each node's slot within its graph (aggregation need not keep a graph's nodes
        # contiguous: rank them by owner)
        order = torch.argsort(lv.owner, stable=True)
        start = torch.zeros(B + 1, dtype=torch.int64, device=lv.d.device)
        start[1:] = counts.cumsum(0)
        slot = torch.empty_like(order)
        slot[order] = torch.arange(lv.n, device=lv.d.device) - start[lv.owner[order]]
        self._slot = slot
        Ld = torch.zeros(B, m, m, dtype=lv.d.dtype, device=lv.d.device)
        Wc = lv.W.to_sparse_coo()
        r, c = Wc.indices()
        Ld[lv.owner[r], slot[r], slot[c]] -= Wc.values()
        Ld[lv.owner, slot, slot] += lv.d
        # padding slots: identity, so that they decouple
        pad = torch.arange(m, device=lv.d.device).unsqueeze(0) >= counts.unsqueeze(1)
        Ld = Ld + torch.diag_embed(pad.to(Ld.dtype))
        lam, V = torch.linalg.eigh(Ld)
        cut = 1e-10 * lam.abs().amax(-1, keepdim=True).clamp_min(1e-300)
        inv = torch.where(lam > cut, 1 / torch.where(lam > cut, lam, 1), 0)
        self._pinv = (V * inv.unsqueeze(-2)) @ V.mT

    def _solve_coarsest(self, R):
        lv = self.levels[-1]
        B, m = self._pinv.shape[:2]
        Rp = R.new_zeros(B, m, R.shape[-1])
        Rp[lv.owner, self._slot] = R
        X = self._pinv.to(R.dtype) @ Rp
        return X[lv.owner, self._slot]

    def _cycle(self, i, R):
        lv = self.levels[i]
        if i == len(self.levels) - 1:
            return self._solve_coarsest(R)
        omega = self.omega
        X = omega * lv.dinv * R
        for _ in range(self.sweeps - 1):
            X = X + omega * lv.dinv * (R - lv.lap(X))
        Rc = R - lv.lap(X)
        Rc = R.new_zeros(lv.n_coarse, R.shape[-1]).index_add_(0, lv.agg, Rc)
        X = X + self.over_correction * self._cycle(i + 1, Rc)[lv.agg]
        for _ in range(self.sweeps):
            X = X + omega * lv.dinv * (R - lv.lap(X))
        return X

    def __call__(self, R: torch.Tensor) -> torch.Tensor:
        shape = R.shape
        dt = self.levels[0].d.dtype
        X = self._cycle(0, R.reshape(-1, shape[-1]).to(dt))
        return X.reshape(shape).to(R.dtype)
