"""diffeig.sym_eigh_ncut and the diffeig.ncut helpers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck

import diffeig
from diffeig import _reference
from diffeig.baselines import sym_eigh_ncut_pinv
from diffeig.ncut import affinity, bipartition, seed, sym_eigh_ncut


def features(B, N, C=6, seed=0, dtype=torch.float64, fg=0.4):
    """Key-like features: a foreground block and a background, plus noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(2, C, dtype=dtype, generator=g)
    label = (torch.arange(N) < int(fg * N)).long()
    f = protos[label] + 0.8 * torch.randn(*B, N, C, dtype=dtype, generator=g)
    return f


def graphs(dtype=torch.float64):
    """Random weighted, TokenCut binary and near-disconnected block graphs."""
    g = torch.Generator().manual_seed(7)
    out = {}
    out["weighted"] = affinity(features((3,), 12, dtype=dtype))
    out["binary"] = affinity(
        features((2,), 12, seed=1, dtype=dtype), tau=0.2, eps=1e-5, mode="binary"
    )
    blocks = torch.block_diag(
        torch.rand(5, 5, generator=g, dtype=dtype) + 0.5,
        torch.rand(6, 6, generator=g, dtype=dtype) + 0.5,
    )
    blocks = blocks + 1e-4  # weakly connected
    out["block"] = 0.5 * (blocks + blocks.T)
    return out


def scipy_reference(W, laplacian):
    W = W.double().numpy()
    D = np.diag(W.sum(-1))
    if laplacian == "ncut":
        return scipy.linalg.eigh(D - W, D)
    return scipy.linalg.eigh(D - W)


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
@pytest.mark.parametrize("kind", ["weighted", "binary", "block"])
def test_forward_matches_scipy(dtype, laplacian, kind, backend):
    W = graphs(dtype)[kind]
    k = 3
    lam, Z = sym_eigh_ncut(W, k, laplacian=laplacian)
    assert lam.shape == (*W.shape[:-2], k) and Z.shape == (*W.shape[:-1], k)
    Wb = W.reshape(-1, *W.shape[-2:])
    lam_b, Z_b = lam.reshape(-1, k), Z.reshape(-1, W.shape[-1], k)
    # measured: float32 eigenvalues within 3.2e-6 and vectors within 5.8e-6 of scipy's
    # (float64: 1.6e-14 and 3e-12), native and reference paths alike
    tol_lam, tol_z = (1e-5, 1e-4) if dtype == torch.float32 else (1e-12, 1e-10)
    for i in range(Wb.shape[0]):
        w, v = scipy_reference(Wb[i], laplacian)
        np.testing.assert_allclose(lam_b[i].double().numpy(), w[:k], atol=tol_lam)
        for s in range(k):
            if min(abs(w[s] - w[t]) for t in range(len(w)) if t != s) < 1e-6:
                continue  # a tied eigenvalue: any basis of its eigenspace is right
            ref = v[:, s] * np.sign(v[np.abs(v[:, s]).argmax(), s])
            np.testing.assert_allclose(Z_b[i, :, s].double().numpy(), ref, atol=tol_z)


def test_sign_rules():
    W = graphs()["weighted"]
    _, Z = sym_eigh_ncut(W, 3, sign="max")
    idx = Z.abs().argmax(-2, keepdim=True)
    assert (torch.gather(Z, -2, idx) > 0).all()
    _, Zs = sym_eigh_ncut(W, 3, sign="sum")
    assert (Zs.sum(-2) >= -1e-12).all()
    _, Zn = sym_eigh_ncut(W, 3, sign=None)
    assert_close(Zn.abs(), Z.abs())


def test_trivial_pair_and_d_orthonormality():
    W = graphs()["weighted"]
    lam, Z = sym_eigh_ncut(W, 3)
    d = W.sum(-1)
    # z^T D z = I
    assert_close(
        Z.mT @ (d.unsqueeze(-1) * Z), torch.eye(3, dtype=W.dtype).expand(3, 3, 3), scale=1e3
    )
    # l_1 = 0 and z_1 constant on a connected graph
    assert_close(lam[..., 0], torch.zeros(3, dtype=W.dtype), scale=1e4)
    z1 = Z[..., 0]
    assert_close(z1, z1.mean(-1, keepdim=True).expand_as(z1), scale=1e4)


# ---------------------------------------------------------------------------- backward


def _sym(W):
    return 0.5 * (W + W.mT)


@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
def test_gradcheck_wrt_W(laplacian, backend):
    W = graphs()["weighted"][:2].clone().requires_grad_()
    assert gradcheck(lambda W: sym_eigh_ncut(_sym(W), 3, laplacian=laplacian), (W,))


@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
def test_gradcheck_wrt_features(laplacian):
    f = features((2,), 10).requires_grad_()

    def fn(f):
        lam, Z = sym_eigh_ncut(affinity(f), 2, laplacian=laplacian)
        return lam, torch.sigmoid(Z[..., 1] / 0.05)

    assert gradcheck(fn, (f,))


def full_spectrum_oracle(W, k, laplacian):
    """Autograd through the reference Laplacian and diffeig.eigh on the full spectrum."""
    normalized = laplacian == "ncut"
    L, d = _reference.laplacian(W, normalized)
    lam, V = diffeig.eigh(L)
    Vk = V[..., :k]
    with torch.no_grad():
        Zc = Vk * d.rsqrt().unsqueeze(-1) if normalized else Vk
        idx = Zc.abs().argmax(-2, keepdim=True)
        s = torch.gather(Zc, -2, idx).sign()
    Vk = Vk * s
    Z = Vk * d.rsqrt().unsqueeze(-1) if normalized else Vk
    return lam[..., :k], Z


@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_backward_equals_full_spectrum_formula_and_pinv(laplacian, k, backend):
    W0 = graphs()["weighted"]
    gl = torch.randn(3, k, dtype=W0.dtype, generator=torch.Generator().manual_seed(0))
    gZ = torch.randn(3, 12, k, dtype=W0.dtype, generator=torch.Generator().manual_seed(1))
    grads = []
    for fn in (sym_eigh_ncut, full_spectrum_oracle, sym_eigh_ncut_pinv):
        W = W0.clone().requires_grad_()
        if fn is full_spectrum_oracle:
            lam, Z = fn(W, k, laplacian)
        else:
            lam, Z = fn(W, k, laplacian=laplacian)
        ((lam * gl).sum() + (Z * gZ).sum()).backward()
        grads.append(_sym(W.grad))
    assert_close(grads[0], grads[0].mT)  # returned symmetric
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
def test_the_strongest_pinv_baseline_gives_the_same_gradient(laplacian, monkeypatch):
    # hermitian pseudo-inverses of only the vectors the loss uses: what a fair baseline
    # runs; on a loss of z2 alone it inverts one shifted matrix, not k
    W0 = graphs()["weighted"]
    calls = []
    pinv = torch.linalg.pinv
    monkeypatch.setattr(torch.linalg, "pinv", lambda A, **kw: calls.append(kw) or pinv(A, **kw))
    grads = []
    for kw in ({}, {"hermitian": True, "used_only": True}):
        W = W0.clone().requires_grad_()
        _, Z = sym_eigh_ncut_pinv(W, 3, laplacian=laplacian, **kw)
        (Z[..., 1] ** 3).sum().backward()
        grads.append(W.grad)
    assert [c.get("hermitian") for c in calls] == [False] * 3 + [True]
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-8, atol=1e-10)
    W = W0.clone().requires_grad_()  # no vector used: a zero gradient, no inverse
    lam, _ = sym_eigh_ncut_pinv(W, 2, laplacian=laplacian, hermitian=True, used_only=True)
    lam.sum().backward()
    assert len(calls) == 4 and bool(torch.isfinite(W.grad).all())


def test_binary_graph_where_torch_gives_nan():
    # Two cliques in a binary graph: many exactly tied eigenvalues inside each clique.
    N = 10
    lab = torch.arange(N) < 4
    W = torch.where(lab[:, None] == lab[None, :], 1.0, 1e-3).double()
    L, d = _reference.laplacian(W, True)
    Lt = L.clone().requires_grad_()
    (gt,) = torch.autograd.grad(torch.linalg.eigh(Lt).eigenvectors[:, 1].pow(3).sum(), Lt)
    assert not torch.isfinite(gt).all(), "torch.linalg.eigh is expected to fail here"

    def loss(W):
        return sym_eigh_ncut(_sym(W), 2)[1][:, 1].pow(3).sum()

    Wr = W.clone().requires_grad_()
    (gW,) = torch.autograd.grad(loss(Wr), Wr)
    assert torch.isfinite(gW).all()
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        E = torch.randn(N, N, dtype=torch.float64, generator=g)
        E = _sym(E)
        h = 1e-6
        fd = (loss(W + h * E) - loss(W - h * E)) / (2 * h)
        torch.testing.assert_close((gW * E).sum(), fd, rtol=1e-5, atol=1e-9)


def test_double_backward_raises_clearly():
    W = graphs()["weighted"][0].clone().requires_grad_()
    (g,) = torch.autograd.grad(sym_eigh_ncut(W)[1].pow(2).sum(), W, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate"):
        torch.autograd.grad(g.sum(), W)


def test_gap_eps_paper_value():
    W = graphs()["weighted"].clone().requires_grad_()
    sym_eigh_ncut(W, 2, gap_eps=1e-9)[1][..., 1].sum().backward()
    assert torch.isfinite(W.grad).all()


# -------------------------------------------------------------------------- transforms


def test_vmap_matches_batched(backend):
    W = graphs()["weighted"]
    lam, Z = torch.func.vmap(lambda w: sym_eigh_ncut(w, 2))(W)
    lb, Zb = sym_eigh_ncut(W, 2)
    assert_close(lam, lb)
    assert_close(Z, Zb)
    gv = torch.func.vmap(torch.func.grad(lambda w: sym_eigh_ncut(w, 2)[1][:, 1].pow(3).sum()))(W)
    Wr = W.clone().requires_grad_()
    sym_eigh_ncut(Wr, 2)[1][..., 1].pow(3).sum().backward()
    assert_close(gv, Wr.grad)


@pytest.mark.slow  # torch.compile warms up for about 10 s
def test_compile_fullgraph(backend):
    torch._dynamo.reset()

    def loss(f):
        lam, Z = sym_eigh_ncut(affinity(f), 2)
        return torch.sigmoid(Z[..., 1] / 0.05).sum() + lam.sum()

    f = features((2,), 12)
    a, b = f.clone().requires_grad_(), f.clone().requires_grad_()
    torch.compile(loss, fullgraph=True)(a).backward()
    loss(b).backward()
    assert_close(a.grad, b.grad)


# -------------------------------------------------------------------------- hypothesis


@settings(deadline=None, max_examples=25)
@given(
    n=st.integers(3, 14),
    seed_=st.integers(0, 2**31 - 1),
    tau=st.sampled_from([0.0, 0.2]),
    mode=st.sampled_from(["weighted", "binary"]),
    laplacian=st.sampled_from(["ncut", "unnormalized"]),
)
def test_properties(n, seed_, tau, mode, laplacian):
    f = torch.randn(n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed_))
    W = affinity(f, tau=tau, mode=mode, eps=1e-3)
    k = min(3, n)
    lam, Z = sym_eigh_ncut(W, k, laplacian=laplacian)
    d = W.sum(-1)
    B = torch.diag(d) if laplacian == "ncut" else torch.eye(n, dtype=W.dtype)
    res = (torch.diag(d) - W) @ Z - (B @ Z) * lam
    assert res.abs().max() < 1e-9 * max(1.0, d.max().item())
    assert_close(Z.T @ B @ Z, torch.eye(k, dtype=W.dtype), scale=1e4)
    assert lam[0].abs() < 1e-9 * max(1.0, d.max().item())  # trivial pair
    assert_close(Z[:, 0], Z[:, 0].mean().expand(n), scale=1e4)  # constant: connected graph


# -------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "W, kwargs, match",
    [
        (-torch.ones(3, 3), {}, "non-negative"),
        (torch.tensor([[1.0, 2.0], [0.0, 1.0]]), {}, "symmetric"),
        (torch.full((3, 3), float("nan")), {}, "finite"),
        (torch.zeros(3, 3), {}, "zero degree"),
        (torch.ones(3, 4), {}, "square"),
        (torch.ones(3, 3, dtype=torch.int64), {}, "dtype"),
        (torch.ones(3, 3, dtype=torch.complex64), {}, "dtype"),
        (torch.ones(3, 3), {"k": 4}, "k must be in"),
        (torch.ones(3, 3), {"k": 0}, "k must be in"),
        (torch.ones(3, 3), {"k": 2.0}, "k must be an int"),
        (torch.ones(3, 3), {"laplacian": "sym"}, "laplacian must be"),
        (torch.ones(3, 3), {"sign": "min"}, "sign must be"),
        (torch.ones(3, 3), {"gap_eps": -1.0}, "gap_eps"),
    ],
)
def test_bad_input(W, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sym_eigh_ncut(W, **kwargs)


def test_zero_degree_allowed_for_unnormalized():
    W = torch.block_diag(torch.ones(3, 3), torch.zeros(1, 1)).double()
    lam, Z = sym_eigh_ncut(W, 2, laplacian="unnormalized")
    assert torch.isfinite(Z).all()


def test_empty_batch():
    lam, Z = sym_eigh_ncut(torch.ones(0, 4, 4), 2)
    assert lam.shape == (0, 2) and Z.shape == (0, 4, 2)


# ------------------------------------------------------------------------------- helpers


def test_affinity_modes():
    f = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.1]], dtype=torch.float64)
    W = affinity(f, tau=0.0, eps=1e-6)
    c = 1 / 2**0.5
    expected = torch.tensor([[1.0, c, 1e-6], [c, 1.0, 1e-6], [1e-6, 1e-6, 1.0]], dtype=W.dtype)
    assert_close(W, expected, scale=1e3)
    Wb = affinity(f, tau=0.2, eps=1e-5, mode="binary")
    assert_close(Wb, torch.where(expected > 0.2, 1.0, 1e-5).double())
    assert torch.equal(W, W.mT)
    with pytest.raises(ValueError, match="mode"):
        affinity(f, mode="soft")
    with pytest.raises(ValueError, match="features"):
        affinity(torch.ones(3))


def test_bipartition_rules_and_seed():
    z = torch.tensor([0.9, 0.2, -0.1, -0.3, -0.2])
    assert seed(z).item() == 0
    # zero split: z > 0 has 2 of 5 nodes, the smaller side -> foreground
    assert bipartition(z).tolist() == [True, True, False, False, False]
    # the smaller side is z <= 0 when most entries are positive
    assert bipartition(-z + 0.25).tolist() == [True, False, False, False, False]
    # mean split (mean = 0.1): the side holding argmax |z| (index 0) is foreground
    assert bipartition(z, rule="mean").tolist() == [True, True, False, False, False]
    assert bipartition(-z, rule="mean").tolist() == [True, True, False, False, False]
    batch = torch.stack([z, -z])
    assert bipartition(batch, rule="mean").shape == (2, 5)
    with pytest.raises(ValueError, match="rule"):
        bipartition(z, rule="median")


def test_unnormalized_backward_drops_the_trivial_couplings():
    """D - W on a nearly disconnected training-like graph (l_2 / l_max = 7.5e-6) with a
    saturated mask: the couplings with the constant vector, (u1 . g) / l_2, used to cancel
    in dL/dW only up to rounding, leaving noise the size of the gradient itself (dense and
    LOBPCG 4 % apart). Removed (exactly), what is left is the solver's tolerance."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _common import make_affinity, synthetic_features

    W = make_affinity(synthetic_features(256, 14, 64, dtype=torch.float64)[80:81])[0]
    lam = torch.linalg.eigvalsh(torch.diag(W.sum(-1)) - W)
    assert lam[1] / lam[-1] < 1e-5  # the case in point

    def grad(method, project, tol=None):
        Wr = W.clone().requires_grad_()
        _, Z = sym_eigh_ncut(Wr, 2, laplacian="unnormalized", method=method, tol=tol)
        z = Z[..., 1] - Z[..., 1].mean() if project else Z[..., 1]  # z2 . 1 = 0 exactly
        torch.sigmoid(z / 0.05).square().mean().backward()
        return Wr.grad

    dense, lobpcg = grad("dense", False), grad("lobpcg", False)
    assert ((lobpcg - dense).norm() / dense.norm()).item() < 1e-5  # was 4e-2
    tight = grad("lobpcg", False, tol=1e-12)
    assert ((tight - dense).norm() / dense.norm()).item() < 1e-8
    # The same as projecting the cotangent by hand (the loss is the same function of W).
    for method, g in (("dense", dense), ("lobpcg", lobpcg)):
        ref = grad(method, True)
        assert ((g - ref).norm() / ref.norm()).item() < 1e-9, method


# ------------------------------------------------------------------ gaussian_affinity


def test_gaussian_affinity_is_scikit_learns_rbf_kernel():
    # tests/data/rbf_fixture.pt: scripts/make_rbf_fixture.py (scikit-learn 1.9.1)
    from pathlib import Path

    fx = torch.load(Path(__file__).parent / "data" / "rbf_fixture.pt", weights_only=True)
    X = fx["X"]
    for case in fx["rbf"]:
        W = diffeig.ncut.gaussian_affinity(X, sigma=case["sigma"])
        torch.testing.assert_close(W, case["W"], rtol=1e-12, atol=1e-14)
    for k, union in fx["knn"].items():
        W = diffeig.ncut.gaussian_affinity(X, sigma=1.0, topk=k)
        off = ~torch.eye(X.shape[0], dtype=torch.bool)
        assert torch.equal((W > 0) & off, union)  # the union of the kNN neighbourhoods
        assert torch.equal(W, W.mT)
        dense = diffeig.ncut.gaussian_affinity(X, sigma=1.0)
        torch.testing.assert_close(W[W > 0], dense[W > 0], rtol=0, atol=0)


def test_gaussian_affinity_gradient_and_batches():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2, 12, 3, dtype=torch.float64, generator=g)

    def f(X):
        return diffeig.ncut.gaussian_affinity(X, sigma=1.3, topk=4).sum()

    assert torch.autograd.gradcheck(f, (X.clone().requires_grad_(),))
    batched = diffeig.ncut.gaussian_affinity(X, sigma=1.3, topk=4)
    for b in range(2):
        assert torch.equal(batched[b], diffeig.ncut.gaussian_affinity(X[b], sigma=1.3, topk=4))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma": 0.0}, "sigma must be positive"),
        ({"sigma": float("nan")}, "sigma must be a finite number"),
        ({"sigma": 1.0, "topk": 12}, "topk must be"),
        ({"sigma": 1.0, "topk": 0}, "topk must be"),
        ({"sigma": 1.0, "topk": 2.5}, "topk must be"),
    ],
)
def test_gaussian_affinity_checks_its_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        diffeig.ncut.gaussian_affinity(torch.randn(12, 3), **kwargs)
