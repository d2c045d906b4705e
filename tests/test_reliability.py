"""Reliability of the library (issue 10): ties in the iterative paths, tiny and huge scales,
inputs never written to, devices checked by every op, clear errors, thread-safe patching.

Each test here failed before the fix it guards."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

import diffeig
from diffeig import _extension
from diffeig.ncut import affinity, ncut_operator

F64 = torch.float64


def two_blocks(n1=15, n2=25, cross=0.0, seed=0):
    """``block_diag(A_n1, B_n2)`` (exactly 2 connected components when ``cross == 0``)
    with ``cross`` on the pairs between them (a near tie at 0 when it is small)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(n1, n1, dtype=F64, generator=g)
    B = torch.rand(n2, n2, dtype=F64, generator=g)
    W = torch.block_diag(0.5 * (A + A.T) + 0.1, 0.5 * (B + B.T) + 0.1)
    W[:n1, n1:] = cross
    W[n1:, :n1] = cross
    return W


def projector_loss(Z, C):
    """``sum(Z Z^T o C)``: invariant to rotations inside a tied eigenspace, so its gradient
    is well defined on exact ties."""
    return (Z @ Z.mT * C).sum()


def cost(n, seed=1):
    C = torch.randn(n, n, dtype=F64, generator=torch.Generator().manual_seed(seed))
    return C + C.T


def ncut_grad(W, method, laplacian, k=2, C=None):
    W = W.clone().requires_grad_()
    _, Z = diffeig.sym_eigh_ncut(W, k, laplacian=laplacian, method=method)
    projector_loss(Z, C).backward()
    return W.grad


def operator_grad(W, laplacian, k=2, C=None):
    W = W.clone().requires_grad_()
    _, Z = ncut_operator(lambda X, w: w @ X, [W], W.shape[:-1], k, laplacian=laplacian)
    projector_loss(Z, C).backward()
    # ncut_operator differentiates the user's function: dL/dW is not symmetrized.
    return 0.5 * (W.grad + W.grad.mT)


def one_sided_derivative(f, W, E, t=1e-5):
    """``d/ds f(W + s E)`` at 0 from the right, second order: ``W - s E`` may not be a
    valid (non-negative) affinity, so central differences are not available."""
    return (-3 * f(W) + 4 * f(W + t * E) - f(W + 2 * t * E)) / (2 * t)


# ---------------------------------------------------------------- 3: ties among the k returned


@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
@pytest.mark.parametrize("cross", [0.0, 1e-9, 1e-7, 1e-4])
def test_iterative_paths_match_dense_on_exact_and_near_ties(laplacian, cross):
    W = two_blocks(cross=cross)
    C = cost(W.shape[-1])
    dense = ncut_grad(W, "dense", laplacian, C=C)
    for name, g in (
        ("lobpcg", ncut_grad(W, "lobpcg", laplacian, C=C)),
        ("operator", operator_grad(W, laplacian, C=C)),
    ):
        err = ((g - dense).abs().max() / dense.abs().max()).item()
        assert err < 1e-7, (name, err)


@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
def test_exact_tie_gradient_against_finite_differences(laplacian):
    W = two_blocks()
    n = W.shape[-1]
    C = cost(n)

    def f(Wp):
        return projector_loss(diffeig.sym_eigh_ncut(Wp, 2, laplacian=laplacian)[1], C)

    g = torch.Generator().manual_seed(3)
    E = torch.rand(n, n, dtype=F64, generator=g)
    E = E + E.T  # non-negative: moves within and across the two components
    expected = one_sided_derivative(f, W, E).item()
    for method in ("dense", "lobpcg"):
        grad = ncut_grad(W, method, laplacian, C=C)
        got = (grad * E).sum().item()
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-7), method


@pytest.mark.parametrize("method", ["dense", "lobpcg"])
def test_eigsh_tied_pair_at_zero_matches_eigh(method):
    W = two_blocks()
    L = torch.diag(W.sum(-1)) - W  # eigenvalues 0, 0 (exactly tied), then > 0.5
    C = cost(W.shape[-1])
    A = L.clone().requires_grad_()
    _, V = diffeig.eigh(A)
    projector_loss(V[:, :2], C).backward()
    B = L.clone().requires_grad_()
    _, X = diffeig.eigsh(B, 2, method=method)
    projector_loss(X, C).backward()
    err = ((B.grad - A.grad).abs().max() / A.grad.abs().max()).item()
    assert err < 1e-6


def test_eigsh_near_tie_gradcheck():
    W = two_blocks(8, 10, cross=1e-3)
    L = torch.diag(W.sum(-1)) - W
    C = cost(L.shape[-1])

    def f(A):
        A = 0.5 * (A + A.mT)
        return projector_loss(diffeig.eigsh(A, 2, tol=1e-12)[1], C)

    assert torch.autograd.gradcheck(f, (L.clone().requires_grad_(),), eps=1e-7, atol=1e-5)


# --------------------------------------------------------- 4: scale invariance, reported failures


@pytest.mark.parametrize(
    "dtype,scale", [(torch.float32, 1e-30), (torch.float64, 1e-200), (torch.float64, 1e200)]
)
@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
def test_lobpcg_at_extreme_scales(dtype, scale, laplacian):
    f = torch.nn.functional.normalize(
        torch.randn(3, 60, 8, dtype=dtype, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    W = affinity(f)
    lam0, Z0 = diffeig.sym_eigh_ncut(W.double(), 3, laplacian=laplacian)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged, without a warning
        lam, Z = diffeig.sym_eigh_ncut(W * scale, 3, laplacian=laplacian, method="lobpcg")
    Zn = Z.double() / Z.double().norm(dim=-2, keepdim=True)  # Z ~ 1e-100 at W ~ 1e200
    Z0n = Z0 / Z0.norm(dim=-2, keepdim=True)
    assert (Zn * Z0n).sum(-2).abs().min().item() > 1 - 1e-4
    unit = scale if laplacian == "unnormalized" else 1.0
    rel = ((lam.double() / unit - lam0).abs().amax() / lam0.abs().amax()).item()
    assert rel < (1e-4 if dtype == torch.float32 else 1e-8)


def test_eigsh_at_tiny_scale_and_its_gradient():
    A = diffeig.ncut.affinity(torch.randn(40, 6, dtype=F64))
    L = torch.diag(A.sum(-1)) - A
    C = cost(40)
    grads = []
    for s in (1.0, 1e-200):
        B = (L * s).requires_grad_()
        _, X = diffeig.eigsh(B, 3, on_fail="raise")
        projector_loss(X, C).backward()
        grads.append(B.grad * s)  # dL/dB scales as 1 / s
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-9 * grads[0].abs().max())


def test_backward_solve_that_does_not_converge_is_reported():
    A = diffeig.ncut.affinity(torch.randn(60, 6, dtype=F64))
    L = torch.diag(A.sum(-1)) - A
    B = L.clone().requires_grad_()
    r = torch.randn(60, dtype=F64)
    # dense forward, so only the backward's CG is limited (2 iterations cannot reach tol)
    _, X = diffeig.eigsh(B, 2, method="dense", max_iter=2, on_fail="raise")
    with pytest.raises(RuntimeError, match="conjugate-gradient solves stopped"):
        (X[:, 1] * r).sum().backward()
    _, X = diffeig.eigsh(B, 2, method="dense", max_iter=2)
    with pytest.warns(RuntimeWarning, match="conjugate-gradient solves stopped"):
        (X[:, 1] * r).sum().backward()
    # and through the NCut's LOBPCG path, whose solves share max_iter with LOBPCG
    W = A.clone().requires_grad_()
    _, Z = diffeig.sym_eigh_ncut(W, 2, method="lobpcg", on_fail="raise")
    (Z[:, 1] * r).sum().backward()  # converges: no error
    assert W.grad.isfinite().all()


# --------------------------------------------------------------------- 6: inputs never written


def _calls(W, f, n):
    k = min(2, n)
    yield "sym_eigh_ncut", lambda: diffeig.sym_eigh_ncut(W, k)
    yield (
        "sym_eigh_ncut unnormalized",
        lambda: diffeig.sym_eigh_ncut(W, k, laplacian="unnormalized"),
    )
    yield "sym_eigh_ncut lobpcg", lambda: diffeig.sym_eigh_ncut(W, k, method="lobpcg")
    yield "ncut_operator", lambda: ncut_operator(lambda X, w: w @ X, [W], W.shape[:-1], k)
    yield "eigsh", lambda: diffeig.eigsh(W, k)
    yield "eigsh dense", lambda: diffeig.eigsh(W, k, method="dense")
    yield "eigsh B", lambda: diffeig.eigsh(W, k, B=W.sum(-1))
    yield "eigh", lambda: diffeig.eigh(W)
    yield "eigvalsh", lambda: diffeig.eigvalsh(W)
    yield "check_affinity", lambda: diffeig.ncut.check_affinity(W, normalized=True)
    yield "max_asymmetry", lambda: diffeig.ncut.max_asymmetry(W)
    yield "affinity", lambda: affinity(f)
    yield "bipartition", lambda: diffeig.ncut.bipartition(f[..., 0])
    yield "seed", lambda: diffeig.ncut.seed(f[..., 0])
    yield "pinv baseline", lambda: diffeig.baselines.sym_eigh_ncut_pinv(W, k)


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("batch", [(), (3,)])
def test_no_public_function_writes_to_its_inputs(n, batch):
    g = torch.Generator().manual_seed(n)
    f = torch.randn(*batch, n, 4, dtype=F64, generator=g)
    W = affinity(f, eps=1e-3) + 0.5  # positive degrees, also for N = 1
    W_copy, f_copy = W.clone(), f.clone()
    versions = (W._version, f._version)
    for name, call in _calls(W, f, n):
        call()
        assert (W._version, f._version) == versions, name
        assert torch.equal(W, W_copy) and torch.equal(f, f_copy), name


def test_one_node_graph():
    W = torch.tensor([[2.0]], dtype=F64)
    lam, Z = diffeig.sym_eigh_ncut(W, 1)
    assert lam.item() == pytest.approx(0.0, abs=1e-15) and Z.item() == pytest.approx(2**-0.5)
    assert W.item() == 2.0


# ------------------------------------------------------------------------ 7: devices checked


def _mixed_calls():
    c = lambda *s: torch.rand(*s, dtype=F64)  # noqa: E731
    m = lambda *s: torch.rand(*s, dtype=F64, device="meta")  # noqa: E731
    ops = torch.ops.diffeig
    yes = torch.ones(2, dtype=torch.bool)
    return {
        "eigh_backward_core": lambda: ops.eigh_backward_core(c(5), m(5, 2), c(2), 0.0, 0.0),
        "eigh_backward_core (eigenvalues)": lambda: ops.eigh_backward_core(
            m(5), c(5, 2), None, 0.0, 0.0
        ),
        "ncut_grad_assemble": lambda: ops.ncut_grad_assemble(c(5, 2), c(5, 2), m(5), c(5)),
        "ncut_backward": lambda: ops.ncut_backward(
            c(5, 5), c(5), m(5), c(5, 2), c(2), True, 0.0, 0.0
        ),
        "cg_step": lambda: ops.cg_step(c(5, 2), c(5, 2), c(5, 2), c(5, 2), c(2), m(2), yes),
    }


@pytest.mark.parametrize("name", list(_mixed_calls()))
def test_native_ops_reject_mixed_devices(name):
    if not _extension._LOADED:
        pytest.skip("native extension not built")
    with pytest.raises(RuntimeError, match="must be on the same device"):
        _mixed_calls()[name]()


# ------------------------------------------------------------------ 8: errors a user understands


@pytest.mark.parametrize("method", ["dense", "lobpcg"])
def test_transposed_and_column_major_affinities(method):
    W = affinity(torch.randn(30, 5, dtype=F64))
    ref = diffeig.sym_eigh_ncut(W, 3, method=method)
    Wc = torch.empty_strided(W.shape, (1, 30), dtype=F64).copy_(W).requires_grad_()
    for X in (W.mT, Wc):
        lam, Z = diffeig.sym_eigh_ncut(X, 3, method=method)
        torch.testing.assert_close(lam, ref[0])
        torch.testing.assert_close(Z, ref[1])
    diffeig.sym_eigh_ncut(Wc, 3, method=method)[1].sum().backward()
    assert Wc.grad.isfinite().all()


def test_isolated_node_unnormalized_lobpcg_as_dense():
    W = affinity(torch.randn(30, 5, dtype=F64))
    W[0, :] = 0
    W[:, 0] = 0
    C = cost(30)
    lam_d, _ = diffeig.sym_eigh_ncut(W, 3, laplacian="unnormalized")
    lam_l, _ = diffeig.sym_eigh_ncut(W, 3, laplacian="unnormalized", method="lobpcg")
    torch.testing.assert_close(lam_l, lam_d, atol=1e-8, rtol=1e-8)
    gd = ncut_grad(W, "dense", "unnormalized", k=3, C=C)
    gl = ncut_grad(W, "lobpcg", "unnormalized", k=3, C=C)
    assert ((gl - gd).abs().max() / gd.abs().max()).item() < 1e-6


@pytest.mark.parametrize("method", ["dense", "lobpcg"])
def test_empty_batch_every_method(method):
    W = torch.zeros(0, 10, 10, dtype=F64, requires_grad=True)
    lam, Z = diffeig.sym_eigh_ncut(W, 2, method=method)
    assert lam.shape == (0, 2) and Z.shape == (0, 10, 2)
    theta, X = diffeig.eigsh(W, 2, method=method)
    assert theta.shape == (0, 2) and X.shape == (0, 10, 2)
    (Z.sum() + X.sum()).backward()
    assert W.grad.shape == W.shape


def test_meta_tensors():
    W = torch.empty(4, 30, 30, dtype=F64, device="meta")
    lam, Z = diffeig.sym_eigh_ncut(W, 2)
    assert lam.shape == (4, 2) and Z.shape == (4, 30, 2) and Z.device.type == "meta"
    with pytest.raises(ValueError, match="cannot run on meta tensors"):
        diffeig.sym_eigh_ncut(W, 2, method="lobpcg")
    with pytest.raises(ValueError, match="cannot run on meta tensors"):
        diffeig.eigsh(W, 2)


def test_ncut_operator_checks_the_operator():
    W = affinity(torch.randn(30, 5, dtype=F64))
    with pytest.raises(ValueError, match="must return W @ X"):
        ncut_operator(lambda X, w: (w @ X)[:5], [W], (30,), 2)
    with pytest.raises(ValueError, match="must return W @ X"):
        ncut_operator(lambda X, w: (w @ X).float(), [W], (30,), 2)
    with pytest.raises(ValueError, match="non-finite"):
        ncut_operator(lambda X, w: w @ X * float("nan"), [W], (30,), 2)


def test_eigsh_checks_its_input_as_sym_eigh_ncut():
    A = torch.randn(30, 30, dtype=F64)
    with pytest.raises(ValueError, match="A must be symmetric"):
        diffeig.eigsh(A, 2)
    with pytest.raises(ValueError, match="A must be finite"):
        diffeig.eigsh(A + A.T + float("nan"), 2)
    S = A + A.T
    with pytest.raises(ValueError, match="B must be symmetric"):
        diffeig.eigsh(S, 2, B=A @ A.T + torch.triu(torch.ones(30, 30, dtype=F64)))


def test_affinity_refuses_non_finite_features():
    f = torch.randn(10, 4, dtype=F64)
    f[3, 1] = float("nan")
    with pytest.raises(ValueError, match="features must be finite"):
        affinity(f)
    with pytest.raises(ValueError, match="eps"):
        affinity(f.nan_to_num(), eps=float("nan"))


# --------------------------------------------------------------------- 11: patch_torch threads


@pytest.mark.parametrize("order", ["first-out-first", "last-out-first"])
def test_patch_torch_from_two_threads_exiting_out_of_order(order):
    original = torch.linalg.eigh
    entered = [threading.Event(), threading.Event()]
    leave = [threading.Event(), threading.Event()]
    seen = {}

    def worker(i, gap_eps):
        with diffeig.patch_torch(gap_eps=gap_eps):
            entered[i].set()
            leave[i].wait(10)
            seen[i] = torch.linalg.eigh is not original

    threads = [threading.Thread(target=worker, args=(i, e)) for i, e in ((0, None), (1, 1e-9))]
    threads[0].start()
    entered[0].wait(10)
    threads[1].start()
    entered[1].wait(10)
    first, second = (0, 1) if order == "first-out-first" else (1, 0)
    leave[first].set()
    threads[first].join(10)
    assert torch.linalg.eigh is not original  # the other patch is still open
    leave[second].set()
    threads[second].join(10)
    assert seen == {0: True, 1: True}
    assert torch.linalg.eigh is original and torch.linalg.eigvalsh is diffeig._eigh._torch_eigvalsh
