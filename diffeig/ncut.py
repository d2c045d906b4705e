"""The normalized-cut eigenproblem with an O(N^2 k) backward, and its graph helpers.

``sym_eigh_ncut`` returns the k smallest eigenpairs of a graph Laplacian built from a
symmetric non-negative affinity ``W``; its backward re-uses the forward's eigenvectors
(the DNCut paper's Eqn. 8), so a gradient costs a few skinny matrix products and one
write of ``dL/dW``. ``docs/ncut.md`` has the math.
"""

from __future__ import annotations

import math

import torch

from diffeig import _ops, _reference
from diffeig._eigh import _is_traced, _torch_eigh, gap_tolerances

__all__ = [
    "sym_eigh_ncut",
    "ncut_operator",
    "affinity",
    "bipartition",
    "seed",
    "LAPLACIANS",
    "SIGN_RULES",
]

LAPLACIANS = ("ncut", "unnormalized")
SIGN_RULES = ("max", "sum", None)


def _sign(Z: torch.Tensor, rule: str | None) -> torch.Tensor:
    """``(*, 1, k)`` signs (+-1) that make each column of ``Z`` follow ``rule``."""
    if rule is None:
        return torch.ones_like(Z[..., :1, :])
    if rule == "max":
        idx = Z.abs().argmax(-2, keepdim=True)
        ref = torch.gather(Z, -2, idx)
    else:  # "sum"
        ref = Z.sum(-2, keepdim=True)
    return torch.where(ref < 0, -torch.ones_like(ref), torch.ones_like(ref))


def _ncut_forward(W, k: int, normalized: bool, sign: str | None):
    """Shared by the O(N^2 k) and the pseudo-inverse variants: the same numbers."""
    L, d = _ops.laplacian(W, normalized)
    lam, V = _torch_eigh(L)
    Vk = V[..., :k]
    dis = d.rsqrt() if normalized else None
    s = _sign(Vk * dis.unsqueeze(-1) if normalized else Vk, sign)
    # Flip the columns of V itself, so that the backward sees one consistent basis.
    Vk.mul_(s)
    Z = Vk * dis.unsqueeze(-1) if normalized else Vk.clone()
    return lam[..., :k].clone(), Z, lam, V, d


def _ncut_grad_inputs(grad_lam, grad_Z, V, d, k: int, normalized: bool):
    """Cotangents of the symmetric eigenproblem, and the part of dL/dd that z = D^-1/2 u adds."""
    Vk = V[..., :k]
    if grad_Z is None:
        grad_Z = torch.zeros_like(Vk)
    if normalized:
        dis = d.rsqrt()
        grad_U = grad_Z * dis.unsqueeze(-1)
        # z_is = dis_i u_is: d loss / d dis_i = sum_s gZ_is u_is, and d dis / d d = -dis^3 / 2.
        grad_d = -0.5 * dis**3 * (grad_Z * Vk).sum(-1)
    else:
        grad_U = grad_Z
        grad_d = None
    return grad_U, grad_d


def _drop_trivial_coupling(grad_Z, Vk):
    """``D - W``: remove from the cotangents the couplings of the trivial pair (column 0 of
    the k returned vectors ``Vk``, the constant vector) with the others.

    z_2 ... z_k lose their component along u1, and z_1 its components along z_2 ... z_k.
    Both are exact: u1 is the constant vector for every W, so ``u1 . dz_j = -z_j . du1 = 0``
    and a cotangent of u1 itself contributes nothing; where l_2 ties l_1 these couplings
    are masked anyway. Left in, they enter the backward as ``(u1 . g_j) / (l_j - l_1)`` and
    cancel in dL/dW only up to rounding: where l_2 is small against the spectrum (a nearly
    disconnected graph) the leftover was the size of the whole gradient of a saturated
    mask (4 % of it, against 1e-8 once removed).
    """
    if grad_Z.shape[-1] < 2:
        return grad_Z
    u1, rest = Vk[..., :1], Vk[..., 1:]
    g1, g = grad_Z[..., :1], grad_Z[..., 1:]
    g = g - u1 * (u1 * g).sum(-2, keepdim=True)
    g1 = g1 - rest @ (rest.mT @ g1)
    return torch.cat([g1, g], -1)


class _NCut(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(W, k, normalized, sign, gap_rtol, gap_atol):
        return _ncut_forward(W, k, normalized, sign)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, k, normalized, _, gap_rtol, gap_atol = inputs
        _, _, lam, V, d = output
        ctx.mark_non_differentiable(lam, V, d)
        ctx.save_for_backward(lam, V, d)
        ctx.args = (k, normalized, gap_rtol, gap_atol)
        # The non-differentiable outputs (full spectrum, degrees) never get a cotangent:
        # don't let autograd fill an N x N zero tensor for them.
        ctx.set_materialize_grads(False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_lam, grad_Z, *_):
        lam, V, d = ctx.saved_tensors
        k, normalized, gap_rtol, gap_atol = ctx.args
        if grad_Z is None:
            grad_Z = V.new_zeros((*V.shape[:-1], k))
        if grad_lam is None:
            grad_lam = lam.new_zeros((*lam.shape[:-1], k))
        if not normalized:
            grad_Z = _drop_trivial_coupling(grad_Z, V[..., :k])
        gW = _ops.ncut_backward(V, lam, d, grad_Z, grad_lam, normalized, gap_rtol, gap_atol)
        return gW, None, None, None, None, None


def _check_k(k, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N] = [1, {n}], got {k}")


def _check_options(laplacian: str, sign) -> None:
    if laplacian not in LAPLACIANS:
        raise ValueError(f"laplacian must be one of {LAPLACIANS}, got {laplacian!r}")
    if sign not in SIGN_RULES:
        raise ValueError(f"sign must be one of {SIGN_RULES}, got {sign!r}")


max_asymmetry = _reference.max_asymmetry


def _values_readable(t: torch.Tensor) -> bool:
    """Whether value checks can run: not empty, not traced, not on the meta device."""
    return t.numel() > 0 and t.device.type != "meta" and not _is_traced(t)


def check_symmetric(
    A: torch.Tensor, name: str, *, sym_rtol: float | None = None
) -> tuple[float, float] | None:
    """Raise ``ValueError`` unless ``A`` is finite and symmetric (to ``sym_rtol``, default
    ``sqrt(eps)``, relative to ``max |A|``); return its ``(min, max)``, or ``None`` when its
    values cannot be read (empty, meta, under ``torch.compile`` or ``torch.func``)."""
    if not _values_readable(A):
        return None
    # min, max and max |A - A^T| in one pass over A (native on CPU); NaN propagates into
    # min and max
    lo, hi, asym = _ops.symmetry_stats(A).tolist()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} must be finite, got NaN or inf entries")
    scale = max(abs(lo), abs(hi), torch.finfo(A.dtype).tiny)
    tol = (torch.finfo(A.dtype).eps ** 0.5 if sym_rtol is None else sym_rtol) * scale
    if asym > tol:
        raise ValueError(
            f"{name} must be symmetric: max |{name} - {name}^T| = {asym:.3g} exceeds {tol:.3g} "
            f"(symmetrize it with ({name} + {name}.mT) / 2)"
        )
    return lo, hi


def check_affinity(W: torch.Tensor, *, normalized: bool, sym_rtol: float | None = None) -> None:
    """Raise ``ValueError`` unless ``W`` is a valid affinity (finite, >= 0, symmetric).

    For the normalized cut every node also needs a positive degree. The value checks
    read the data, so they are skipped under ``torch.compile`` and ``torch.func`` and
    on the meta device (shape inference).
    """
    from diffeig._eigh import _check_square

    _check_square(W, "W", (torch.float32, torch.float64))
    if not _values_readable(W):
        return
    lo, _ = check_symmetric(W, "W", sym_rtol=sym_rtol)
    if lo < 0:
        raise ValueError(f"W must be non-negative, got a minimum of {lo:.3g}")
    if normalized:
        zero = (W.sum(-1) <= 0).sum().item()
        if zero:
            raise ValueError(
                f"W has {zero} node(s) with zero degree: the normalized cut (D - W) z = l D z "
                "needs D > 0. Add a small floor to the affinity (affinity(..., eps=1e-6)) "
                "or use laplacian='unnormalized'"
            )


def sym_eigh_ncut(
    W: torch.Tensor,
    k: int = 2,
    *,
    laplacian: str = "ncut",
    gap_eps: float | None = None,
    sign: str | None = "max",
    method: str = "dense",
    tol: float | None = None,
    max_iter: int = 1000,
    on_fail: str = "warn",
):
    r"""The k smallest eigenpairs of a graph's normalized cut, with a cheap exact backward.

    ``laplacian='ncut'`` solves the generalized problem of Shi & Malik,
    :math:`(D - W) z = \lambda D z` with :math:`D = \operatorname{diag}(W 1)`, through
    :math:`L_{sym} = I - D^{-1/2} W D^{-1/2}` and :math:`z = D^{-1/2} u`; the vectors
    are D-orthonormal (:math:`z^T D z = 1`, as ``scipy.linalg.eigh(D - W, D)``).
    ``laplacian='unnormalized'`` solves :math:`(D - W) z = \lambda z` with orthonormal
    z: what the DNCut authors' code trains with.

    The backward uses only the k returned columns: ``O(N^2 k)`` per graph given the
    forward's eigenvectors, masked reciprocal eigen-gaps (``gap_eps``) and the chain
    rule through ``D``, assembled by fused kernels. The gradient w.r.t. ``W`` is
    returned symmetric (``W`` is a symmetric matrix). Double backward is not supported.

    Args:
        W: ``(*, N, N)`` symmetric non-negative affinities, float32 or float64.
        k: number of eigenpairs, ``1 <= k <= N``. Index 0 is the trivial pair
            (``l = 0``, ``z`` constant on a connected graph); index 1 is the Fiedler vector.
        laplacian: ``'ncut'`` or ``'unnormalized'``.
        gap_eps: tie threshold of the backward: ``None`` for
            ``max(N, 16 sqrt(N)) * eps(dtype) * max|l|`` (:func:`diffeig.gap_tolerances`),
            a number for an absolute threshold (``1e-9`` is the paper's).
        sign: ``'max'`` (default) flips each eigenvector so its entry of largest magnitude
            is positive; ``'sum'`` so that its sum is >= 0 (the authors' code);
            ``None`` keeps LAPACK's signs.
        method: ``'dense'`` (default): a full ``torch.linalg.eigh``, backward as above.
            ``'lobpcg'``: only the k pairs, by batched LOBPCG with the trivial pair
            deflated exactly; backward by shifted conjugate-gradient solves
            (:func:`diffeig.eigsh`). Needs ``l_k < l_{k+1}`` (a graph with more than k
            connected components makes the solves singular).
            ``'auto'``: whichever of the two is faster for this device, N and k
            (:func:`diffeig._eigsh.auto_method`: on CPU LOBPCG from N = 100 for k = 2).
            Both give the same float64 results to the solver tolerance; where the k-th
            eigenvalue ties the (k+1)-th (to ``sqrt(eps)`` of the spectrum's bound, e.g.
            the binary graph of an image whose tokens are all alike), the k-th vector is
            any vector of a subspace, and ``'auto'`` returns the dense solve's.
        tol, max_iter, on_fail: LOBPCG's stopping rule (relative residual), iteration
            limit, and ``'warn'`` or ``'raise'`` when it did not converge.

    Returns:
        ``(eigenvalues, eigenvectors)``: ``(*, k)`` ascending and ``(*, N, k)``.

    Raises:
        ValueError: for a bad shape, dtype, ``k``, option, or (outside ``torch.compile``)
            non-finite, negative or asymmetric ``W``, or a zero-degree node with
            ``laplacian='ncut'``.

    Example:
        >>> import torch, diffeig
        >>> f = torch.nn.functional.normalize(torch.randn(16, 8, dtype=torch.float64), dim=-1)
        >>> W = diffeig.ncut.affinity(f).requires_grad_()
        >>> lam, z = diffeig.sym_eigh_ncut(W, k=2)
        >>> (torch.sigmoid(z[:, 1] / 0.05) ** 2).sum().backward()
        >>> W.grad.shape
        torch.Size([16, 16])
    """
    _check_options(laplacian, sign)
    normalized = laplacian == "ncut"
    check_affinity(W, normalized=normalized)
    _check_k(k, W.shape[-1])
    if method not in ("dense", "lobpcg", "auto"):
        raise ValueError(f"method must be 'dense', 'lobpcg' or 'auto', got {method!r}")
    tie_rtol = None
    if method == "auto":
        from diffeig._eigsh import auto_method

        # the trivial pair is deflated exactly: LOBPCG iterates on k - 1 pairs
        method = auto_method(W.shape[-1], k - 1, W.device)
        # auto returns what dense returns: where the k-th eigenvalue ties the next (to
        # sqrt(eps) of the spectrum's bound) the k-th vector is any of a subspace, and
        # LAPACK's choice is the answer (the binary graph of an all-similar image).
        tie_rtol = torch.finfo(W.dtype).eps ** 0.5
    gap_rtol, gap_atol = gap_tolerances(gap_eps, W.shape[-1], W.dtype)
    if method == "lobpcg":
        try:
            return _ncut_lobpcg(
                W, k, normalized, sign, gap_rtol, gap_atol, tol, max_iter, on_fail, tie_rtol
            )
        except TiedSpectrum:
            pass  # (only with tie_rtol, from auto) solved densely below
    lam, Z, *_ = _NCut.apply(W, k, normalized, sign, gap_rtol, gap_atol)
    return lam, Z


def ncut_spectral_bound(d: torch.Tensor, normalized: bool) -> torch.Tensor:
    """Gershgorin's bound of the Laplacian's spectrum, ``(*)``: 2 for the normalized
    cut, ``2 max(d)`` for ``D - W``. The iterative solvers' residuals and tie thresholds
    are relative to it."""
    return torch.full_like(d[..., 0], 2.0) if normalized else 2 * d.amax(-1)


def _scale_rows(R, s):
    return R * s


# LOBPCG's block for the NCut in float64 by the number of pairs it iterates on (others,
# and float32: the default, diffeig._eigsh.default_block). With the one Fiedler pair of
# k = 2, one guard vector (block 2) beats the default five: each iteration costs half as
# much and takes 9.6 instead of 8.7 iterations per graph (N = 196, batch 256; N = 784:
# 11.1 and 9.8, random starts). The price is accuracy at the same residual: z2's error is
# the residual over l3 - l2 rather than over l7 - l2 (the guards' Ritz vectors take the
# eigenvectors between out of it). In float64 that leaves the recipe's gradients within
# 4.2e-7 of the dense path's on the hardest graphs tried (2.6e-8 with block 5; pass
# tol=1e-10 for 1.4e-8 at about 10 % more time); in float32, whose tolerance is 7e-5, it
# would cost a factor of ten (1.7e-2), so float32 keeps the default block.
NCUT_BLOCK = {torch.float64: {1: 2}}


class TiedSpectrum(Exception):
    """Raised (and caught) inside ``method="auto"``: the k-th eigenvalue ties the next."""


def lobpcg_ncut_pairs(L, d, k, normalized, sign, tol, max_iter, on_fail, tie_rtol=None):
    """The k smallest NCut pairs by LOBPCG: ``(lam, U, Z)``, U the symmetric problem's.

    ``L`` is the Laplacian as a tensor or a function ``X -> L @ X``; ``d`` the degrees.
    ``tie_rtol``: raise :class:`TiedSpectrum` where the (k+1)-th eigenvalue's bound lies
    within ``tie_rtol`` of the spectrum's bound above the k-th (the k-th vector is then not
    unique, and which one a solver returns is its rounding).
    """
    from diffeig._eigsh import run_lobpcg
    from diffeig._lobpcg import BatchedOperator

    # The trivial pair is known exactly: l = 0 with u = D^1/2 1 (normalized) or 1.
    u1 = d.sqrt() if normalized else torch.ones_like(d)
    u1 = (u1 / u1.norm(dim=-1, keepdim=True)).unsqueeze(-1)
    if k == 1:
        lam, U = torch.zeros_like(d[..., :1]), u1
    else:
        # Gershgorin bounds |L|: 2 for the normalized Laplacian, 2 max(d) for D - W, whose
        # diagonal D makes Jacobi preconditioning undo the spread of the degrees.
        scale = ncut_spectral_bound(d, normalized)
        # max(d) / d: Jacobi up to a factor, O(1) at any scale of W; isolated nodes
        # (d = 0, possible for D - W) are left unpreconditioned.
        precond = None
        if not normalized:
            dmax = d.amax(-1, keepdim=True)
            dinv = torch.where(d > 0, dmax / torch.where(d > 0, d, 1), 1).unsqueeze(-1)
            precond = BatchedOperator(_scale_rows, dinv, batch_shape=d.shape[:-1])
        theta, X, info = run_lobpcg(
            L,
            k - 1,
            largest=False,
            constraints=u1,
            tol=tol,
            max_iter=max_iter,
            on_fail=on_fail,
            scale=scale,
            preconditioner=precond,
            like=d,
            # The degrees start the search: on graphs with clusters of unequal size they
            # differ between the clusters, as z2 does (iterations per graph on the
            # recipe's graphs: 11.1 -> 7.9 at N = 784).
            start=d.unsqueeze(-1),
            block=NCUT_BLOCK.get(d.dtype, {}).get(k - 1),
        )
        nxt = info.next_eigenvalue
        if tie_rtol is not None and nxt is not None:
            if bool((nxt - theta[..., -1] <= tie_rtol * scale).any()):
                raise TiedSpectrum
        lam = torch.cat([torch.zeros_like(theta[..., :1]), theta], -1)
        U = torch.cat([u1, X], -1)
    dis = d.rsqrt() if normalized else None
    U = U * _sign(U * dis.unsqueeze(-1) if normalized else U, sign)
    Z = U * dis.unsqueeze(-1) if normalized else U.clone()
    return lam, U, Z


def lobpcg_ncut_factors(
    L, d, lam, U, grad_lam, grad_Z, normalized, gaps, cg_tol, max_iter, on_fail="warn"
):
    """``(P, c, g)`` with ``dL/dW = -c c^T o sym(P U^T) + sym(g 1^T)`` (symmetric part),
    i.e. ``ncut_grad_assemble(P, U, c, g)``, from the k pairs alone (shifted solves)."""
    from diffeig._lobpcg import partial_eigh_factor

    apply = L if callable(L) else (lambda Y: L @ Y)
    k = U.shape[-1]
    if not normalized:
        grad_Z = _drop_trivial_coupling(grad_Z, U)
    grad_U, grad_d = _ncut_grad_inputs(grad_lam, grad_Z, U, d, k, normalized)
    # dL/dL_sym = sym(P U^T), never formed.
    # D - W: Jacobi-preconditioned solves (its diagonal ~ D spreads with the degrees).
    P = partial_eigh_factor(
        L,
        lam,
        U,
        grad_lam,
        grad_U,
        *gaps,
        cg_tol=cg_tol,
        cg_max_iter=max_iter,
        diagonal=None if normalized else d,
        gap_scale=ncut_spectral_bound(d, normalized),
        on_fail=on_fail,
    )
    if not normalized:
        return P, torch.ones_like(d), (P * U).sum(-1)
    # sum_j gL_ij W_ij dis_j from dis_i W_ij dis_j = delta_ij - L_ij, L U = U diag(l) and
    # one product L P: s_i = (P_i . U_i (1 - l) + U_i . (P - L P)_i) / dis_i.
    dis = d.rsqrt()
    s = ((P * U * (1 - lam.unsqueeze(-2))).sum(-1) + (U * (P - apply(P))).sum(-1)) / dis
    return P, dis, grad_d + 0.5 * dis**3 * s


def _normalized_laplacian(X, W, dis):
    return X - dis * (W(dis * X) if callable(W) else W @ (dis * X))


def _unnormalized_laplacian(X, W, d):
    return d * X - (W(X) if callable(W) else W @ X)


def laplacian_operator(W, d: torch.Tensor, normalized: bool):
    """``X -> L @ X`` from ``W`` (a tensor, or a function ``X -> W @ X``) and its degrees,
    without forming ``L``: one product with W per application. For a tensor W it is a
    :class:`diffeig._lobpcg.BatchedOperator`, which the solvers restrict to the matrices
    still iterating."""
    from diffeig._lobpcg import BatchedOperator, Symmetric

    if normalized:
        fn, vec = _normalized_laplacian, d.rsqrt().unsqueeze(-1)
    else:
        fn, vec = _unnormalized_laplacian, d.unsqueeze(-1)
    if callable(W):
        return lambda X: fn(X, W, vec)
    return BatchedOperator(fn, Symmetric(W), vec, batch_shape=d.shape[:-1])


class _NCutLobpcg(torch.autograd.Function):
    """The k smallest NCut pairs by LOBPCG on ``X -> L @ X`` (L never formed); backward
    by shifted solves through the same products with W."""

    # forward / setup_context / vmap: so that torch.func.vmap (and grad) apply. The
    # degrees and orthonormal vectors the backward needs are returned as extra,
    # non-differentiable outputs (the public function drops them).

    @staticmethod
    def forward(W, k, normalized, sign, gaps, solver):
        tol, max_iter, on_fail, cg_tol, tie_rtol = solver
        # W is symmetric (checked); the backward returns the symmetric gradient.
        d = W.sum(-1)
        lap = laplacian_operator(W, d, normalized)
        lam, U, Z = lobpcg_ncut_pairs(lap, d, k, normalized, sign, tol, max_iter, on_fail, tie_rtol)
        return lam, Z, d, U

    @staticmethod
    def setup_context(ctx, inputs, output):
        W, _, normalized, _, gaps, solver = inputs
        lam, _, d, U = output
        ctx.mark_non_differentiable(d, U)
        ctx.save_for_backward(W, d, lam, U)
        ctx.args = (normalized, gaps, solver[3], solver[1], solver[2])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_lam, grad_Z, *_):
        W, d, lam, U = ctx.saved_tensors
        if grad_lam is None and grad_Z is None:
            return None, None, None, None, None, None
        if grad_lam is None:
            grad_lam = torch.zeros_like(lam)
        if grad_Z is None:
            grad_Z = torch.zeros_like(U)
        gW = _NCutLobpcgGrad.apply(W.detach(), d, lam, U, grad_lam, grad_Z, ctx.args)
        return gW, None, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, W, k, normalized, sign, gaps, solver):
        # The solver is batched already: move the mapped dimension to the front.
        out = _NCutLobpcg.apply(W.movedim(in_dims[0], 0), k, normalized, sign, gaps, solver)
        return out, (0, 0, 0, 0)


class _NCutLobpcgGrad(torch.autograd.Function):
    """dL/dW of :class:`_NCutLobpcg` (shifted CG solves with data-dependent stopping),
    as a function with its own vmap rule, so that ``vmap(grad(f))`` runs it batched."""

    @staticmethod
    def forward(W, d, lam, U, grad_lam, grad_Z, args):
        lap = laplacian_operator(W, d, args[0])
        P, c, g = lobpcg_ncut_factors(lap, d, lam, U, grad_lam, grad_Z, *args)
        return _ops.ncut_grad_assemble(P, U, c, g)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("sym_eigh_ncut(method='lobpcg') does not support double backward")

    @staticmethod
    def vmap(info, in_dims, W, d, lam, U, grad_lam, grad_Z, args):
        tensors = _ops._batched_first(info, in_dims[:6], (W, d, lam, U, grad_lam, grad_Z))
        return _NCutLobpcgGrad.apply(*tensors, args), 0


def _ncut_lobpcg(W, k, normalized, sign, gap_rtol, gap_atol, tol, max_iter, on_fail, tie_rtol=None):
    from diffeig._eigsh import check_solver_options
    from diffeig._lobpcg import default_tol

    check_solver_options(tol, max_iter, on_fail)
    cg_tol = default_tol(W.dtype) if tol is None else tol
    lam, Z, *_ = _NCutLobpcg.apply(
        W, k, normalized, sign, (gap_rtol, gap_atol), (tol, max_iter, on_fail, cg_tol, tie_rtol)
    )
    return lam, Z


def affinity(
    features: torch.Tensor,
    *,
    tau: float = 0.0,
    eps: float = 1e-6,
    mode: str = "weighted",
    normalize: bool = True,
) -> torch.Tensor:
    """Token affinities from features: cosine similarity, thresholded.

    ``A = f f^T`` with ``f`` L2-normalized over channels (``normalize=False``: the
    features as given, raw dot products), symmetrized exactly.
    ``mode='weighted'``: ``W = A where A > tau else eps`` (the DNCut training graph,
    ``tau=0``, ``eps=1e-6``), differentiable in ``features``. ``mode='binary'``:
    ``W = 1 where A > tau else eps`` (TokenCut: ``tau=0.2``, ``eps=1e-5``), piecewise
    constant, so its gradient is zero.

    Args:
        features: ``(*, N, C)``.
        tau: similarity threshold.
        eps: weight of the pairs at or below ``tau`` (keeps the graph connected).
        mode: ``'weighted'`` or ``'binary'``.
        normalize: L2-normalize the features first (default).

    Returns:
        ``(*, N, N)`` affinity of the features' dtype.
    """
    if not isinstance(features, torch.Tensor) or features.dim() < 2:
        raise ValueError(
            "features must be a tensor of shape (*, N, C), got "
            f"{getattr(features, 'shape', type(features).__name__)}"
        )
    if mode not in ("weighted", "binary"):
        raise ValueError(f"mode must be 'weighted' or 'binary', got {mode!r}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite non-negative number, got {eps}")
    if not math.isfinite(tau):
        raise ValueError(f"tau must be finite, got {tau}")
    # NaN similarities would fall below tau and become eps: a finite graph from garbage.
    if _values_readable(features) and not bool(torch.isfinite(features).all()):
        raise ValueError("features must be finite, got NaN or inf entries")
    f = torch.nn.functional.normalize(features, dim=-1) if normalize else features
    A = f @ f.mT
    A = 0.5 * (A + A.mT)
    keep = A > tau
    if mode == "weighted":
        return torch.where(keep, A, torch.full_like(A, eps))
    return torch.where(keep, torch.ones_like(A), torch.full_like(A, eps)).detach()


def seed(z: torch.Tensor) -> torch.Tensor:
    """Index of the entry of largest magnitude (TokenCut's seed), ``(*, N) -> (*)``; of
    entries tied with it to rounding (``max(1e-9, 100 eps)`` relative), the first.

    TokenCut's ``np.argmax`` takes the first of the entries that are *bitwise* equal to the
    maximum; on binary graphs many are equal in exact arithmetic, and which of them come
    out bitwise equal depends on the eigensolver's rounding. Taking the first of the
    near-ties is the same choice whenever the first of them came out bitwise equal to the
    maximum there, and a choice that does not depend on the solver (dense or LOBPCG)."""
    a = z.abs()
    rtol = max(1e-9, 100 * torch.finfo(a.dtype).eps) if a.is_floating_point() else 0.0
    tied = a >= a.amax(-1, keepdim=True) * (1 - rtol)
    return tied.to(torch.uint8).argmax(-1)  # the first True


def bipartition(z: torch.Tensor, *, rule: str = "zero", foreground: str | None = None):
    """Split nodes in two by an eigenvector and say which side is foreground.

    Args:
        z: ``(*, N)`` eigenvector (the Fiedler vector ``z2``).
        rule: ``'zero'`` splits at ``z > 0``; ``'mean'`` at ``z > mean(z)`` (TokenCut).
        foreground: which side is foreground: ``'smaller'`` (the side with fewer nodes,
            the DNCut "Simple" post-processing; on a tie the ``z > threshold`` side) or
            ``'seed'`` (the side holding ``argmax |z|``, TokenCut). Default: ``'smaller'``
            for ``rule='zero'`` and ``'seed'`` for ``rule='mean'``.

    Returns:
        ``(*, N)`` boolean foreground mask.
    """
    if rule not in ("zero", "mean"):
        raise ValueError(f"rule must be 'zero' or 'mean', got {rule!r}")
    if foreground is None:
        foreground = "smaller" if rule == "zero" else "seed"
    if foreground not in ("smaller", "seed"):
        raise ValueError(f"foreground must be 'smaller' or 'seed', got {foreground!r}")
    thr = 0.0 if rule == "zero" else z.mean(-1, keepdim=True)
    above = z > thr
    if foreground == "smaller":
        n_above = above.sum(-1, keepdim=True)
        flip = 2 * n_above > z.shape[-1]
    else:
        flip = ~torch.gather(above, -1, seed(z).unsqueeze(-1))
    return above ^ flip


# The matrix-free variant is built on the LOBPCG helpers above; imported last, so that
# diffeig.ncut.ncut_operator is the function itself, with its real signature.
from diffeig._ncut_operator import ncut_operator  # noqa: E402
