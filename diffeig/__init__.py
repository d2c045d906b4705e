"""diffeig: differentiable symmetric eigendecomposition that stays finite on tied eigenvalues.

- :func:`eigh`, :func:`eigvalsh`: drop-ins for ``torch.linalg``'s, with a masked
  reciprocal-gap backward; :class:`patch_torch` swaps them into third-party code.
- :func:`eigsh`: k extreme eigenpairs by batched LOBPCG, backward by shifted solves.
- :func:`sym_eigh_ncut`: the normalized-cut eigenproblem with an O(N^2 k) backward;
  :mod:`diffeig.ncut` has the affinity and bipartition helpers.
- :mod:`diffeig.baselines`: the pseudo-inverse backward it replaces.

The fine-tuning recipe lives in ``diffeig.dncut`` and is never imported from here.
"""

from diffeig import _ops as _ops  # registers fake kernels, vmap and autograd of the native ops
from diffeig import baselines, ncut
from diffeig._eigh import eigh, eigvalsh, gap_tolerances, patch_torch
from diffeig._eigsh import LobpcgInfo, eigsh
from diffeig._extension import has_cuda_kernels, has_ops, load_error
from diffeig.ncut import sym_eigh_ncut

__version__ = "0.1.0"

__all__ = [
    "LobpcgInfo",
    "baselines",
    "eigh",
    "eigsh",
    "eigvalsh",
    "gap_tolerances",
    "has_cuda_kernels",
    "has_ops",
    "load_error",
    "ncut",
    "patch_torch",
    "sym_eigh_ncut",
]
