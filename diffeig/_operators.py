"""The operators the iterative solvers multiply by, and their dense fallbacks.

:class:`BatchedOperator` (a batch of ``Y -> A Y``, restrictable to the matrices still
iterating), :class:`Symmetric` (products that read one triangle), the projector out of
known vectors, Gershgorin's bound, and the dense solve an operator falls back to
(materialized, with its constraints shifted past the spectrum).
"""

from __future__ import annotations

import math

import torch

from diffeig import _ops
from diffeig._reference import torch_eigh

__all__ = [
    "BatchedOperator",
    "Symmetric",
    "dense_pairs",
    "materialize",
    "matrix_times",
    "project",
    "restrictable",
    "scaled_operators",
    "spectral_bound",
]


class BatchedOperator:
    """``Y -> fn(Y, *data)`` for a batch of operators, restrictable to some of them.

    Every tensor in ``data`` has the batch's leading dimensions ``batch_shape`` (or
    broadcasts to them); an entry may also be another :class:`BatchedOperator` (an
    operator built on one), a :class:`Symmetric` batch of matrices, or ``None``.
    :meth:`restrict` indexes them all, so the iterative solvers can drop matrices that
    converged and stop paying for their products: a batch costs the sum of its matrices'
    iterations, not its slowest matrix's iterations times its size.
    """

    def __init__(self, fn, *data, batch_shape):
        self.fn, self.data, self.batch_shape = fn, data, tuple(batch_shape)

    def __call__(self, Y):
        return self.fn(Y, *self.data)

    def restrict(self, index: torch.Tensor | None = None) -> BatchedOperator:
        """The same operators with the batch flattened to one dimension and, given a 1-D
        ``index`` into it, only those matrices. Tensors are indexed (copied: they are
        small); a :class:`Symmetric` batch is not copied, only its index changes."""
        nb = len(self.batch_shape)

        def take(t):
            if t is None:
                return None
            if isinstance(t, (BatchedOperator, Symmetric)):
                return t.restrict(index)
            t = t.expand(*self.batch_shape, *t.shape[nb:])
            t = t.reshape(-1, *t.shape[nb:])
            return t if index is None else t.index_select(0, index)

        size = math.prod(self.batch_shape) if index is None else index.numel()
        return BatchedOperator(self.fn, *(take(t) for t in self.data), batch_shape=(size,))


class Symmetric:
    """A batch of symmetric matrices ``(*, N, N)`` for products ``S @ Y``, ``Y (*, N, m)``.

    Products go through ``diffeig::sym_matmul``: on CPU from N = 512 on it reads each
    matrix's lower triangle only (half of its bytes; the solvers' products are
    bandwidth-bound), and after :meth:`restrict` it multiplies the selected matrices in
    place, never copying them. The matrices must be symmetric (the callers check it): from
    N = 512 on the upper triangle is not read, as in ``torch.linalg.eigh``.
    """

    def __init__(self, A: torch.Tensor, index: torch.Tensor | None = None):
        self.base = A.reshape(-1, *A.shape[-2:]).contiguous()  # the batch, flattened
        self.index = index

    def restrict(self, index: torch.Tensor | None = None) -> Symmetric:
        """Matrices ``index`` (1-D, into the flattened batch, or into the current
        selection once restricted)."""
        if index is None:
            return self
        return Symmetric(self.base, index if self.index is None else self.index[index])

    def __matmul__(self, Y: torch.Tensor) -> torch.Tensor:
        out = _ops.sym_matmul(self.base, Y.reshape(-1, *Y.shape[-2:]), self.index)
        return out.reshape(Y.shape)


def restrictable(*ops) -> bool:
    return all(op is None or isinstance(op, BatchedOperator) for op in ops)


def matrix_times(Y, A):
    """``A @ Y`` (the function of a :class:`BatchedOperator` over a matrix batch)."""
    return A @ Y


def project(Y, C):
    """Remove from Y its components along the orthonormal columns of C."""
    if C is None:
        return Y
    if C.shape[-1] == 1:  # one vector (the NCut's trivial one): element-wise beats bmm
        return Y - C * (C * Y).sum(-2, keepdim=True)
    return Y - C @ (C.mT @ Y)


def spectral_bound(A: torch.Tensor) -> torch.Tensor:
    """``(*)`` largest absolute row sum of each ``(*, N, N)`` matrix: Gershgorin's bound
    of its spectral radius, from one read of A (chunked so that the ``|A|`` temporary is
    recycled rather than page-faulted anew)."""
    flat = A.detach().reshape(-1, *A.shape[-2:])
    if flat.shape[0] == 0 or A.shape[-1] == 0:
        return A.new_zeros(A.shape[:-2])
    return torch.cat([c.abs().sum(-1).amax(-1) for c in flat.split(32)]).reshape(A.shape[:-2])


def materialize(A, like):
    """``A`` as a dense ``(*, N, N)`` tensor (a function is applied to the identity)."""
    if not callable(A):
        return A
    n = like.shape[-1]
    eye = torch.eye(n, dtype=like.dtype, device=like.device).expand(*like.shape[:-1], n, n)
    M = A(eye.contiguous())
    return 0.5 * (M + M.mT)


def dense_pairs(A, k, largest, constraints):
    """The k extreme pairs of dense symmetric ``A`` orthogonal to the orthonormal
    ``constraints`` (an invariant subspace of A, e.g. known eigenvectors): they are the
    extreme pairs of ``A + s C C^T`` with the constraints shifted past the spectrum, so a
    degenerate eigenspace that meets them still gives vectors orthogonal to them."""
    if constraints is not None:
        shift = 2 * spectral_bound(A) + 1
        shift = -shift if largest else shift
        A = A + shift[..., None, None] * (constraints @ constraints.mT)
    return _extreme_pairs(A, k, largest)


def _extreme_pairs(A, k, largest):
    lam, V = torch_eigh(A)
    if largest:
        return lam[..., -k:].flip(-1), V[..., -k:].flip(-1)
    return lam[..., :k], V[..., :k]


def scaled_operators(matmul, preconditioner, X0, constraints, largest, scale):
    """The operator LOBPCG iterates on, ``Y -> sign A Y / scale`` (smallest eigenvalues of
    it are the wanted ones, its spectrum in [-1, 1] when ``scale`` bounds A), and the
    preconditioner; with a :class:`BatchedOperator` (and a restrictable preconditioner)
    on a flat batch ``(B, N, m)``, so that converged matrices can leave it.

    Returns ``(op, prec, X0, constraints, compact)``."""
    batch, (n, m) = X0.shape[:-2], X0.shape[-2:]
    inv = None
    if scale is not None:
        # On A / scale the residual test and the Gram matrices are the same at any scale
        # of A (at 1e-200 the squared residuals of A itself underflow to 0 and a random
        # block "converges").
        scale = scale.detach().to(X0.dtype)
        inv = torch.where(scale > 0, 1 / scale, 1.0)[..., None, None]

    def signed_scaled(Y, A, inv):
        AY = A(Y)
        AY = -AY if largest else AY
        return AY if inv is None else AY * inv

    B = math.prod(batch)
    compact = B > 1 and isinstance(matmul, BatchedOperator) and restrictable(preconditioner)
    if not compact:
        return (lambda Y: signed_scaled(Y, matmul, inv)), preconditioner, X0, constraints, False
    op = BatchedOperator(signed_scaled, matmul, inv, batch_shape=batch).restrict()
    prec = None if preconditioner is None else preconditioner.restrict()
    if constraints is not None:
        constraints = constraints.expand(*batch, n, constraints.shape[-1]).reshape(B, n, -1)
    return op, prec, X0.reshape(B, n, m), constraints, True
