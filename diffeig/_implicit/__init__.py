"""The implicit backward of every partial eigensolver, in one package: from the k pairs a
solver returned, ``dL/dA = sym(P X^T)`` with ``P`` from masked reciprocal gaps within the
pairs and shifted solves for the rest of the space (``docs/math.md``, "Iterative").

- :mod:`~diffeig._implicit.cg`: the one conjugate-gradient solver, preconditioned or not;
- :mod:`~diffeig._implicit.factor`: the shifted operators and the gradient factor
  (:func:`partial_eigh_factor`), and :class:`ImplicitGrad`, the one autograd Function of
  the iterative backward (``eigsh`` and the dense W's NCut);
- :mod:`~diffeig._implicit.ncut`: the NCut's terms around it (the Laplacian as products
  with W, the trivial pair, the degree term) and the assembly of ``dL/dW`` at dense or
  sparse W, which the dense-iterative, matrix-free and sparse NCut paths call.
"""

from diffeig._implicit.cg import batched_cg
from diffeig._implicit.factor import ImplicitGrad, partial_eigh_backward, partial_eigh_factor
from diffeig._implicit.ncut import (
    assemble_at_edges,
    dense_ncut_grad,
    laplacian_operator,
    ncut_factors,
)

__all__ = [
    "ImplicitGrad",
    "assemble_at_edges",
    "batched_cg",
    "dense_ncut_grad",
    "laplacian_operator",
    "ncut_factors",
    "partial_eigh_backward",
    "partial_eigh_factor",
]
