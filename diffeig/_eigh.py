"""``diffeig.eigh`` and ``diffeig.eigvalsh``: drop-ins for ``torch.linalg``'s.

The forward is ``torch.linalg.eigh`` (LAPACK / cuSOLVER through ATen). The backward
is Giles' formula (Giles 2008; the eigenvector derivative of Magnus 1985) with masked
reciprocal eigen-gaps (``docs/math.md``), so that it stays finite when eigenvalues tie.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import torch

from diffeig import _ops
from diffeig._checks import (
    check_gap_eps,
    check_out,
    check_phase_invariance,
    check_square,
    check_uplo,
    needs_derivative,
    one_input,
    values_readable,
    write_out,
)
from diffeig._reference import torch_eigh as _torch_eigh
from diffeig._reference import torch_eigvalsh as _torch_eigvalsh
from diffeig._scaling import scale2, unit_scale
from diffeig._tolerances import default_gap_rtol

__all__ = ["eigh", "eigvalsh", "patch_torch", "gap_tolerances"]

_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


def gap_tolerances(gap_eps: float | None, n: int, dtype: torch.dtype) -> tuple[float, float]:
    """The ``(gap_rtol, gap_atol)`` pair for a user's ``gap_eps``.

    ``gap_eps=None`` (the default) treats two eigenvalues of an n x n matrix as tied
    when ``|l_i - l_j| < max(c(n) eps, eps^(3/4)) * max|l|`` (``eps`` of the dtype,
    ``c(n) = max(n, 16 sqrt(n))``; :func:`diffeig._tolerances.default_gap_rtol` has where
    both bounds come from). A number is an absolute threshold (the paper uses ``1e-9``).
    """
    check_gap_eps(gap_eps)
    if gap_eps is None:
        return default_gap_rtol(n, dtype), 0.0
    return 0.0, float(gap_eps)


def eigh_backward(L, V, grad_L, grad_V, gap_rtol: float, gap_atol: float):
    """``gA = herm(V (diag(gL) + K^T o V^H gV) V^H)`` with masked reciprocal gaps.

    Written with differentiable operations (and ``eigh_backward_core`` has its own
    autograd formula), so it can itself be differentiated.
    """
    if grad_V is None:
        if grad_L is None:
            return None
        return (V * grad_L.to(V.dtype).unsqueeze(-2)) @ V.mH
    X = V.mH @ grad_V
    check_phase_invariance(X)
    M = _ops.eigh_backward_core(L, X, grad_L, gap_rtol, gap_atol)
    gA = V @ M @ V.mH
    return 0.5 * (gA + gA.mH)


class _Eigh(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(A, UPLO, gap_rtol, gap_atol):
        L, V = _torch_eigh(A, UPLO=UPLO)
        return L, V  # a plain tuple: torch.func flattens outputs as pytrees

    @staticmethod
    def setup_context(ctx, inputs, output):
        L, V = output
        ctx.gaps = inputs[2:]
        ctx.save_for_backward(L, V)
        ctx.save_for_forward(L, V)

    @staticmethod
    def backward(ctx, grad_L, grad_V):
        L, V = ctx.saved_tensors
        return eigh_backward(L, V, grad_L, grad_V, *ctx.gaps), None, None, None


class _EighWithJvp(_Eigh):
    """``_Eigh`` plus forward-mode AD. Dynamo cannot trace a Function that defines
    ``jvp``, so ``torch.compile`` gets :class:`_Eigh` and eager code gets this one."""

    @staticmethod
    def jvp(ctx, dA, *_):
        L, V = ctx.saved_tensors
        X = V.mH @ dA @ V
        dL = torch.diagonal(X, dim1=-2, dim2=-1)
        dL = dL.real if dL.is_complex() else dL
        dV = V @ _ops.eigh_backward_core(L, X, None, *ctx.gaps)
        return dL, dV


def eigh(
    A: torch.Tensor | None = None,
    UPLO: str = "L",
    *,
    gap_eps: float | None = None,
    input: torch.Tensor | None = None,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    r"""Eigendecomposition of Hermitian matrices whose gradient survives tied eigenvalues.

    Same contract as :func:`torch.linalg.eigh`: ascending eigenvalues, orthonormal
    eigenvectors in the columns, only the ``UPLO`` triangle read. The backward is

    .. math::
        \bar A = V \big(\operatorname{diag}(\bar\lambda) + K^T \circ
        \operatorname{skew}(V^H \bar V)\big) V^H,
        \qquad K_{ij} = \frac{1}{\lambda_i - \lambda_j},

    with ``K_ij = 0`` where ``|l_i - l_j| < gap`` (and on the diagonal). Masking is exact
    for losses that are invariant to rotations inside a degenerate eigenspace and for
    losses that use only non-degenerate eigenvectors, e.g. the top eigenvector of
    ``diag(4, 1, 1)``, where ``torch.linalg.eigh`` returns NaN. Like torch, the gradient
    is returned as a Hermitian matrix.

    Args:
        A: ``(*, n, n)`` Hermitian matrices, float32/float64/complex64/complex128
            (``input=`` as torch names it works too).
        UPLO: ``'L'`` or ``'U'``, the triangle of ``A`` that is read.
        gap_eps: eigenvalues closer than this are treated as tied in the backward.
            ``None`` (default) is dtype-aware:
            ``max(max(n, 16 sqrt(n)) * eps, eps^(3/4)) * max|l|``
            per matrix, a bound of the rounding error of the computed eigenvalues
            (:func:`gap_tolerances`). ``1e-9`` reproduces the
            DNCut paper.
        out: ``(eigenvalues, eigenvectors)`` tensors to write the results into (resized
            as torch's ``out=``; their dtypes must be the results'). As in torch, ``out=``
            does not support autograd.

    Returns:
        ``torch.return_types.linalg_eigh(eigenvalues, eigenvectors)`` (the ``out``
        tensors where given).

    Shape:
        ``eigenvalues``: ``(*, n)`` real; ``eigenvectors``: ``(*, n, n)``.

    Numerical notes:
        Non-finite input gives what ``torch.linalg.eigh`` gives (NaN eigenvalues, or its
        convergence error). For complex input a loss that depends on the eigenvectors'
        phases raises torch's error. Double backward and forward-mode AD (``jvp``) are
        supported; so are ``torch.compile``, ``torch.func.vmap`` and ``jacrev``.

    Example:
        >>> import torch, diffeig
        >>> Q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
        >>> A = (Q @ torch.diag(torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64)) @ Q.T)
        >>> A = A.requires_grad_()
        >>> L, V = diffeig.eigh(A)
        >>> V[:, -1].abs().sum().backward()
        >>> bool(A.grad.isfinite().all())
        True
    """
    A = one_input(A, input, "eigh")
    check_square(A, "A", _DTYPES)
    check_uplo(UPLO)
    gap_rtol, gap_atol = gap_tolerances(gap_eps, A.shape[-1], A.dtype)
    # Far from unit scale the gaps underflow to subnormals (1 / gap overflows): solve at
    # unit scale, scale the eigenvalues back (exactly: s is a power of two).
    e = unit_scale(A.detach().abs().amax().item()) if values_readable(A) else 0
    if e:
        A, gap_atol = scale2(A, -e), scale2(gap_atol, -e)
    check_out(out, 2, "eigh", A)
    fn = _Eigh if torch.compiler.is_compiling() else _EighWithJvp
    L, V = fn.apply(A, UPLO, gap_rtol, gap_atol)
    if e:
        L = scale2(L, e)
    return torch.return_types.linalg_eigh(write_out(out, (L, V)))


def eigvalsh(
    A: torch.Tensor | None = None,
    UPLO: str = "L",
    *,
    input: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eigenvalues of Hermitian matrices, ascending: a drop-in for ``torch.linalg.eigvalsh``.

    Eigenvalue gradients (``V diag(gl) V^H``) are finite even for tied eigenvalues;
    when ``A`` needs no derivative the eigenvectors are not computed.

    Args:
        A: ``(*, n, n)`` Hermitian matrices (float32/float64/complex64/complex128).
        UPLO: ``'L'`` or ``'U'``, the triangle of ``A`` that is read.

    Returns:
        ``(*, n)`` real eigenvalues in ascending order.

    Example:
        >>> import torch, diffeig
        >>> diffeig.eigvalsh(torch.eye(2, dtype=torch.float64) * 3)
        tensor([3., 3.], dtype=torch.float64)
    """
    A = one_input(A, input, "eigvalsh")
    check_square(A, "A", _DTYPES)
    check_uplo(UPLO)
    check_out(None if out is None else (out,), 1, "eigvalsh", A)
    if needs_derivative(A):
        L = eigh(A, UPLO).eigenvalues
    else:
        L = _torch_eigvalsh(A, UPLO=UPLO)
    return L if out is None else write_out((out,), (L,))[0]


_PATCH_LOCK = threading.Lock()
_ACTIVE_PATCHES: list = []  # (token, eigh, eigvalsh) of every open patch_torch, oldest first


def _install_top_patch() -> None:
    """Make torch's functions those of the newest open patch, or torch's own when none
    is open. Called under ``_PATCH_LOCK`` whenever a patch opens or closes."""
    if _ACTIVE_PATCHES:
        _, torch.linalg.eigh, torch.linalg.eigvalsh = _ACTIVE_PATCHES[-1]
    else:
        torch.linalg.eigh, torch.linalg.eigvalsh = _torch_eigh, _torch_eigvalsh


class patch_torch(contextlib.ContextDecorator):
    """Make ``torch.linalg.eigh`` and ``torch.linalg.eigvalsh`` diffeig's, then restore them.

    For third-party code that calls ``torch.linalg.eigh`` by attribute lookup; code that
    bound the function earlier (``from torch.linalg import eigh``) is not affected.
    The patch is process-wide (not thread-local). Open patches form one registry: the
    newest open one is in effect, and closing any of them, in any order and from any
    thread, leaves the newest still-open one in effect, or torch's own functions once
    none is open. Nested uses restore correctly.

    Args:
        gap_eps: passed to :func:`diffeig.eigh` (``None``: the dtype-aware default).

    Example:
        >>> import torch, diffeig
        >>> A = torch.diag(torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64))
        >>> A = A.requires_grad_()
        >>> with diffeig.patch_torch():
        ...     V = torch.linalg.eigh(A).eigenvectors  # diffeig's backward
        >>> V[:, -1].sum().backward()
        >>> bool(A.grad.isfinite().all())
        True
        >>> @diffeig.patch_torch(gap_eps=1e-9)
        ... def spectral_layer(x):
        ...     return torch.linalg.eigh(x @ x.mT).eigenvalues
    """

    def __init__(self, gap_eps: float | None = None):
        gap_tolerances(gap_eps, 1, torch.float64)  # validate now, not on first call
        self.gap_eps = gap_eps
        self._tokens: list[object] = []

    def __enter__(self):
        gap_eps = self.gap_eps

        @functools.wraps(_torch_eigh)
        def patched_eigh(input, UPLO="L", *, out=None):
            if out is not None:  # the out= variant has no autograd in torch either
                return _torch_eigh(input, UPLO=UPLO, out=out)
            return eigh(input, UPLO, gap_eps=gap_eps)

        @functools.wraps(_torch_eigvalsh)
        def patched_eigvalsh(input, UPLO="L", *, out=None):
            if out is not None:
                return _torch_eigvalsh(input, UPLO=UPLO, out=out)
            return eigvalsh(input, UPLO)

        token = object()
        with _PATCH_LOCK:
            self._tokens.append(token)
            _ACTIVE_PATCHES.append((token, patched_eigh, patched_eigvalsh))
            _install_top_patch()
        return self

    def __exit__(self, *exc):
        with _PATCH_LOCK:
            # This instance's uses all patch alike, so which of its tokens closes does not
            # matter when one instance is entered from several threads.
            token = self._tokens.pop()
            _ACTIVE_PATCHES[:] = [p for p in _ACTIVE_PATCHES if p[0] is not token]
            _install_top_patch()
        return False
