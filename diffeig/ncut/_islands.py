"""Start vectors for sparse graphs that fall apart into near-islands.

A photograph's pixel graph with a small colour scale holds weights from 1 down to 1e-47:
pixels and small regions joined to the rest only by weights far below their degree. Each
such near-island brings an eigenvalue near 0, and a random start has almost no part along
the islands' indicator vectors, so LOBPCG converged to a larger pair and returned it as
the k-th (l3 = 5.8e-10 where it is 1.4e-10; a 2-pixel island's l3 = 1.002 where it is
2.6e-4). The quotient graph knows them: its nodes are the components of the graph's
strong edges, its weights the sums of the weak ones between them. Its smallest pairs,
spread back over the components, are the pairs of the near-disconnected graph to first
order, and they start LOBPCG.
"""

from __future__ import annotations

import numpy as np
import torch

from diffeig._tolerances import ISLAND_EIGENVALUE, ISLAND_RTOL, MAX_COMPONENTS
from diffeig.ncut._multigrid import edge_chunks

__all__ = ["island_start", "missed_pairs"]


def island_start(graphs, values, d, normalized: bool, count: int):
    """``(B, N, count)`` start vectors in the symmetric problem's basis (``D^1/2 z`` for
    the normalized cut, ``z`` for ``D - W``): the ``count`` smallest non-trivial pairs of
    each graph's quotient graph over the components of its strong edges, those below
    :data:`ISLAND_EIGENVALUE` of the bound, spread back; or ``None`` where no graph holds
    such near-islands (zero columns for a graph that does not)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    n_all = graphs.B * graphs.N
    row, col = graphs.row, graphs.col
    if count < 1:
        return None
    flat = d.reshape(-1)
    # a chunk of edges at a time (the temporaries of a chunk, not of every edge)
    strong = torch.empty(row.numel(), dtype=torch.bool, device=row.device)
    # the strong edges in CSR order already: no sort (graphs.crow holds the row starts)
    per_row = torch.zeros(n_all, dtype=torch.int64, device=row.device)
    for e in edge_chunks(row.numel()):
        dmax = torch.maximum(flat.index_select(0, row[e]), flat.index_select(0, col[e]))
        strong[e] = values[e] > ISLAND_RTOL * dmax
        per_row.index_add_(0, row[e], strong[e].to(torch.int64))
    if bool(strong.all()):
        return None
    index = torch.int32 if n_all < 2**31 - 1 and row.numel() < 2**31 - 1 else torch.int64
    indptr = torch.cat([per_row.new_zeros(1), per_row.cumsum(0)]).to(index).cpu().numpy()
    # the strong edges' columns, narrowed into place a chunk at a time (no int64 copy)
    indices = torch.empty(int(indptr[-1]), dtype=index, device=row.device)
    at = 0
    for e in edge_chunks(col.numel()):
        part = col[e][strong[e]]
        indices[at : at + part.numel()] = part
        at += part.numel()
    indices = indices.cpu().numpy()
    # the components read the pattern only: every value one float64 1.0, not one per edge
    ones = np.broadcast_to(np.float64(1.0), indices.shape)
    adj = csr_matrix((ones, indices, indptr), (n_all, n_all), copy=False)
    # The strong edges are symmetric (so are the weights and max(d_i, d_j)): their strongly
    # connected components are the components, found without the transposed copy that
    # directed=False makes (1.2 s and 0.8 GB at 896 px).
    _, labels = connected_components(adj, directed=True, connection="strong")
    labels = torch.from_numpy(labels).to(row.device).reshape(graphs.B, graphs.N)
    start = torch.zeros(graphs.B, graphs.N, count, dtype=d.dtype, device=d.device)
    found = False
    for b in range(graphs.B):
        comp, local = torch.unique(labels[b], return_inverse=True)
        m = comp.numel()
        if m < 2 or m > MAX_COMPONENTS:
            continue
        lo, hi = b * graphs.N, (b + 1) * graphs.N
        s, e = int(graphs.crow[lo]), int(graphs.crow[hi])
        # only the weak edges can join two components (a strong edge's ends share one);
        # the weights between components summed a chunk of edges at a time
        Wc = torch.zeros(m * m, dtype=values.dtype, device=values.device)
        for ch in edge_chunks(e - s, start=s):
            weak = ~strong[ch]
            a, c = local[row[ch][weak] - lo], local[col[ch][weak] - lo]
            between = a != c
            Wc.index_add_(0, a[between] * m + c[between], values[ch][weak][between])
        mu, y = _quotient_pairs(local, Wc.reshape(m, m), d[b], normalized)
        bound = 2.0 if normalized else 2 * float(d[b].max())
        small = (mu[1 : count + 1] < ISLAND_EIGENVALUE * bound).nonzero().squeeze(-1)
        if small.numel() == 0:
            continue
        y = y[:, 1 + small]  # the trivial pair is deflated exactly
        z = y[local]
        start[b, :, : z.shape[-1]] = z * d[b].sqrt().unsqueeze(-1) if normalized else z
        found = True
    return start if found else None


def _quotient_pairs(local, Wc, d, normalized: bool) -> torch.Tensor:
    """The eigenpairs ``(mu, Y)`` (ascending) of the quotient graph's generalized problem
    ``(D_c - W_c) y = mu M y``, ``M`` the components' volumes (normalized) or sizes;
    ``Wc`` ``(m, m)``, the summed weights between components (those within a component
    would sit on its diagonal and cancel in ``D_c - W_c``)."""
    m = Wc.shape[0]
    Lc = torch.diag(Wc.sum(-1)) - Wc
    weight = d if normalized else torch.ones_like(d)
    mass = torch.zeros(m, dtype=d.dtype, device=d.device).index_add_(0, local, weight)
    r = mass.clamp_min(torch.finfo(d.dtype).tiny).rsqrt()
    C = Lc * r.unsqueeze(-1) * r.unsqueeze(-2)
    mu, V = torch.linalg.eigh(0.5 * (C + C.mT))
    return mu, V * r.unsqueeze(-1)


def missed_pairs(lap, U, lam, islands):
    """Per graph, whether a pair was skipped: the Rayleigh-Ritz values of the returned
    vectors and the island vectors together lie below the returned eigenvalues (by
    Cauchy's interlacing the j-th of them bounds the j-th eigenvalue from above, so one
    below the returned j-th proves that a pair below it was missed). Returns ``(missed
    (B,) bool, Ritz vectors (B, N, k - 1 + count) ascending)`` in the symmetric
    problem's basis, the trivial vector (column 0 of U) projected out."""
    u1 = U[..., :1]
    Y = torch.cat([U[..., 1:], islands], -1)
    Y = Y - u1 * (u1.mT @ Y)
    Q, R = torch.linalg.qr(Y)
    # columns that were (nearly) dependent carry no direction: push them past the spectrum
    keep = R.diagonal(dim1=-2, dim2=-1).abs() > 1e-8 * R.diagonal(dim1=-2, dim2=-1).abs().amax(
        -1, keepdim=True
    )
    H = Q.mT @ lap(Q)
    H = 0.5 * (H + H.mT)
    big = 4 * H.diagonal(dim1=-2, dim2=-1).abs().amax(-1, keepdim=True) + 4
    H = H + torch.diag_embed(torch.where(keep, 0.0, big).to(H.dtype))
    theta, S = torch.linalg.eigh(H)
    k1 = U.shape[-1] - 1
    found = lam[..., 1:]
    eps = torch.finfo(lam.dtype).eps
    margin = torch.maximum(1e-3 * found, torch.full_like(found, 100 * eps))
    missed = (theta[..., :k1] < found - margin).any(-1)
    return missed, Q @ S
