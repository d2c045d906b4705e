"""Pure-PyTorch twins of every ``torch.ops.diffeig`` operator.

Each function here has the schema's semantics exactly. They serve three purposes:
the fallback when the native extension is missing, the oracle the tests compare the
native kernels against, and (being plain differentiable tensor code) the formulas
used for higher-order derivatives.
"""

from __future__ import annotations

import math

import torch

from diffeig._tolerances import eigenvalue_converged

# torch's own solvers, kept before diffeig.patch_torch can replace them: every dense
# solve in diffeig goes through these, so diffeig never calls itself.
torch_eigh = torch.linalg.eigh
torch_eigvalsh = torch.linalg.eigvalsh

__all__ = [
    "torch_eigh",
    "torch_eigvalsh",
    "gap_mask",
    "masked_reciprocal_gaps",
    "eigh_backward_core",
    "laplacian",
    "laplacian_backward",
    "ncut_grad_assemble",
    "ncut_backward",
    "cg_advance",
    "cg_direction",
    "cg_step",
    "sym_matmul",
    "ncut_lanczos",
]


def gap_mask(eigenvalues: torch.Tensor, k: int, gap_rtol: float, gap_atol: float, scale=None):
    """Differences ``d[..., i, s] = l[s] - l[i]`` (s < k) and where they count as ties.

    Returns ``(d, mask)``; ``mask`` is True where ``d == 0`` (which includes i == s) or
    ``|d| < gap_atol + gap_rtol * scale`` (one threshold per matrix). ``scale`` (``(*)``)
    is the magnitude of the whole spectrum; by default ``max|l|`` of the given eigenvalues,
    which is that magnitude when they are the whole spectrum. Partial solvers, which see
    only k eigenvalues (all near 0 on a graph with k components), pass a bound of the
    operator's norm instead.
    """
    l = eigenvalues
    d = l[..., None, :k] - l[..., :, None]
    if scale is None:  # (an empty spectrum has no magnitude)
        scale = l.detach().abs().amax(-1) if l.shape[-1] else l.new_zeros(l.shape[:-1])
    thr = gap_atol + gap_rtol * scale.detach().to(l.dtype)[..., None, None]
    mask = (d == 0) | (d.abs() < thr)
    return d, mask


def masked_reciprocal_gaps(
    eigenvalues: torch.Tensor, k: int, gap_rtol: float, gap_atol: float, scale=None
):
    """``K^T[..., :, :k]``: ``1 / (l[s] - l[i])``, zero on ties and on the diagonal."""
    d, mask = gap_mask(eigenvalues, k, gap_rtol, gap_atol, scale)
    # The division happens on a safe denominator so that the masked branch never
    # produces inf (whose gradient would turn the zero into a NaN).
    safe = torch.where(mask, torch.ones_like(d), d)
    return torch.where(mask, torch.zeros_like(d), 1 / safe)


def eigh_backward_core(
    eigenvalues: torch.Tensor,
    X: torch.Tensor,
    grad_eigenvalues: torch.Tensor | None,
    gap_rtol: float,
    gap_atol: float,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference of ``diffeig::eigh_backward_core`` (see ``csrc/diffeig.cpp``); ``scale``
    as in :func:`gap_mask` (the native op always uses ``max|l|``)."""
    n, k = X.shape[-2], X.shape[-1]
    if X.numel() == 0 or n == 0:
        return torch.empty_like(X, memory_format=torch.contiguous_format)
    d, mask = gap_mask(eigenvalues, k, gap_rtol, gap_atol, scale)
    safe = torch.where(mask, torch.ones_like(d), d)
    if X.is_complex():
        # Divide the real and imaginary parts by the real gap, as the kernels do.
        parts = torch.view_as_real(X) / safe.unsqueeze(-1)
        out = torch.where(mask.unsqueeze(-1), torch.zeros_like(parts), parts)
        M = torch.view_as_complex(out.contiguous())
    else:
        M = torch.where(mask, torch.zeros_like(X), X / safe)
    if grad_eigenvalues is not None:
        eye = torch.eye(n, k, dtype=eigenvalues.dtype, device=X.device)
        M = M + eye * grad_eigenvalues.unsqueeze(-2)
    return M


def laplacian(W: torch.Tensor, normalized: bool):
    """Reference of ``diffeig::laplacian``: ``(L, d)`` with ``d = W 1``."""
    d = W.sum(-1)
    eye = torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)
    if normalized:
        dis = d.rsqrt()
        L = eye - (dis.unsqueeze(-1) * W) * dis.unsqueeze(-2)
    else:
        L = torch.diag_embed(d) - W
    return L, d


def laplacian_backward(
    grad_L: torch.Tensor,
    grad_d: torch.Tensor | None,
    W: torch.Tensor,
    d: torch.Tensor,
    normalized: bool,
) -> torch.Tensor:
    """Exact gradient of :func:`laplacian` w.r.t. ``W`` (a general, unsymmetrized matrix).

    ``d_i = sum_j W_ij``; normalized: ``L_ij = delta_ij - dis_i W_ij dis_j`` with
    ``dis = d^-1/2``; unnormalized: ``L = diag(d) - W``.
    """
    gd = torch.zeros_like(d) if grad_d is None else grad_d
    if normalized:
        dis = d.rsqrt()
        T = grad_L * W
        # Both the row and the column of L hold dis_i.
        s = (T * dis.unsqueeze(-2)).sum(-1) + (T * dis.unsqueeze(-1)).sum(-2)
        gd = gd + 0.5 * dis**3 * s
        return -(dis.unsqueeze(-1) * grad_L) * dis.unsqueeze(-2) + gd.unsqueeze(-1)
    gd = gd + torch.diagonal(grad_L, dim1=-2, dim2=-1)
    return -grad_L + gd.unsqueeze(-1)


def ncut_grad_assemble(
    P: torch.Tensor, V: torch.Tensor, scale: torch.Tensor, diag_term: torch.Tensor
) -> torch.Tensor:
    """Reference of ``diffeig::ncut_grad_assemble``.

    ``out_ij = -scale_i scale_j (P_i . V_j + P_j . V_i) / 2 + (diag_term_i + diag_term_j) / 2``.
    """
    S = P @ V.mT
    S = S + S.mT
    c = scale
    return (-0.5 * c.unsqueeze(-1)) * c.unsqueeze(-2) * S + 0.5 * (
        diag_term.unsqueeze(-1) + diag_term.unsqueeze(-2)
    )


def ncut_backward(
    V: torch.Tensor,
    eigenvalues: torch.Tensor,
    degree: torch.Tensor,
    grad_Z: torch.Tensor,
    grad_eigenvalues: torch.Tensor,
    normalized: bool,
    gap_rtol: float,
    gap_atol: float,
    *,
    core=eigh_backward_core,
    assemble=ncut_grad_assemble,
) -> torch.Tensor:
    """Reference of ``diffeig::ncut_backward``: dL/dW of ``sym_eigh_ncut`` (symmetric).

    ``V``, ``eigenvalues``: the full eigendecomposition of the Laplacian (the first k
    columns of ``V`` sign-fixed as returned); ``degree = W 1``. With ``k`` columns used,
    ``gU = D^-1/2 gZ`` (normalized) or ``gZ``, ``M = K^T[:, :k] o (V^T gU) + diag(gl)``,
    ``P = V M`` and ``gL = sym(P V_k^T)``, never formed. The chain rule through the
    degrees needs ``sum_j gL_ij W_ij dis_j``; with ``dis_i W_ij dis_j = delta_ij - L_ij``
    and ``L = V diag(l) V^T`` it comes from ``P``, ``Q = V diag(l) M`` and ``V_k``.
    ``core`` and ``assemble`` let the native kernels of those two steps stand in.
    """
    k = grad_Z.shape[-1]
    Vk = V[..., :k]
    if normalized:
        dis = degree.rsqrt()
        X = V.mT @ (grad_Z * dis.unsqueeze(-1))
        M = core(eigenvalues, X, grad_eigenvalues, gap_rtol, gap_atol)
        PQ = V @ torch.cat([M, eigenvalues.unsqueeze(-1) * M], -1)
        P, Q = PQ[..., :k], PQ[..., k:]
        gL_diag = (P * Vk).sum(-1)
        gLL_diag = 0.5 * ((P * Vk * eigenvalues[..., None, :k]).sum(-1) + (Vk * Q).sum(-1))
        s = 2.0 * (gL_diag - gLL_diag) / dis
        # z = D^-1/2 u: d loss / d dis_i = sum_s gZ_is u_is; d dis / d d = -dis^3 / 2.
        grad_d = 0.5 * dis**3 * (s - (grad_Z * Vk).sum(-1))
        return assemble(P, Vk, dis, grad_d)
    X = V.mT @ grad_Z
    M = core(eigenvalues, X, grad_eigenvalues, gap_rtol, gap_atol)
    P = V @ M
    return assemble(P, Vk, torch.ones_like(degree), (P * Vk).sum(-1))


def cg_advance(Y, R, P, AP, rz, rr, active):
    """The first half of a (preconditioned) conjugate-gradient step on every column of
    ``(*, n, k)`` blocks: for each active column ``alpha = rz / (p . Ap)``,
    ``Y += alpha P``, ``R -= alpha AP``, ``rr' = R . R``; a column whose curvature
    ``p . Ap`` is no longer positive (rounding at the end of convergence) stops.
    ``rz``: ``r . z`` with ``z`` the preconditioned residual (``rr`` without one).
    Returns ``(Y, R, rr', active)``."""
    pAp = (P * AP).sum(-2)
    active = active & (pAp > 0)
    alpha = torch.where(active, rz / torch.where(active, pAp, 1), 0).unsqueeze(-2)
    Y = Y + alpha * P
    R = R - alpha * AP
    rr_new = torch.where(active, (R * R).sum(-2), rr)
    return Y, R, rr_new, active


def cg_direction(P, Z, rz_new, rz, active):
    """The second half: ``P = Z + (rz' / rz) P`` on the active columns (``Z`` the
    preconditioned residual, ``R`` itself without a preconditioner)."""
    beta = torch.where(active, rz_new / torch.where(active, rz, 1), 0).unsqueeze(-2)
    return torch.where(active.unsqueeze(-2), Z + beta * P, P)


def cg_step(Y, R, P, AP, rr, stop, active):
    """One conjugate-gradient step on every column of ``(*, n, k)`` blocks: the twin of
    ``diffeig::cg_step``, :func:`cg_advance` then :func:`cg_direction` with ``Z = R``
    (so that the preconditioned step is the same algorithm).

    For each active column: ``alpha = rr / (p . Ap)``, ``Y += alpha P``,
    ``R -= alpha AP``, ``rr' = R . R``, ``P = R + (rr' / rr) P``; it stays active while
    ``p . Ap > 0`` and ``rr' > stop``. Inactive columns come back unchanged.
    ``rr``, ``stop``, ``active``: ``(*, k)``. Returns ``(Y, R, P, rr, active)``.
    """
    Y, R, rr_new, active = cg_advance(Y, R, P, AP, rr, rr, active)
    P = cg_direction(P, R, rr_new, rr, active)
    return Y, R, P, rr_new, active & (rr_new > stop)


def max_asymmetry(W: torch.Tensor) -> float:
    """``max |W - W^T|`` over a batch, reading W about once.

    Tile by tile (about 4 MB): a block of columns is copied transposed into a small
    contiguous buffer (which the allocator recycles, so no page faults) and compared with
    the matching block of rows. Subtracting the strided ``W.mT`` view directly is 5x
    slower on CPU at N = 784 and pays for page faults of N x N temporaries.
    """
    flat = W.reshape(-1, *W.shape[-2:])
    n, size = W.shape[-1], W.element_size()
    per = max(1, (1 << 23) // max(1, n * n * size))
    asym = 0.0
    for c in flat.split(per):
        blk = max(16, (1 << 22) // max(1, c.shape[0] * n * size))
        for i in range(0, n, blk):
            # clone, not contiguous(): for N = 1 (or one tile) the transposed view is
            # contiguous already, and the in-place ops below must never write into W.
            t = c[:, :, i : i + blk].mT.clone(memory_format=torch.contiguous_format)
            asym = max(asym, t.sub_(c[:, i : i + blk, :]).abs_().amax().item())
    return asym


def symmetry_stats(W: torch.Tensor) -> torch.Tensor:
    """Reference of ``diffeig::symmetry_stats``: ``[min, max, max |W - W^T|]`` (float64)."""
    lo, hi = torch.aminmax(W)  # one pass; NaN propagates into both
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
        asym = float("nan")
    else:
        asym = max_asymmetry(W)
    return torch.tensor([lo.item(), hi.item(), asym], dtype=torch.float64, device=W.device)


def sparse_mirror_stats(
    crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """Reference of ``diffeig::sparse_mirror_stats``: ``[missing, max |v_ij - v_ji|]``
    (float64) of a CSR pattern (sorted unique columns per row). The entries ordered by
    (col, row), a stable sort of the columns of this row-sorted list, are the mirrors, in
    order, of the entries ordered by (row, col), exactly when the pattern is symmetric;
    where it is not, an entry is counted missing when no stored entry is its mirror."""
    from diffeig._tolerances import EDGE_CHUNK

    n = crow.numel() - 1
    crow, col = crow.to(torch.int64), col.to(torch.int64)
    row = torch.repeat_interleave(torch.arange(n, device=col.device), crow[1:] - crow[:-1])
    narrow = n < 2**31 - 1  # int32 keys sort faster (1.5 vs 2.1 s at 896 px)
    t = torch.argsort(col.to(torch.int32) if narrow else col, stable=True)
    v = values.detach()
    found_all, asym = True, 0.0
    for s in range(0, t.numel(), EDGE_CHUNK):  # a chunk's temporaries, not every edge's
        e = slice(s, s + EDGE_CHUNK)
        m = t[e]
        found = (col[m] == row[e]) & (row[m] == col[e])
        found_all = found_all and bool(found.all())
        if found_all:
            asym = max(asym, float((v[e] - v[m]).abs().max()))
    missing = 0
    if not found_all:  # each entry's mirror looked up among the keys (sorted: CSR order)
        key = row * n + col
        mirror = col * n + row
        at = torch.searchsorted(key, mirror).clamp_max(key.numel() - 1)
        has = key[at] == mirror
        missing = int((~has).sum())
        asym = float((v - v[at]).abs()[has].max()) if bool(has.any()) else 0.0
    return torch.tensor([float(missing), asym], dtype=torch.float64, device=values.device)


def sym_matmul(W: torch.Tensor, Y: torch.Tensor, index: torch.Tensor | None = None):
    """Reference of ``diffeig::sym_matmul``: ``W[index] @ Y`` (``W[b] @ Y[b]`` without an
    index), one product per selected matrix, so that the selection is never copied."""
    if W.dim() != 3 or W.shape[-1] != W.shape[-2]:
        raise ValueError(f"W must be a batch of square matrices (B, n, n), got {tuple(W.shape)}")
    if Y.dim() != 3 or Y.shape[1] != W.shape[-1]:
        raise ValueError(f"Y must have shape (b, {W.shape[-1]}, m), got {tuple(Y.shape)}")
    if index is None:
        if Y.shape[0] != W.shape[0]:
            raise ValueError(f"Y must have W's batch size {W.shape[0]}, got {Y.shape[0]}")
        return W @ Y
    if index.shape != (Y.shape[0],):
        raise ValueError(f"index must have shape ({Y.shape[0]},), got {tuple(index.shape)}")
    if index.numel() == 0:
        return Y.new_zeros(Y.shape)
    if W[0].numel() * W.element_size() < 1 << 20:  # small matrices: one batched product
        return W.index_select(0, index) @ Y
    return torch.stack([W[i] @ y for i, y in zip(index.tolist(), Y)]) if len(Y) else Y.clone()


def _steps_to_next_check(res, last_res, spacing: int, steps: int, target: float) -> int:
    """As the kernel's: at most an eighth of the steps taken apart, sooner where the
    residual's decay says it reaches ``target``."""
    cap = max(1, steps // 8)
    if not (last_res > res > target and spacing > 0):
        return cap
    rate = (res / last_res) ** (1.0 / spacing)
    need = math.log(target / res) / math.log(rate)
    return max(1, min(cap, math.ceil(0.75 * need)))


def _tridiagonal(alpha: list[float], beta: list[float]) -> torch.Tensor:
    T = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if len(alpha) > 1:
        off = torch.tensor(beta[: len(alpha) - 1], dtype=torch.float64)
        T.diagonal(1).copy_(off)
        T.diagonal(-1).copy_(off)
    return T


def ncut_lanczos(W, dis, u1, v0, tol: float, floor: float, max_steps: int):
    """Reference of ``diffeig::ncut_lanczos``: the Fiedler pair of one normalized cut by
    Lanczos with full reorthogonalization on ``M = dis W dis`` (largest, ``u1``
    deflated), the convergence test at the kernel's steps: LOBPCG's with
    ``eigenvalue_rtol`` on ``L / 2 = (I - M) / 2``
    (:func:`diffeig._tolerances.eigenvalue_converged`). Returns ``(x (n,), info (5,)
    float64)``: ``[theta, next Ritz value (NaN after one step), residual, steps,
    converged]``."""
    n = W.shape[-1]
    m = min(max_steps, n - 1)
    Q = W.new_empty(m + 1, n)
    Q[0] = u1
    v = v0
    for _ in range(2):
        v = v - u1 * (u1 @ v)
    Q[1] = v / v.norm()
    alpha: list[float] = []
    beta: list[float] = []
    eps = torch.finfo(W.dtype).eps  # the breakdown test at the vectors' rounding level
    check, last_check, last_res = 1, 0, math.nan
    for j in range(m):
        v = dis * (W @ (dis * Q[j + 1]))
        B = Q[: j + 2]
        h = B @ v
        a = float(h[j + 1])  # the second pass changes it by rounding only
        v = v - B.mT @ h
        v = v - B.mT @ (B @ v)
        b = float(v.norm())
        alpha.append(a)
        beta.append(b)
        steps = j + 1
        invariant = b <= 10 * eps * max(1.0, abs(a))
        if steps >= check or invariant or steps == m:
            th, S = torch.linalg.eigh(_tridiagonal(alpha, beta))
            theta, nxt = float(th[-1]), float(th[-2]) if j > 0 else math.nan
            res = abs(b * float(S[-1, -1]))
            rel, l2 = res / 2, (1 - theta) / 2
            gap = (1 + theta) / 2 if math.isnan(nxt) else (theta - nxt) / 2
            done = invariant or (rel <= tol and eigenvalue_converged(rel, l2, gap, tol, floor))
            if done or steps == m:
                break
            check = steps + _steps_to_next_check(res, last_res, steps - last_check, steps, 2 * tol)
            last_res, last_check = res, steps
        Q[j + 2] = v / b
    steps = len(alpha)
    x = Q[1 : steps + 1].mT @ S[:, -1].to(W.dtype).to(W.device)
    info = torch.tensor([theta, nxt, res, steps, float(done)], dtype=torch.float64)
    return x / x.norm(), info
