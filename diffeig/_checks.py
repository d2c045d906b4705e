"""Every argument check of diffeig's public functions, in one message style.

A check raises ``ValueError("<arg> must ..., got ...")`` (``TypeError`` only where Python
itself would). Checks that read values (finite, symmetric, non-negative, degrees) are
skipped where values cannot be read: empty tensors, the meta device, and tensors traced by
``torch.compile`` or a ``torch.func`` transform.

The sparse affinity's checks are its other half, :mod:`diffeig._sparse_checks`.

The floor under everything else: it imports torch and, for the one pass over a matrix that
the symmetry check makes, the native ``diffeig::symmetry_stats`` kernel or its twin. The
operators' own contracts (``TORCH_CHECK`` in ``csrc/checks.h``) are mirrored by their fake
kernels (:mod:`diffeig._ops`) and reference twins (:mod:`diffeig._reference`).
"""

from __future__ import annotations

import math
import operator
import warnings

import torch

from diffeig import _extension, _reference
from diffeig._scaling import scale2, unit_scale

__all__ = [
    "report_failure",
    "LAPLACIANS",
    "SIGN_RULES",
    "check_affinity",
    "check_choice",
    "check_features",
    "check_gap_eps",
    "check_k",
    "check_method",
    "check_ncut_options",
    "check_phase_invariance",
    "check_solver_options",
    "check_square",
    "check_symmetric",
    "check_uplo",
    "is_traced",
    "needs_derivative",
    "one_input",
    "values_readable",
]

LAPLACIANS = ("ncut", "unnormalized")
SIGN_RULES = ("max", "sum", None)
FLOAT_DTYPES = (torch.float32, torch.float64)


# ------------------------------------------------------------------ can values be read?


def is_traced(t: torch.Tensor) -> bool:
    """True under torch.compile or a torch.func transform, where values can't be read."""
    if torch.compiler.is_compiling():
        return True
    functorch = torch._C._functorch
    # batched tensors also come from the legacy vmap of gradcheck's batched-grad check
    return (
        functorch.is_functorch_wrapped_tensor(t)
        or functorch.is_batchedtensor(t)
        or functorch.is_legacy_batchedtensor(t)
    )


def needs_derivative(A: torch.Tensor) -> bool:
    """Whether a derivative of a function of ``A`` may be taken: it requires grad, is
    traced by a transform, or carries a forward-mode tangent."""
    if A.requires_grad or is_traced(A):
        return True
    return torch.autograd.forward_ad.unpack_dual(A).tangent is not None


def values_readable(t: torch.Tensor) -> bool:
    """Whether value checks can run: not empty, not traced, not on the meta device."""
    return t.numel() > 0 and t.device.type != "meta" and not is_traced(t)


# ---------------------------------------------------------------------- small arguments


def check_choice(name: str, value, choices) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_finite_number(name: str, value, *, nonneg: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or (nonneg and value < 0):
        what = "a finite non-negative number" if nonneg else "a finite number"
        raise ValueError(f"{name} must be {what}, got {value!r}")


def check_gap_eps(gap_eps) -> None:
    """``gap_eps``: ``None`` (the dtype-aware default) or a non-negative number."""
    if gap_eps is None:
        return
    if isinstance(gap_eps, bool) or not isinstance(gap_eps, (int, float)):
        raise ValueError(f"gap_eps must be None or a non-negative number, got {gap_eps!r}")
    if not math.isfinite(gap_eps) or gap_eps < 0:
        raise ValueError(f"gap_eps must be None or a non-negative number, got {gap_eps!r}")


def check_k(k, n: int) -> int:
    """``k``: an integer in ``[1, n]`` (a Python int, or any integer type such as NumPy's,
    through ``operator.index``); returns it as an int."""
    try:
        if isinstance(k, bool):
            raise TypeError
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"k must be an int, got {type(k).__name__}") from None
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N] = [1, {n}], got {k}")
    return k


def check_uplo(UPLO) -> None:
    if UPLO not in ("L", "U"):
        raise ValueError(f"UPLO must be 'L' or 'U', got {UPLO!r}")


def check_method(method, methods=("dense", "lobpcg", "auto")) -> None:
    if method not in methods:
        names = ", ".join(repr(m) for m in methods[:-1]) + f" or {methods[-1]!r}"
        raise ValueError(f"method must be {names}, got {method!r}")


def check_ncut_options(laplacian, sign) -> None:
    """``laplacian`` and ``sign`` of the NCut functions."""
    if laplacian not in LAPLACIANS:
        raise ValueError(f"laplacian must be one of {LAPLACIANS}, got {laplacian!r}")
    if sign not in SIGN_RULES:
        raise ValueError(f"sign must be one of {SIGN_RULES}, got {sign!r}")


def check_solver_options(tol, max_iter, on_fail) -> None:
    """The iterative solver's options, as ``eigsh`` and ``sym_eigh_ncut`` take them."""
    if on_fail not in ("warn", "raise"):
        raise ValueError(f"on_fail must be 'warn' or 'raise', got {on_fail!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    if tol is not None and not (
        isinstance(tol, (int, float)) and not isinstance(tol, bool) and 0 < tol < math.inf
    ):
        raise ValueError(f"tol must be None or a positive finite number, got {tol!r}")


def check_out(out, count: int, fn: str, A: torch.Tensor) -> None:
    """``out=`` of the torch.linalg drop-ins: ``count`` tensors, and (as torch) no autograd."""
    if out is None:
        return
    if not (
        isinstance(out, (tuple, list))
        and len(out) == count
        and all(isinstance(t, torch.Tensor) for t in out)
    ):
        what = "a tensor" if count == 1 else f"a tuple of {count} tensors"
        raise ValueError(f"{fn}(): out must be {what}, got {type(out).__name__}")
    if torch.is_grad_enabled() and (A.requires_grad or any(t.requires_grad for t in out)):
        raise RuntimeError(
            f"{fn}(): functions with out=... arguments don't support automatic "
            "differentiation (as torch.linalg); call it without out="
        )


def write_out(out, results):
    """Copy ``results`` into the ``out`` tensors (resized, dtype and device checked)."""
    if out is None:
        return results
    for o, r in zip(out, results):
        if o.dtype != r.dtype or o.device != r.device:
            raise ValueError(
                f"out tensors must have the results' dtype {r.dtype} and device {r.device}, "
                f"got {o.dtype} on {o.device}"
            )
        o.resize_(r.shape).copy_(r)
    return tuple(out)


def check_same_device(op: str, **tensors) -> None:
    """The operators' inputs on one device (``torch._check``, as their kernels'
    ``TORCH_CHECK``: the fake / Meta kernels raise what the real ones would)."""
    present = {k: t for k, t in tensors.items() if t is not None}
    devices = {t.device for t in present.values()}
    torch._check(
        len(devices) <= 1,
        lambda: (
            f"diffeig::{op}: "
            + ", ".join(present)
            + " must be on the same device, got "
            + ", ".join(f"{k} on {t.device}" for k, t in present.items())
        ),
    )


def one_input(A, input, fn: str):
    """torch.linalg's keyword (``input=``) or ours (``A``), exactly one of them."""
    if (A is None) == (input is None):
        raise TypeError(f"{fn}() takes the matrix once: positionally, as A=, or as input=")
    return A if input is None else input


# ----------------------------------------------------------------------------- tensors


def check_square(A, name: str, dtypes=FLOAT_DTYPES) -> None:
    """``A``: a dense ``(*, n, n)`` tensor of one of ``dtypes``."""
    if not isinstance(A, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(A).__name__}")
    if A.layout != torch.strided:
        raise ValueError(
            f"{name} must be a dense (strided) tensor, got layout {A.layout}: pass "
            f"{name}.to_dense() (sym_eigh_ncut solves sparse graphs as they are)"
        )
    if A.dim() < 2:
        raise ValueError(
            f"{name} must have at least 2 dimensions (*, n, n), got shape {tuple(A.shape)}"
        )
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(f"{name} must be a batch of square matrices, got shape {tuple(A.shape)}")
    if A.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name} must have dtype {names}; got {A.dtype}")


def symmetry_stats(A: torch.Tensor) -> torch.Tensor:
    """``[min, max, max |A - A^T|]`` (float64) in one pass: ``diffeig::symmetry_stats`` on
    CPU, its pure-PyTorch twin elsewhere (ATen reductions, tiles for the asymmetry)."""
    if _extension.native_for(A.device) and A.device.type == "cpu":
        return torch.ops.diffeig.symmetry_stats(A)
    return _reference.symmetry_stats(A)


def check_symmetric(
    A: torch.Tensor, name: str, *, sym_rtol: float | None = None
) -> tuple[float, float] | None:
    """Raise ``ValueError`` unless ``A`` is finite and symmetric (to ``sym_rtol``, default
    ``sqrt(eps)``, relative to ``max |A|``); return its ``(min, max)``, or ``None`` when its
    values cannot be read (empty, meta, under ``torch.compile`` or ``torch.func``)."""
    if not values_readable(A):
        return None
    # NaN propagates into min and max
    lo, hi, asym = symmetry_stats(A).tolist()
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


def check_scaled_back(lam: torch.Tensor, e: int) -> None:
    """Eigenvalues of ``D - W`` scaled back by ``2^e`` must be finite: past the dtype's
    range (``W ~ 1e308``, whose Laplacian's spectrum exceeds it) they are refused."""
    if e > 0 and values_readable(lam) and not bool(torch.isfinite(lam).all()):
        raise ValueError(
            f"W is too large for laplacian='unnormalized' in {lam.dtype}: the eigenvalues of "
            f"D - W exceed its largest number (max W ~ 2^{e}); scale W down, or use "
            "laplacian='ncut', whose eigenvalues do not depend on W's scale"
        )


def check_affinity(
    W: torch.Tensor, *, normalized: bool, sym_rtol: float | None = None
) -> float | None:
    """Raise ``ValueError`` unless ``W`` is a valid affinity (finite, >= 0, symmetric);
    return ``max W`` (``None`` where values cannot be read).

    For the normalized cut every node also needs a positive degree. The value checks
    read the data, so they are skipped under ``torch.compile`` and ``torch.func`` and
    on the meta device (shape inference).
    """
    check_square(W, "W")
    if not values_readable(W):
        return None
    lo, hi = check_symmetric(W, "W", sym_rtol=sym_rtol)
    if lo < 0:
        raise ValueError(f"W must be non-negative, got a minimum of {lo:.3g}")
    if normalized:
        # degrees at unit scale: W's own may overflow where W does not
        e = unit_scale(hi)
        check_degrees(scale2(W, -e).sum(-1) if e else W.sum(-1), normalized=True)
    return hi


def check_degrees(d: torch.Tensor, *, normalized: bool, name: str = "W", sparse=False) -> None:
    """The degrees ``d = W 1`` must be finite; the normalized cut needs them positive."""
    if not bool(torch.isfinite(d).all()):
        raise ValueError(f"{name} must be finite: its degrees W @ 1 are non-finite")
    zero = int((d <= 0).sum()) if normalized else 0
    if zero:
        floor = (
            "For pixel_affinity the colours are expected in [0, 1] (or scale sigma_color "
            "with them: an image in [0, 255] needs 255 times the sigma); else add a small "
            "floor to the stored weights"
            if sparse
            else "Add a small floor to the affinity (affinity(..., eps=1e-6))"
        )
        raise ValueError(
            f"{name} has {zero} node(s) with zero degree: the normalized cut (D - W) z = l D z "
            f"needs D > 0. {floor}, or use laplacian='unnormalized'"
        )


def check_generalized_B(A: torch.Tensor, B) -> tuple[bool, float | None]:
    """``B`` of ``A x = l B x``: a tensor of A's dtype and device, ``(*, N, N)`` or a
    positive finite diagonal ``(*, N)``. Returns whether it is the diagonal, and
    ``max |B|`` (``None`` where values cannot be read)."""
    if not isinstance(B, torch.Tensor):
        raise ValueError(f"B must be a tensor, got {type(B).__name__}")
    if B.dtype != A.dtype or B.device != A.device:
        raise ValueError(
            f"B must have A's dtype {A.dtype} and device {A.device}, got {B.dtype}, {B.device}"
        )
    if B.shape == A.shape[:-1]:
        if not values_readable(B):
            return True, None
        if not bool(((B > 0) & torch.isfinite(B)).all()):
            raise ValueError("B given as a diagonal (*, N) must be positive and finite")
        return True, B.amax().item()
    if B.shape != A.shape:
        raise ValueError(
            f"B must have shape {tuple(A.shape)} (dense) or {tuple(A.shape[:-1])} "
            f"(diagonal), got {tuple(B.shape)}"
        )
    bounds = check_symmetric(B, "B")
    return False, None if bounds is None else max(abs(bounds[0]), abs(bounds[1]))


def check_cholesky(info: torch.Tensor) -> None:
    if bool((info != 0).any()):
        raise ValueError(
            "B must be symmetric positive definite (its Cholesky factorization failed)"
        )


def check_features(features, *, tau: float, eps: float) -> None:
    """The token features and thresholds of :func:`diffeig.ncut.affinity`."""
    if not isinstance(features, torch.Tensor) or features.dim() < 2:
        raise ValueError(
            "features must be a tensor of shape (*, N, C), got "
            f"{getattr(features, 'shape', type(features).__name__)}"
        )
    check_finite_number("eps", eps, nonneg=True)
    check_finite_number("tau", tau)
    # NaN similarities would fall below tau and become eps: a finite graph from garbage.
    if values_readable(features) and not bool(torch.isfinite(features).all()):
        raise ValueError("features must be finite, got NaN or inf entries")


def check_gaussian(sigma, topk, n: int) -> None:
    """``sigma`` > 0 and finite; ``topk`` None or an int in [1, N - 1]."""
    check_finite_number("sigma", sigma)
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    if topk is not None and (
        isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk < max(n, 2)
    ):
        raise ValueError(f"topk must be None or an int in [1, N - 1] = [1, {n - 1}], got {topk!r}")


def check_pixel_affinity(image, radius, sigma_color, sigma_space) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4):
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a (C, H, W) or (B, C, H, W) tensor, got {got}")
    if image.shape[-1] in (1, 3, 4) and image.shape[-3] > 4:
        raise ValueError(
            f"image must be channels-first, (C, H, W) or (B, C, H, W); got shape "
            f"{tuple(image.shape)}, which looks like (H, W, C) as PIL and NumPy give images: "
            "pass image.movedim(-1, -3)"
        )
    if image.dtype not in FLOAT_DTYPES:
        raise ValueError(f"image must be float32 or float64, got {image.dtype}")
    if image.layout != torch.strided:
        raise ValueError(f"image must be a dense (strided) tensor, got {image.layout}")
    if min(image.shape[-2:]) < 2 or image.shape[-3] < 1:
        raise ValueError(f"image must have C >= 1 and H, W >= 2, got {tuple(image.shape)}")
    check_finite_number("radius", radius)
    if radius < 1:
        raise ValueError(f"radius must be >= 1 (pixels), got {radius}")
    for name, v in (("sigma_color", sigma_color), ("sigma_space", sigma_space)):
        check_finite_number(name, v)
        if v <= 0:
            raise ValueError(f"{name} must be > 0, got {v}")
    if values_readable(image) and not bool(torch.isfinite(image).all()):
        raise ValueError("image must be finite: it holds NaN or inf")


def check_not_meta(
    like: torch.Tensor, what: str, hint: str | None = "method='dense' infers shapes there"
) -> None:
    """Iterative solvers read values to test convergence (``hint``: the way out, if any)."""
    if like.device.type == "meta":
        raise ValueError(
            f"{what} reads values to test convergence, so it cannot run on meta tensors"
            + (f"; {hint}" if hint else "")
        )


def check_operator_output(d, like: torch.Tensor) -> None:
    """``matmul(X, *params)`` of :func:`diffeig.ncut.ncut_operator` must return W @ X."""
    if not isinstance(d, torch.Tensor) or d.shape != like.shape or d.dtype != like.dtype:
        got = f"{tuple(d.shape)} {d.dtype}" if isinstance(d, torch.Tensor) else type(d)
        raise ValueError(
            f"matmul(X, *params) must return W @ X, of X's shape {tuple(like.shape)} and "
            f"dtype {like.dtype}; for X of that shape it returned {got}"
        )


def check_params(params) -> None:
    if not params:
        raise ValueError("params must hold at least one tensor (the ones W depends on)")


def check_columns(grad: torch.Tensor, indices) -> None:
    """One cotangent column per eigenvector index (the pseudo-inverse baseline)."""
    if grad.shape[-1] != len(indices):
        raise ValueError(
            f"grad_eigenvectors must have one column per index ({len(indices)}), "
            f"got shape {tuple(grad.shape)}"
        )


def check_phase_invariance(X: torch.Tensor) -> None:
    """Complex eigenvectors are defined up to a phase e^{i phi}; a loss that depends on it
    has ``Im(diag(V^H gV)) != 0`` and no well-defined gradient. Same test and message as
    torch.linalg.eigh's backward."""
    if not X.is_complex() or is_traced(X):
        return
    im = torch.diagonal(X, dim1=-2, dim2=-1).imag
    if not torch.allclose(im, torch.zeros_like(im), rtol=1e-2, atol=1e-2):
        raise RuntimeError(
            "linalg_eigh_backward: The eigenvectors in the complex case are specified up to "
            "multiplication by e^{i phi}. The specified loss function depends on this "
            "quantity, so it is ill-defined."
        )


def report_failure(msg: str, on_fail: str, stacklevel: int = 3) -> None:
    """Raise ``RuntimeError`` (``on_fail='raise'``) or warn (``'warn'``) about a solver
    that stopped short of its tolerance: one rule for the forward and the backward."""
    if on_fail == "raise":
        raise RuntimeError(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=stacklevel + 1)


def _as_index(x) -> int | None:
    """``x`` as an int where it is an integer (int, NumPy's, a 0-d integer tensor)."""
    try:
        return operator.index(x)
    except TypeError:
        return None


def check_kway(Z, k, start, max_iter) -> int:
    """:func:`diffeig.ncut.kway`'s arguments: ``Z`` a finite float ``(N, m)`` or
    ``(B, N, m)``, ``2 <= k <= m``, ``start`` None or a node index, ``max_iter >= 1``;
    returns ``k`` as an int."""
    if not isinstance(Z, torch.Tensor) or Z.dim() not in (2, 3) or not Z.is_floating_point():
        raise ValueError(
            f"Z must be a float tensor (N, m) or (B, N, m), got "
            f"{getattr(Z, 'shape', type(Z).__name__)}"
        )
    n, m = Z.shape[-2:]
    k = check_k(k, m)
    if k < 2:
        raise ValueError(f"k must be at least 2 (segments), got {k}")
    if start is not None and (
        isinstance(start, bool) or _as_index(start) is None or not 0 <= _as_index(start) < n
    ):
        raise ValueError(f"start must be a node index in [0, {n}), got {start!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if not bool(torch.isfinite(Z[..., :k]).all()):
        raise ValueError("Z must be finite, got NaN or inf entries")
    return k
