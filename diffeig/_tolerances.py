"""Every numeric default of the solvers and their backward, named once.

The floor under the solvers: each threshold is defined here with a line on where it
comes from, and the modules that use it import it (``docs/design.md``, "Tolerances",
has the measurements behind each). Nothing here is mutable state: settings a caller
may change (the multigrid's, a solve's ``tol``) are arguments whose defaults these are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "SolverOptions",
    "default_gap_rtol",
    "resolved_gap_rtol",
    "default_tol",
    "stall_floor",
    "eigenvalue_converged",
]

# ------------------------------------------------------------- ties in the backward


def default_gap_rtol(n: int, dtype: torch.dtype) -> float:
    """The default tie threshold of an n x n matrix's backward, relative to ``max|l|``:
    ``max(c(n) eps, eps^(3/4))`` (``eps`` of the dtype, ``c(n) = max(n, 16 sqrt(n))``).
    Two measured bounds, the larger wins:

    - ``c(n) eps``: the spread LAPACK leaves between exactly tied eigenvalues. Over
      rotated tied spectra (``Q diag(l) Q^T``, n = 2 ... 64, float32 and float64, 40
      random Q each) it reaches ``2.8 n eps max|l|`` at n = 4 and ``5.5 sqrt(n) eps
      max|l|`` overall; ``16 sqrt(n)`` leaves a factor of about 3.
    - ``eps^(3/4)`` (1.8e-12 in float64, 6.4e-6 in float32): below it the unmasked term
      is mostly rounding. A gap g (relative to ``max|l|``) enters as ``X_ij / g`` where
      ``X_ij`` carries an error of about ``eps`` (and the eigenvectors one of
      ``eps / g``), so the term's relative error is ``eps / g``: ``eps^(1/4)`` (1e-4) at
      the threshold.

    Relative, so the rule is the same at every scale of A (xitorch's absolute
    ``eps^0.6`` = 4e-10 masks true gaps of 1e-10 at unit scale, and every gap of a matrix
    scaled by 1e-10).
    """
    eps = torch.finfo(dtype).eps
    return max(max(n, 16 * math.sqrt(n), 1) * eps, eps**0.75)


def resolved_gap_rtol(gap_rtol: float, tol: float | None, dtype: torch.dtype) -> float:
    """The tie threshold (relative to the spectrum's bound) of a backward from an
    iterative solver's pairs: Ritz values lie within their residual (``tol`` times the
    bound) of eigenvalues, so two of them closer than twice that may be one tied
    eigenvalue, and ``1 / gap`` would divide the solver's error. Masked, the gradient is
    that of a tie, as the dense path gives where the eigenvalues tie."""
    return max(gap_rtol, 2 * (default_tol(dtype) if tol is None else tol))


# ----------------------------------------------------------- the iterative solvers

# LOBPCG's default relative residual: eps ** TOL_EXPONENT, at least TOL_FLOOR. In float32
# (7e-5) eigenvector errors tol / gap stay near 1e-5 in cosine for NCut gaps of a few 1e-2;
# in float64 the Gram-matrix Rayleigh-Ritz stalls near 1e-10, so 1e-9 is the floor.
TOL_EXPONENT = 0.6
TOL_FLOOR = 1e-9


def default_tol(dtype: torch.dtype) -> float:
    """Relative residual tolerance: ``eps ** 0.6``, at least 1e-9 (see above)."""
    return max(torch.finfo(dtype).eps ** TOL_EXPONENT, TOL_FLOOR)


# Edges per chunk of the sparse path's per-edge passes (pattern checks, multigrid setup,
# island search, edge Rayleigh quotients): their temporaries are a few numbers per edge
# of a chunk, not of every stored weight.
EDGE_CHUNK = 1 << 22


# Relative residual of a solve whose vectors are only thresholded into masks (pixel-ncut's
# pixel graph, MaskCut's token graphs): far less than float64's 1e-9 suffices (an entry
# moves by about tol / gap, and masks agree with the dense solve's to IoU >= 0.99; pixel
# graphs take 18 instead of 39 products with W on a generated 320 px image).
MASK_TOL = 1e-7


@dataclass(frozen=True)
class SolverOptions:
    """What an iterative solve and its implicit backward are told, passed whole.

    ``tol``: the solver's relative residual (``None``: :func:`default_tol` of the dtype),
    also the backward's CG tolerance (:meth:`cg_tol`); ``max_iter``: the limit of both;
    ``on_fail``: ``'warn'``, ``'raise'`` or ``'defer'`` where a solve stops short;
    ``gap_rtol`` / ``gap_atol``: the backward's tie rule (:func:`diffeig.gap_tolerances`, then
    :func:`resolved_gap_rtol` for iterative pairs); ``tie_rtol``: ``method='auto'``'s
    rule, hand the solve to the dense path where the k-th eigenvalue ties the next to
    this (relative to the bound; ``None``: off); ``block``: LOBPCG's block (``None``: its
    default)."""

    tol: float | None = None
    max_iter: int = 1000
    on_fail: str = "warn"
    gap_rtol: float = 0.0
    gap_atol: float = 0.0
    tie_rtol: float | None = None
    block: int | None = None

    def cg_tol(self, dtype: torch.dtype) -> float:
        """The backward's CG tolerance: ``tol``, or the dtype's default."""
        return default_tol(dtype) if self.tol is None else self.tol

    @property
    def gaps(self) -> tuple[float, float]:
        return self.gap_rtol, self.gap_atol


# A small Ritz value's own test (eigenvalue_rtol) also passes at tol ** STALL_EXPONENT:
# about where LOBPCG's and Lanczos' rounding stalls (Knyazev 2001, sec. 4; measured).
STALL_EXPONENT = 4.0 / 3.0


def stall_floor(tol: float) -> float:
    """The residual at which a small eigenvalue counts as converged whatever its gap."""
    return tol**STALL_EXPONENT


def eigenvalue_converged(rel, l2, gap, tol: float, floor: float):
    """The stopping rule for a Ritz value relative to itself (LOBPCG's ``eigenvalue_rtol``
    and the Lanczos Fiedler solve, whose C++ kernel receives ``tol`` and ``floor``): its
    error is about ``r^2 / gap``, so the pair is converged once ``r^2 <= tol l2 gap``, or
    once ``r <= floor`` (:func:`stall_floor`). ``rel``, ``l2``, ``gap``: floats or tensors,
    all relative to the spectrum's bound."""
    return (rel * rel <= tol * l2 * gap) | (rel <= floor)


# A guard Ritz pair certifies the gap above the k-th pair once its residual is below tol
# or below this fraction of that gap (its Ritz value then bounds the (k+1)-th eigenvalue).
CERTIFY_GAP_FRACTION = 0.1

# Warn where the k-th vector's error bound (residual over the gap to the next Ritz value)
# exceeds this: the bound is pessimistic (a 2e-11 gap with 1e-12 residuals gave a vector
# 6e-6 off, bound 1e-2), so only what is likely wrong by a tenth is said.
UNRESOLVED = 0.1

# Solve densely when N (less the deflated constraints) is at most this many LOBPCG blocks.
DENSE_BELOW = 5
# Matrix-free operators are materialized for a dense fallback only up to this N.
MAX_FALLBACK_N = 8192
# Batched solvers restrict their operator to the unconverged matrices once this fraction or
# fewer is still iterating (benchmarks/README.md, "Compaction").
COMPACT_BELOW = 0.95

# method='auto': where LOBPCG (forward + backward) beats the dense solve on CPU, N* by the
# number of pairs LOBPCG iterates on; interpolated linearly between the points, extended as
# the last segment beyond (benchmarks/README.md, "method='auto'").
AUTO_CROSSOVER_CPU = ((1, 100), (2, 500), (4, 650), (7, 2000))
# auto's LOBPCG gets max(AUTO_MIN_ITERATIONS, N / AUTO_NODES_PER_ITERATION) iterations
# before the dense solve takes over: an iteration costs about N / 8-th of a dense solve.
AUTO_MIN_ITERATIONS = 40
AUTO_NODES_PER_ITERATION = 8

# LOBPCG's block for the NCut in float64 by the number of pairs it iterates on (else the
# default block): one guard vector for the one Fiedler pair halves an iteration's cost,
# at z2's error residual / (l3 - l2) instead of / (l7 - l2) (docs/ncut.md, "Block").
NCUT_BLOCK = {torch.float64: {1: 2}}

# Most Lanczos steps (vectors kept) before one graph's Fiedler pair goes to LOBPCG.
LANCZOS_MAX_STEPS = 256
# The Lanczos start's random part relative to the degrees' part (both unit vectors):
# enough to give every eigenvector a share of the start.
LANCZOS_NOISE = 0.1

# The NCut's eigenvalues below this (relative to the bound) are refined from the edges,
# where l = sum w (z_i - z_j)^2 keeps the relative accuracy that L's rounding loses.
SMALL_EIGENVALUE = 1e-4

# ---------------------------------------------------------------- sparse near-islands

# An edge is weak when its weight is at most this share of the larger of its two degrees;
# the components of the other edges are the near-islands (a start only, so generous).
ISLAND_RTOL = 1e-2
# The quotient graph is solved densely up to this many components per graph (beyond it,
# no start is made and LOBPCG is left alone).
MAX_COMPONENTS = 1024
# Only the quotient's pairs below this share of the spectrum's bound start LOBPCG (a start
# from the degrees finds the larger ones).
ISLAND_EIGENVALUE = 1e-6

# ------------------------------------------------------------------------- multigrid

# Aggregation stops at this many nodes per graph; the rest is a dense pseudo-inverse.
COARSEST = 256
# Levels at most (each shrinks the graph several-fold).
MAX_LEVELS = 20
# Pointer-tree depth kept in one aggregate (deeper nodes become roots).
MAX_DEPTH = 4
# The hierarchy ends where a level keeps more than this fraction of its nodes.
MIN_SHRINK = 0.9
# Damped Jacobi (the textbook 2/3) and its sweeps before / after the coarse correction.
OMEGA = 2.0 / 3.0
SWEEPS = 1
# Unsmoothed aggregation's coarse correction is too small; this scales it (Vanek, Mandel
# & Brezina 1996, sec. 5, on over-correction).
OVER_CORRECTION = 1.6
