"""One graph's Fiedler pair by Lanczos (``sym_eigh_ncut(W, 2, method='lobpcg')`` with a
2-D W): the native ``diffeig::ncut_lanczos`` against its twin, the results against the
dense path on the graphs that break single-vector Krylov methods (ties, islands,
near-disconnected graphs), the LOBPCG fallback, the backward, and the op's contract."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import diffeig
from diffeig import _extension, _ops, _reference
from diffeig._tolerances import stall_floor
from diffeig.ncut import _choice, _lanczos, affinity, sym_eigh_ncut

needs_ext = pytest.mark.skipif(
    not _extension._LOADED, reason=f"native extension not built: {diffeig.load_error()}"
)


def clustered(n, seed=0, dtype=torch.float64, clusters=2):
    """Token-like features in ``clusters`` groups of unequal size, cosine affinity."""
    g = torch.Generator().manual_seed(seed)
    lab = torch.arange(n) * clusters // n
    centers = torch.randn(clusters, 8, generator=g, dtype=dtype)
    f = centers[lab] + 0.8 * torch.randn(n, 8, generator=g, dtype=dtype)
    return affinity(torch.nn.functional.normalize(f, dim=-1))


def unclustered(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return affinity(
        torch.nn.functional.normalize(torch.randn(n, 32, generator=g, dtype=dtype), dim=-1)
    )


def with_island(W, nodes=(5, 6, 7), weight=1e-6):
    """``W`` with a few nodes joined to each other by weight 1 and to all others by tiny
    weights only: their pair is l2 (~ weight N / 2), its vector concentrated on them,
    which the degree start does not point at."""
    W = W.clone()
    idx = torch.tensor(nodes)
    W[idx, :] = weight
    W[:, idx] = weight
    W[idx[:, None], idx[None, :]] = 1.0
    return W


def lanczos_args(W):
    d = W.sum(-1)
    u1 = d.sqrt() / d.sqrt().norm()
    g = torch.Generator().manual_seed(1)
    v0 = (
        d / d.norm()
        + 0.1 * torch.randn(W.shape[-1], generator=g, dtype=W.dtype) / W.shape[-1] ** 0.5
    )
    return W, d.rsqrt(), u1, v0


def dense_pairs(W, laplacian="ncut"):
    return sym_eigh_ncut(W, 2, laplacian=laplacian, method="dense")


def assert_same_pair(W, lam, Z, tol=1e-9):
    """The dense path's pair: l2 to 1e-9 (its error is about the residual squared over
    the gap), z2 to the solver's bound (residual ``tol`` of |L| = 2 over the gap to l3),
    with the same sign."""
    lam_d, Z_d = sym_eigh_ncut(W, 3, method="dense")
    torch.testing.assert_close(lam, lam_d[:2], rtol=1e-9, atol=1e-14)
    d = W.sum(-1)
    cos = torch.dot(Z[:, 1] * d, Z_d[:, 1])  # D-inner product of D-unit vectors
    assert cos > 0
    sin = (1 - min(cos.item(), 1.0) ** 2) ** 0.5
    assert sin <= 10 * 2 * tol / (lam_d[2] - lam_d[1]).item() + 1e-7


GRAPHS = {
    "two clusters": lambda: clustered(300),
    "three clusters": lambda: clustered(300, clusters=3),
    "no clusters": lambda: unclustered(300),
    "island": lambda: with_island(clustered(300)),
}


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", list(GRAPHS))
def test_native_equals_reference(kind, dtype):
    args = lanczos_args(GRAPHS[kind]().to(dtype))
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    x, info = torch.ops.diffeig.ncut_lanczos(*args, tol, stall_floor(tol), 256)
    xr, info_r = _reference.ncut_lanczos(*args, tol, stall_floor(tol), 256)
    assert info[4] == 1 and info_r[4] == 1  # converged
    assert abs(info[3] - info_r[3]) <= 2  # steps: the tests are spaced by rounding-level residuals
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(info[0], info_r[0], rtol=rtol, atol=rtol)
    cos = torch.dot(x.double(), xr.double()).abs()
    assert 1 - cos <= (1e-12 if dtype == torch.float64 else 1e-5)
    # the Ritz pair: unit, orthogonal to the trivial vector, residual as reported
    W, dis, u1, _ = (a.double() for a in args)
    x64 = x.double()
    assert abs(x64.norm() - 1) < 1e-6 and abs(torch.dot(u1, x64)) < 1e-6
    r = (dis * (W @ (dis * x64)) - info[0] * x64).norm()
    assert r <= max(10 * info[2], 1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("kind", list(GRAPHS))
def test_one_graph_uses_lanczos_and_matches_dense(kind, monkeypatch):
    W = GRAPHS[kind]()
    calls = []
    orig = _ops.ncut_lanczos
    monkeypatch.setattr(_ops, "ncut_lanczos", lambda *a: calls.append(1) or orig(*a))
    lam, Z = sym_eigh_ncut(W, 2, method="lobpcg")
    assert calls == [1]
    if kind == "three clusters":
        # l2 and l3 nearly tie (two equal clusters of three): compare the pair's values,
        # and the vector as one of the near-eigenspace's (its residual)
        lam_d, _ = dense_pairs(W)
        torch.testing.assert_close(lam, lam_d, rtol=1e-9, atol=1e-14)
    else:
        assert_same_pair(W, lam, Z)
    d = W.sum(-1)
    z = Z[:, 1]
    assert torch.dot(z * d, z).item() == pytest.approx(1, abs=1e-12)  # D-orthonormal
    residual = (d * z - W @ z - lam[1] * d * z).norm() / d.norm()
    assert residual < 1e-8


def test_the_island_pair_is_not_skipped():
    # the island's pair is far below the clusters' (l2 ~ 1e-6 vs l3 ~ 0.1): a solver that
    # misses the island returns l3 with a small residual, which no residual test catches
    W = with_island(clustered(300))
    lam, Z = sym_eigh_ncut(W, 3, method="dense")
    assert lam[1] < 1e-2 * lam[2]
    lam_l, Z_l = sym_eigh_ncut(W, 2, method="lobpcg")
    torch.testing.assert_close(lam_l[1], lam[1], rtol=1e-9, atol=0)
    assert Z_l[:, 1].abs().argmax() in (5, 6, 7)


def test_exact_tie_returns_a_vector_of_the_eigenspace():
    # four identical, equally weakly joined clusters: l2 = l3 = l4 exactly; z2 is any
    # vector of that eigenspace, l2 its value
    n = 200
    lab = torch.arange(n) % 4
    W = torch.where(lab[:, None] == lab[None, :], 1.0, 1e-3).double()
    lam_d, _ = dense_pairs(W)
    lam, Z = sym_eigh_ncut(W, 2, method="lobpcg")
    torch.testing.assert_close(lam, lam_d, rtol=1e-9, atol=1e-14)
    d = W.sum(-1)
    z = Z[:, 1]
    assert (d * z - W @ z - lam[1] * d * z).norm() / d.norm() < 1e-8


def test_near_disconnected_graph_keeps_l2_relative_accuracy():
    W = clustered(300)
    half = 150
    W[:half, half:] *= 1e-9
    W[half:, :half] *= 1e-9
    lam_d, Z_d = dense_pairs(W)
    assert lam_d[1] < 1e-8
    lam, Z = sym_eigh_ncut(W, 2, method="lobpcg")
    torch.testing.assert_close(lam[1], lam_d[1], rtol=1e-6, atol=0)
    torch.testing.assert_close(Z, Z_d, rtol=0, atol=1e-7 * Z_d.abs().max().item())


def test_float32_agrees_with_float64():
    W = clustered(300)
    lam64, Z64 = dense_pairs(W)
    lam32, Z32 = sym_eigh_ncut(W.float(), 2, method="lobpcg")
    torch.testing.assert_close(lam32.double(), lam64, rtol=1e-4, atol=1e-6)
    assert (1 - torch.nn.functional.cosine_similarity(Z32.double(), Z64, dim=0)).abs().max() < 1e-5


def test_not_converged_falls_back_to_lobpcg(monkeypatch):
    # three Lanczos steps cannot reach 1e-9 on a graph without clusters: LOBPCG carries
    # on from the Ritz vector, and the result is the dense path's
    W = unclustered(300)
    calls = []
    orig = _lanczos.lobpcg_ncut_pairs
    monkeypatch.setattr(  # a spy on the function, which runs unchanged
        _lanczos, "lobpcg_ncut_pairs", lambda *a, **kw: calls.append(kw) or orig(*a, **kw)
    )
    d = W.sum(-1)
    lam, _, Z = _lanczos.lanczos_ncut_pairs(W, d, "max", None, 1000, "warn", max_steps=3)
    assert len(calls) == 1 and calls[0]["start"].shape == (300, 1)
    assert_same_pair(W, lam, Z)


def test_backward_matches_dense_and_gradcheck():
    W0 = clustered(120)
    g = torch.Generator().manual_seed(3)
    gZ = torch.randn(120, 2, generator=g, dtype=torch.float64)
    grads = {}
    for method in ("dense", "lobpcg"):
        W = W0.clone().requires_grad_()
        lam, Z = sym_eigh_ncut(W, 2, method=method)
        (lam.sum() + (Z * gZ).sum()).backward()
        grads[method] = W.grad
    gd, gl = grads["dense"], grads["lobpcg"]
    torch.testing.assert_close(gl, gd, rtol=0, atol=3e-8 * gd.abs().max().item())

    W = (clustered(30) + 0.01).requires_grad_()  # N = 30: past the dense cut-off

    def fn(W):
        lam, Z = sym_eigh_ncut(0.5 * (W + W.T), 2, method="lobpcg", tol=1e-12)
        return lam, Z[:, 1] ** 2

    assert _choice.uses_lanczos(W, 2, True, None)
    assert gradcheck(fn, (W,), eps=1e-5, atol=1e-6, rtol=1e-4)


def test_which_calls_take_lanczos():
    W = clustered(64)
    assert _choice.uses_lanczos(W, 2, True, None)
    assert not _choice.uses_lanczos(W[None], 2, True, None)  # a batch: LOBPCG
    assert not _choice.uses_lanczos(W, 3, True, None)  # several pairs: LOBPCG
    assert not _choice.uses_lanczos(W, 2, False, None)  # D - W: Jacobi-LOBPCG
    assert not _choice.uses_lanczos(W, 2, True, 1e-8)  # 'auto' certifies the gap
    assert not _choice.uses_lanczos(W[:20, :20], 2, True, None)  # dense cut-off


@needs_ext
def test_op_contract():
    W, dis, u1, v0 = lanczos_args(clustered(40))
    op = torch.ops.diffeig.ncut_lanczos
    torch.library.opcheck(op.default, (W, dis, u1, v0, 1e-9, stall_floor(1e-9), 50))
    with pytest.raises(RuntimeError, match="W must be one square matrix"):
        op(W[None], dis, u1, v0, 1e-9, 1e-12, 50)
    with pytest.raises(RuntimeError, match=r"dis must have shape \(40\)"):
        op(W, dis[:-1], u1, v0, 1e-9, 1e-12, 50)
    with pytest.raises(RuntimeError, match="u1 must be Double"):
        op(W, dis, u1.float(), v0, 1e-9, 1e-12, 50)
    with pytest.raises(RuntimeError, match="tol must be positive"):
        op(W, dis, u1, v0, 0.0, 1e-12, 50)
    with pytest.raises(RuntimeError, match="floor must be non-negative"):
        op(W, dis, u1, v0, 1e-9, -1.0, 50)
    with pytest.raises(RuntimeError, match="max_steps must be >= 1"):
        op(W, dis, u1, v0, 1e-9, 1e-12, 0)
    x, info = op(W, dis, u1, v0, 1e-30, 1e-12, 5)  # steps exhausted: reported, not converged
    assert info[3] == 5 and info[4] == 0 and x.shape == (40,)


def test_under_compile_and_func_grad():
    W = clustered(100)
    weights = torch.arange(100.0, dtype=W.dtype)

    def loss(W):
        return (sym_eigh_ncut(W, 2, method="lobpcg")[1][:, 1] ** 2 * weights).sum()

    Wr = W.clone().requires_grad_()
    loss(Wr).backward()
    torch.testing.assert_close(torch.func.grad(loss)(W), Wr.grad, rtol=0, atol=1e-12)
    # torch.compile: the op traces through its fake kernel, reading its report is a
    # graph break; the results are the eager ones
    torch.testing.assert_close(torch.compile(loss)(W), loss(W), rtol=1e-12, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_one_graph_on_cuda_matches_cpu():
    # on CUDA the twin runs (the native op is CPU-only): same pair, same gradient
    W = clustered(300)
    out = {}
    for dev in ("cpu", "cuda"):
        Wd = W.to(dev).requires_grad_()
        lam, Z = sym_eigh_ncut(Wd, 2, method="lobpcg")
        (Z[:, 1] ** 3).sum().backward()
        out[dev] = (lam.detach().cpu(), Z.detach().cpu(), Wd.grad.cpu())
    (l1, z1, g1), (l2, z2, g2) = out["cpu"], out["cuda"]
    torch.testing.assert_close(l2, l1, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(z2, z1, rtol=0, atol=1e-7 * z1.abs().max().item())
    torch.testing.assert_close(g2, g1, rtol=0, atol=1e-6 * g1.abs().max().item())
