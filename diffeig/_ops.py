"""The ``torch.ops.diffeig`` operators as Python functions, with their registrations.

Each function calls the native operator when ``diffeig._C`` is loaded and its
pure-PyTorch twin from :mod:`diffeig._reference` otherwise. For the native operators
this module registers, from Python, what makes them first-class PyTorch ops:
fake (shape-only) kernels for ``torch.compile``, vmap rules for ``torch.func`` and
the autograd formula of ``eigh_backward_core`` (so that ``diffeig.eigh`` has a
double backward). ``symmetry_stats``, which only the argument checks read, is chosen
native-or-twin in :mod:`diffeig._checks`.
"""

from __future__ import annotations

import torch

from diffeig import _extension, _reference
from diffeig._checks import check_same_device, needs_derivative

__all__ = [
    "eigh_backward_core",
    "laplacian",
    "ncut_grad_assemble",
    "ncut_backward",
    "cg_step",
    "sym_matmul",
    "ncut_lanczos",
]


def _differentiated(*tensors) -> bool:
    """Whether a derivative of this call may be taken: an input requires grad (double
    backward), is wrapped by a torch.func transform (jacrev(jacrev), hessian) or carries a
    forward-mode tangent. The differentiable reference formula then runs instead of the
    native kernel, whose registered autograd covers reverse mode only."""
    if torch.compiler.is_compiling():
        return False  # traced graphs get the native op (fake kernel + registered autograd)
    return any(t is not None and needs_derivative(t) for t in tensors)


def eigh_backward_core(eigenvalues, X, grad_eigenvalues, gap_rtol: float, gap_atol: float):
    if _extension.native_for(X.device) and not _differentiated(eigenvalues, X, grad_eigenvalues):
        return torch.ops.diffeig.eigh_backward_core(
            eigenvalues, X, grad_eigenvalues, float(gap_rtol), float(gap_atol)
        )
    return _reference.eigh_backward_core(eigenvalues, X, grad_eigenvalues, gap_rtol, gap_atol)


def laplacian(W, normalized: bool):
    if _extension.native_for(W.device):
        return torch.ops.diffeig.laplacian(W, bool(normalized))
    return _reference.laplacian(W, normalized)


def sym_matmul(W, Y, index=None):
    """``W[index] @ Y`` for a batch of symmetric ``W`` ``(B, n, n)``, ``Y`` ``(b, n, m)``
    (``index`` ``(b,)``, or ``None`` for ``b = B``) without copying the selected matrices.
    On CPU the native kernel reads W's lower triangle only from n = 512 on (half of its
    bytes; below, whole rows stream faster)."""
    if _extension.native_for(W.device) and W.device.type == "cpu":
        return torch.ops.diffeig.sym_matmul(W, Y, index)
    # Elsewhere (CUDA) a batched matmul of the selected matrices.
    return _reference.sym_matmul(W, Y, index)


def ncut_lanczos(W, dis, u1, v0, tol: float, floor: float, max_steps: int):
    """The Fiedler pair of one normalized cut by Lanczos (``diffeig::ncut_lanczos``):
    the native kernel on CPU, the twin elsewhere. Returns ``(x, info)``."""
    if _extension.native_for(W.device) and W.device.type == "cpu":
        return torch.ops.diffeig.ncut_lanczos(
            W, dis, u1, v0, float(tol), float(floor), int(max_steps)
        )
    return _reference.ncut_lanczos(W, dis, u1, v0, tol, floor, max_steps)


def ncut_grad_assemble(P, V, scale, diag_term):
    if _extension.native_for(P.device):
        return torch.ops.diffeig.ncut_grad_assemble(P, V, scale, diag_term)
    return _reference.ncut_grad_assemble(P, V, scale, diag_term)


def ncut_backward(V, eigenvalues, degree, grad_Z, grad_eigenvalues, normalized, gap_rtol, gap_atol):
    args = (V, eigenvalues, degree, grad_Z, grad_eigenvalues, bool(normalized))
    gaps = (float(gap_rtol), float(gap_atol))
    if _extension.native_for(V.device) and V.device.type == "cpu":
        return torch.ops.diffeig.ncut_backward(*args, *gaps)
    # Elsewhere (CUDA) the same computation runs as batched ATen products around the
    # native core and assemble kernels; without the extension, all in PyTorch.
    return _reference.ncut_backward(
        *args, *gaps, core=eigh_backward_core, assemble=ncut_grad_assemble
    )


def cg_step(Y, R, P, AP, rr, stop, active):
    if _extension.native_for(Y.device):
        return torch.ops.diffeig.cg_step(Y, R, P, AP, rr, stop, active)
    return _reference.cg_step(Y, R, P, AP, rr, stop, active)


# --------------------------------------------------------------------------- fake kernels
# The fake kernels are also the Meta kernels: a call that mixes a meta tensor with CPU
# ones dispatches here, so they check devices as the real kernels do (TORCH_CHECK in
# csrc/checks.h) instead of returning an uninitialized result.


def _fake_core(eigenvalues, X, grad_eigenvalues, gap_rtol, gap_atol):
    check_same_device(
        "eigh_backward_core", eigenvalues=eigenvalues, X=X, grad_eigenvalues=grad_eigenvalues
    )
    torch._check(X.dim() == eigenvalues.dim() + 1, lambda: "X must have shape (*, n, k)")
    torch._check(X.shape[-2] == eigenvalues.shape[-1], lambda: "X must have n rows")
    return X.new_empty(X.shape)


def _fake_laplacian(W, normalized):
    torch._check(W.dim() >= 2 and W.shape[-1] == W.shape[-2], lambda: "W must be (*, n, n)")
    return W.new_empty(W.shape), W.new_empty(W.shape[:-1])


def _fake_symmetry_stats(W):
    torch._check(W.dim() >= 2 and W.shape[-1] == W.shape[-2], lambda: "W must be (*, n, n)")
    return W.new_empty(3, dtype=torch.float64)


def _fake_sparse_mirror_stats(crow, col, values):
    return values.new_empty(2, dtype=torch.float64)


def _fake_ncut_lanczos(W, dis, u1, v0, tol, floor, max_steps):
    return W.new_empty(W.shape[-1]), W.new_empty(5, dtype=torch.float64)


def _fake_sym_matmul(W, Y, index=None):
    check_same_device("sym_matmul", W=W, Y=Y, index=index)
    torch._check(W.dim() == 3 and W.shape[-1] == W.shape[-2], lambda: "W must be (B, n, n)")
    torch._check(Y.dim() == 3 and Y.shape[1] == W.shape[-1], lambda: "Y must be (b, n, m)")
    return Y.new_empty(Y.shape)


def _fake_assemble(P, V, scale, diag_term):
    check_same_device("ncut_grad_assemble", P=P, V=V, scale=scale, diag_term=diag_term)
    torch._check(P.shape == V.shape, lambda: "V must have the shape of P")
    return P.new_empty((*P.shape[:-1], P.shape[-2]))


def _fake_ncut_backward(V, eigenvalues, degree, grad_Z, grad_eigenvalues, normalized, rtol, atol):
    check_same_device(
        "ncut_backward",
        V=V,
        eigenvalues=eigenvalues,
        degree=degree,
        grad_Z=grad_Z,
        grad_eigenvalues=grad_eigenvalues,
    )
    torch._check(V.dim() >= 2 and V.shape[-1] == V.shape[-2], lambda: "V must be (*, n, n)")
    return V.new_empty(V.shape)


def _fake_cg_step(Y, R, P, AP, rr, stop, active):
    check_same_device("cg_step", Y=Y, R=R, P=P, AP=AP, rr=rr, stop=stop, active=active)
    torch._check(R.shape == Y.shape and P.shape == Y.shape, lambda: "R, P must have Y's shape")
    return (
        Y.new_empty(Y.shape),
        R.new_empty(R.shape),
        P.new_empty(P.shape),
        rr.new_empty(rr.shape),
        active.new_empty(active.shape),
    )


# ------------------------------------------------------------------------------ vmap rules


def _batched_first(info, in_dims, args):
    """Move every vmapped dimension to the front; broadcast unbatched tensors."""
    out = []
    for arg, dim in zip(args, in_dims):
        if isinstance(arg, torch.Tensor):
            if dim is None:
                arg = arg.unsqueeze(0).expand(info.batch_size, *arg.shape)
            else:
                arg = arg.movedim(dim, 0)
        out.append(arg)
    return out


def _vmap_core(info, in_dims, eigenvalues, X, grad_eigenvalues, gap_rtol, gap_atol):
    l, x, gl = _batched_first(info, in_dims[:3], (eigenvalues, X, grad_eigenvalues))
    return torch.ops.diffeig.eigh_backward_core(l, x, gl, gap_rtol, gap_atol), 0


def _vmap_laplacian(info, in_dims, W, normalized):
    (w,) = _batched_first(info, in_dims[:1], (W,))
    return torch.ops.diffeig.laplacian(w, normalized), (0, 0)


def _vmap_assemble(info, in_dims, P, V, scale, diag_term):
    args = _batched_first(info, in_dims, (P, V, scale, diag_term))
    return torch.ops.diffeig.ncut_grad_assemble(*args), 0


def _vmap_ncut_backward(info, in_dims, V, eigenvalues, degree, grad_Z, grad_eigenvalues, *rest):
    args = _batched_first(info, in_dims[:5], (V, eigenvalues, degree, grad_Z, grad_eigenvalues))
    return torch.ops.diffeig.ncut_backward(*args, *rest), 0


def _vmap_cg_step(info, in_dims, *args):
    return torch.ops.diffeig.cg_step(*_batched_first(info, in_dims, args)), (0,) * 5


# -------------------------------------------------------------------------------- autograd


def _core_setup_context(ctx, inputs, output):
    eigenvalues, X, grad_eigenvalues, gap_rtol, gap_atol = inputs
    ctx.save_for_backward(eigenvalues, X)
    ctx.gaps = (gap_rtol, gap_atol)
    ctx.has_gl = grad_eigenvalues is not None


def core_vjp(grad_M, eigenvalues, X, gap_rtol, gap_atol, needs):
    """Gradients of ``M = eigh_backward_core(l, X, gl)`` w.r.t. ``(l, X, gl)``.

    ``M[i, s] = X[i, s] / (l[s] - l[i])`` off the masked set, ``M[s, s] = gl[s]``. The
    mask is piecewise constant, so it contributes no derivative.
    """
    n, k = X.shape[-2], X.shape[-1]
    g_l = g_X = g_gl = None
    if needs[1]:
        # M is linear in X with the same real factor: its adjoint is the op itself.
        g_X = eigh_backward_core(eigenvalues, grad_M, None, gap_rtol, gap_atol)
    if needs[2]:
        g_gl = torch.diagonal(grad_M[..., :k, :], dim1=-2, dim2=-1)
        g_gl = g_gl.real if g_gl.is_complex() else g_gl
    if needs[0]:
        K = _reference.masked_reciprocal_gaps(eigenvalues, k, gap_rtol, gap_atol)
        P = grad_M * X.conj()
        P = P.real if P.is_complex() else P
        Q = P * K * K
        # d K[i, s] / d l[i] = K^2 and d K[i, s] / d l[s] = -K^2.
        g_l = Q.sum(-1) - torch.nn.functional.pad(Q.sum(-2), (0, n - k))
    return g_l, g_X, g_gl


def _core_backward(ctx, grad_M):
    eigenvalues, X = ctx.saved_tensors
    needs = ctx.needs_input_grad
    g_l, g_X, g_gl = core_vjp(grad_M, eigenvalues, X, *ctx.gaps, needs[:3])
    return g_l, g_X, (g_gl if ctx.has_gl else None), None, None


def _register() -> None:
    if not _extension._LOADED:
        return
    torch.library.register_fake("diffeig::eigh_backward_core")(_fake_core)
    torch.library.register_fake("diffeig::laplacian")(_fake_laplacian)
    torch.library.register_fake("diffeig::symmetry_stats")(_fake_symmetry_stats)
    torch.library.register_fake("diffeig::sparse_mirror_stats")(_fake_sparse_mirror_stats)
    torch.library.register_fake("diffeig::sym_matmul")(_fake_sym_matmul)
    torch.library.register_fake("diffeig::ncut_lanczos")(_fake_ncut_lanczos)
    torch.library.register_fake("diffeig::ncut_grad_assemble")(_fake_assemble)
    torch.library.register_fake("diffeig::ncut_backward")(_fake_ncut_backward)
    torch.library.register_fake("diffeig::cg_step")(_fake_cg_step)
    torch.library.register_vmap("diffeig::cg_step", _vmap_cg_step)
    torch.library.register_vmap("diffeig::eigh_backward_core", _vmap_core)
    torch.library.register_vmap("diffeig::ncut_backward", _vmap_ncut_backward)
    torch.library.register_vmap("diffeig::laplacian", _vmap_laplacian)
    torch.library.register_vmap("diffeig::ncut_grad_assemble", _vmap_assemble)
    torch.library.register_autograd(
        "diffeig::eigh_backward_core", _core_backward, setup_context=_core_setup_context
    )


_register()
