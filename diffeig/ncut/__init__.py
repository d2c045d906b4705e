"""The normalized-cut eigenproblem with an O(N^2 k) backward, and its graph helpers.

``sym_eigh_ncut`` returns the k smallest eigenpairs of a graph Laplacian built from a
symmetric non-negative affinity ``W``: validate, choose the method, solve. The solvers
live beside it, one concern a module (``docs/design.md``):

- ``_dense``: one ``torch.linalg.eigh``, the backward re-using its eigenvectors (the DNCut
  paper's Eqn. 8: a few skinny products and one write of ``dL/dW``);
- ``_iterative``: LOBPCG on the k pairs with the trivial pair deflated (Lanczos for one
  graph's Fiedler pair), backward by shifted solves, and the ``auto`` rule;
- ``_operator``: the matrix-free variant (:func:`ncut_operator`);
- ``graphs`` (:func:`affinity`), ``_cuts`` (:func:`seed`, :func:`bipartition`) and
  ``_kway`` (:func:`kway`, k segments from k eigenvectors).

``docs/ncut.md`` has the math.
"""

from __future__ import annotations

import torch

from diffeig._checks import (
    LAPLACIANS,
    SIGN_RULES,
    check_affinity,
    check_k,
    check_method,
    check_ncut_options,
    check_solver_options,
)
from diffeig._eigh import gap_tolerances
from diffeig._reference import max_asymmetry
from diffeig._scaling import scale2, unit_scale
from diffeig._sparse_checks import (
    check_info_for_sparse,
    check_sparse_layout,
    check_sparse_method,
    is_sparse,
)
from diffeig.ncut._common import unscaled_pairs
from diffeig.ncut._cuts import bipartition, seed
from diffeig.ncut._dense import solve_dense
from diffeig.ncut._iterative import TiedSpectrum, choose_method, solve_lobpcg
from diffeig.ncut._kway import kway
from diffeig.ncut._operator import ncut_operator
from diffeig.ncut._sparse import SparseInfo, solve_sparse
from diffeig.ncut.graphs import affinity, gaussian_affinity, pixel_affinity

__all__ = [
    "sym_eigh_ncut",
    "ncut_operator",
    "affinity",
    "gaussian_affinity",
    "pixel_affinity",
    "bipartition",
    "seed",
    "kway",
    "check_affinity",
    "SparseInfo",
    "max_asymmetry",
    "LAPLACIANS",
    "SIGN_RULES",
]


def sym_eigh_ncut(
    W: torch.Tensor,
    k: int = 2,
    *,
    laplacian: str = "ncut",
    gap_eps: float | None = None,
    sign: str | None = "max",
    method: str | None = None,
    tol: float | None = None,
    max_iter: int = 1000,
    on_fail: str = "warn",
    info: SparseInfo | None = None,
):
    r"""The k smallest eigenpairs of a graph's normalized cut, with a cheap exact backward.

    ``laplacian='ncut'`` solves the generalized problem of Shi & Malik (2000),
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
        W: ``(*, N, N)`` symmetric non-negative affinities, float32 or float64; or a
            torch sparse tensor: COO ``(N, N)`` or ``(B, N, N)`` (a batch), or CSR
            ``(N, N)``, with a symmetric pattern (pixel graphs,
            :func:`diffeig.ncut.pixel_affinity`). A sparse W is solved by LOBPCG with a
            multigrid preconditioner in ``O(nnz + N k)`` memory, never forming an N x N
            tensor; its gradient lives on the stored entries (``W.grad`` sparse with W's
            pattern, or the grad of the ``values`` the tensor was built from), and
            ``method='dense'`` is refused (pass ``W.to_dense()``). The outputs are dense.
        k: number of eigenpairs, ``1 <= k <= N``. Index 0 is the trivial pair
            (``l = 0``, ``z`` constant on a connected graph); index 1 is the Fiedler vector.
        laplacian: ``'ncut'`` or ``'unnormalized'``.
        gap_eps: tie threshold of the backward: ``None`` for
            ``max(max(N, 16 sqrt(N)) * eps, eps^(3/4)) * max|l|``
            (:func:`diffeig.gap_tolerances`),
            a number for an absolute threshold (``1e-9`` is the paper's).
        sign: ``'max'`` (default) flips each eigenvector so its entry of largest magnitude
            is positive; ``'sum'`` so that its sum is >= 0 (the authors' code);
            ``None`` keeps LAPACK's signs.
        method: ``None`` (default): ``'dense'`` for a dense W, ``'auto'`` for a sparse one.
            ``'dense'``: a full ``torch.linalg.eigh``, backward as above.
            ``'lobpcg'``: only the k pairs, by batched LOBPCG with the trivial pair
            deflated exactly; backward by shifted conjugate-gradient solves
            (:func:`diffeig.eigsh`). Needs ``l_k < l_{k+1}`` (a graph with more than k
            connected components makes the solves singular). One graph (a 2-D W) with
            k = 2 and ``laplacian='ncut'`` finds its Fiedler pair by Lanczos instead (one
            product with W a step, the iteration native: ``diffeig::ncut_lanczos``;
            LOBPCG takes over where it has not converged in 256 steps), with the same
            stopping rule and backward.
            ``'auto'``: whichever of the two is faster for this device, N and k
            (:func:`diffeig.ncut._choice.choose_method`: on CPU LOBPCG from N = 100
            for k = 2).
            Both give the same float64 results to the solver tolerance; wherever a
            returned eigenvalue ties another or the (k+1)-th (a gap not certified larger
            than ``sqrt(eps)`` of the spectrum's bound plus the Ritz residuals, e.g. the
            binary graph of an image whose tokens are all alike, a grid), a vector is
            any of a subspace, and ``'auto'`` returns the dense solve's.
        tol, max_iter, on_fail: LOBPCG's stopping rule (relative residual), iteration
            limit (Lanczos: at most that many steps too), and ``'warn'`` or ``'raise'``
            when it did not converge.
        info: a sparse W only: a :class:`diffeig.ncut.SparseInfo` to fill with what the
            solve did (products with W forward and, once the gradient is taken,
            backward; the multigrid's level sizes), as pyamg's ``residuals=`` list.

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
    check_ncut_options(laplacian, sign)
    check_solver_options(tol, max_iter, on_fail)  # also where the dense path ignores them
    normalized = laplacian == "ncut"
    if is_sparse(W):
        check_sparse_layout(W)
        method = "auto" if method is None else method
        check_method(method)
        check_sparse_method(method)
        gap_rtol, gap_atol = gap_tolerances(gap_eps, W.shape[-1], W.dtype)
        return solve_sparse(
            W, k, normalized, sign, gap_rtol, gap_atol, tol, max_iter, on_fail, info=info
        )
    check_info_for_sparse(info)
    method = "dense" if method is None else method
    e = unit_scale(check_affinity(W, normalized=normalized), power=4)
    k = check_k(k, W.shape[-1])
    check_method(method)
    method, tie_rtol = choose_method(method, W, k)
    gap_rtol, gap_atol = gap_tolerances(gap_eps, W.shape[-1], W.dtype)
    if e:
        # solved at unit scale, scaled back exactly by unscaled_pairs (2^e, e even)
        W = scale2(W, -e)
        gap_atol = gap_atol if normalized else scale2(gap_atol, -e)
    lam, Z = _solve(
        W, k, normalized, sign, method, (gap_rtol, gap_atol), tol, max_iter, on_fail, tie_rtol
    )
    return unscaled_pairs(lam, Z, e, normalized)


def _solve(W, k, normalized, sign, method, gaps, tol, max_iter, on_fail, tie_rtol):
    if method == "lobpcg":
        try:
            return solve_lobpcg(W, k, normalized, sign, *gaps, tol, max_iter, on_fail, tie_rtol)
        except TiedSpectrum:
            pass  # (only with tie_rtol, from auto) solved densely below
    return solve_dense(W, k, normalized, sign, *gaps)
