"""Which solver a dense W's NCut takes: ``method='auto'``'s rule (dense or LOBPCG, and
the dense solve where the k-th eigenvalue ties the next), LOBPCG's iteration budget
under ``auto``, and when one graph's Fiedler pair goes to Lanczos."""

from __future__ import annotations

import torch

from diffeig._eigsh import auto_method
from diffeig._lobpcg import default_block
from diffeig._tolerances import AUTO_MIN_ITERATIONS, AUTO_NODES_PER_ITERATION, DENSE_BELOW

__all__ = ["TiedSpectrum", "auto_budget", "choose_method", "uses_lanczos"]


def choose_method(method: str, W: torch.Tensor, k: int) -> tuple[str, float | None]:
    """``'dense'`` or ``'lobpcg'`` for ``method``, and the tie tolerance that makes
    ``'auto'`` fall back to the dense solve (``None`` unless ``method='auto'``).

    ``'auto'`` takes the faster solver for this device, N and k (the trivial pair is
    deflated exactly: LOBPCG iterates on k - 1 pairs), and returns what ``'dense'``
    returns: where the k-th eigenvalue ties the next (to ``sqrt(eps)`` of the spectrum's
    bound) the k-th vector is any of a subspace, and LAPACK's choice is the answer (the
    binary graph of an all-similar image)."""
    if method != "auto":
        return method, None
    return auto_method(W.shape[-1], k - 1, W.device), torch.finfo(W.dtype).eps ** 0.5


class TiedSpectrum(Exception):
    """Raised (and caught) inside ``method="auto"``: the k-th eigenvalue ties the next, or
    LOBPCG would cost more than the dense solve; auto then solves densely."""


def auto_budget(n: int) -> int:
    """The iterations ``method='auto'`` gives LOBPCG on graphs of ``n`` nodes."""
    return max(AUTO_MIN_ITERATIONS, n // AUTO_NODES_PER_ITERATION)


def uses_lanczos(W: torch.Tensor, k: int, normalized: bool, tie_rtol) -> bool:
    """Whether the Fiedler pair of one graph is found by Lanczos
    (:func:`lanczos_ncut_pairs`) rather than LOBPCG: one dense graph (no batch), the
    normalized cut, k = 2, no certified gap asked for (``method='lobpcg'``; ``'auto'``
    certifies the gap above l2, which a single Krylov vector cannot), and N past five
    times LOBPCG's default block (27 nodes and more; smaller graphs keep LOBPCG's path,
    which solves them densely below its own cut-off)."""
    n = W.shape[-1]
    return (
        W.dim() == 2
        and k == 2
        and normalized
        and tie_rtol is None
        and n - 1 > DENSE_BELOW * default_block(1, n - 1)
    )
