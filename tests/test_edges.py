"""Reliability round 3 (issue 22): the right answer or a clear error at the edges: extreme
scales, near-tie clusters, the trivial pair, near ties at the k-th pair, small eigenvalues."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import diffeig
from diffeig.ncut import affinity

F64 = torch.float64


def token_graph(n=60, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return affinity(torch.randn(n, 8, generator=g, dtype=F64)).to(dtype)


def ncut_grad(W, method, laplacian, k=3):
    W = W.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lam, Z = diffeig.sym_eigh_ncut(W, k, method=method, laplacian=laplacian)
    z = Z[:, 1]
    torch.sigmoid(z / z.abs().max()).sum().backward()
    return W.grad, lam


# ------------------------------------------------------------------------------ 2: scale

SCALES = [(F64, s, 1e-9) for s in (1e250, 1e300, 1e-250, 1e-300)] + [
    (torch.float32, s, 2e-3) for s in (1e30, 1e35, 1e37, 1e-30)
]


@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
@pytest.mark.parametrize("method", ["dense", "lobpcg"])
@pytest.mark.parametrize(("dtype", "s", "rtol"), SCALES)
def test_ncut_is_invariant_to_the_scale_of_W(dtype, s, rtol, method, laplacian):
    # NCut: eigenvalues unchanged, D-orthonormal vectors scale by 1 / sqrt(s); D - W:
    # eigenvalues scale by s. The loss reads z2 / max|z2|: g(s W) * s = g(W).
    W = token_graph(dtype=dtype)
    g, lam = ncut_grad(W, method, laplacian)
    gs, lams = ncut_grad(W * s, method, laplacian)
    assert torch.isfinite(gs).all()
    assert ((gs * s - g).norm() / g.norm()).item() < rtol
    expect = lam if laplacian == "ncut" else lam * s
    assert torch.allclose(lams[1:], expect[1:], rtol=rtol * 10, atol=0)
    assert bool((lams[1:] > 0).all())  # no negative l2 (float32 * 1e35 gave -2.6e-8)


def test_unit_scale_is_a_power_and_leaves_ordinary_inputs_alone():
    from diffeig._scaling import scale2, unit_scale

    assert unit_scale(1.0) == unit_scale(1e5) == unit_scale(None) == unit_scale(0.0) == 0
    assert unit_scale(1e300) == round(math.log2(1e300))
    e = unit_scale(1e-300, power=4)
    assert e % 2 == 0 and abs(e - math.log2(1e-300)) <= 1
    # exponents whose power of two is no float (issue 31: 1e-310 and 1.7e308 overflowed)
    assert unit_scale(1e-310, power=4) == -1030 and unit_scale(1.7e308, power=4) == 1024
    t = torch.tensor([1e-310, 3e-309], dtype=torch.float64)
    assert torch.equal(scale2(scale2(t, 1030), -1030), t)  # exact both ways
    assert scale2(1.0, 2000) == math.inf and scale2(3.0, -2) == 0.75


@pytest.mark.parametrize("s", [1e300, 1e-300])
@pytest.mark.parametrize("fn", ["eigh", "eigvalsh", "eigsh", "eigsh_B"])
def test_eigh_family_is_equivariant_to_scale(fn, s):
    g = torch.Generator().manual_seed(1)
    n = 24
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    A0 = Q @ torch.diag(torch.linspace(-1, 2, n, dtype=F64)) @ Q.T
    c = torch.randn(n, generator=g, dtype=F64)

    def grad(A, scale):
        A = A.clone().requires_grad_()
        if fn == "eigvalsh":
            L, loss = diffeig.eigvalsh(A), 0.0
            loss = L[-1] / scale
        else:
            if fn == "eigh":
                L, V = diffeig.eigh(A)
            elif fn == "eigsh":
                L, V = diffeig.eigsh(A, 3)
            else:
                L, V = diffeig.eigsh(A, 3, B=torch.full((n,), 2.0 * scale, dtype=F64))
            loss = (V[:, 1] @ c) ** 2 * (scale**0.5 if fn == "eigsh_B" else 1.0) ** 2
        loss.backward()
        return A.grad

    g1, gs = grad(A0, 1.0), grad(A0 * s, s)
    assert torch.isfinite(gs).all()
    # every loss here is invariant to the scale: dL/d(sA) = dL/dA / s
    assert ((gs * s - g1).norm() / g1.norm()).item() < 1e-9


# ------------------------------------------------------------------ 3: near-tie clusters


def cluster_gradients(n, seed, spread, dtype):
    """Gradients of a loss invariant within a 3-cluster (its projector and eigenvalue
    sum) plus one on a separated vector, for the cluster spread by ``spread`` (relative
    to max|l| = 1) and for the exact tie."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=dtype))
    C = torch.randn(n, n, generator=g, dtype=dtype)
    C = C + C.mH
    base = torch.linspace(-1, 1, n, dtype=F64)
    c = n // 2
    out = []
    for s in (0.0, spread):
        lam = base.clone()
        lam[c : c + 3] = base[c] + s * torch.tensor([-1.0, 0.3, 1.0], dtype=F64)
        A = (Q * lam.to(dtype)) @ Q.mH
        A = (0.5 * (A + A.mH)).detach().requires_grad_()
        L, V = diffeig.eigh(A)
        Vc = V[:, c : c + 3]
        v0 = V[:, 0]
        loss = ((Vc @ Vc.mH) * C).real.sum() + L[c : c + 3].sum() + (v0.conj() @ C @ v0).real
        loss.backward()
        out.append(A.grad)
    return out


@pytest.mark.parametrize("dtype", [F64, torch.complex128])
@pytest.mark.parametrize("n", [8, 32])
@pytest.mark.parametrize("seed", range(6))
def test_near_tie_cluster_gives_the_exact_ties_gradient(seed, n, dtype):
    tie, near = cluster_gradients(n, seed, 1e-14, dtype)
    assert ((tie - near).abs().max() / tie.abs().max()).item() < 1e-8


@pytest.mark.parametrize("n", [8, 32])
def test_true_gaps_of_1e_10_are_not_masked(n):
    # Masked, this non-invariant loss would lose its (huge, 1 / gap) eigenvector term.
    tie, near = cluster_gradients(n, 0, 1e-10, F64)
    assert ((tie - near).abs().max() / tie.abs().max()).item() < 1e-5  # still invariant
    A = torch.diag(torch.tensor([1.0, 1.0 + 1e-10, 2.0], dtype=F64)).requires_grad_()
    V = diffeig.eigh(A).eigenvectors
    (g,) = torch.autograd.grad(V[:, 0].sum() * V[0, 0], A)
    assert g.abs().max() > 1e3


# ----------------------------------------------------------------------- 4: trivial pair


def two_blocks(n=40, cross=1e-9, seed=0):
    """Two random 40-node blocks joined by one ``cross`` edge: l2 ~ 1e-12, next to l1 = 0."""
    g = torch.Generator().manual_seed(seed)
    W = torch.zeros(2 * n, 2 * n, dtype=F64)
    for b in range(2):
        X = torch.rand(n, n, generator=g, dtype=F64)
        W[b * n : (b + 1) * n, b * n : (b + 1) * n] = 0.5 * (X + X.T)
    W.fill_diagonal_(0)
    W[0, n] = W[n, 0] = cross
    return W


@pytest.mark.parametrize("method", ["dense", "lobpcg", "auto"])
@pytest.mark.parametrize("seed", range(3))
def test_trivial_pair_of_d_minus_w_has_no_gradient(seed, method):
    W = two_blocks(seed=seed).requires_grad_()
    c = torch.randn(80, generator=torch.Generator().manual_seed(seed + 9), dtype=F64)
    lam, Z = diffeig.sym_eigh_ncut(W, 3, laplacian="unnormalized", method=method)
    assert lam[0].item() == 0.0 and torch.equal(Z[:, 0], torch.full_like(Z[:, 0], 80**-0.5))
    ((Z[:, 0] @ c) ** 2 + 5 * lam[0]).backward()
    assert W.grad.abs().max().item() == 0.0  # dense gave up to 3.4e3


@pytest.mark.parametrize("method", ["dense", "lobpcg", "auto"])
@pytest.mark.parametrize("seed", range(3))
def test_trivial_pair_of_the_ncut_in_closed_form(seed, method):
    # z1 = 1 / sqrt(vol): (z1 . c)^2 = (sum c)^2 / vol, so dL/dW_ij = -(sum c)^2 / vol^2.
    W = two_blocks(seed=seed).requires_grad_()
    c = torch.randn(80, generator=torch.Generator().manual_seed(seed + 9), dtype=F64)
    lam, Z = diffeig.sym_eigh_ncut(W, 3, method=method)
    ((Z[:, 0] @ c) ** 2 + 5 * lam[0]).backward()
    expected = -(c.sum() ** 2) / W.detach().sum() ** 2
    assert ((W.grad - expected).abs().max() / expected.abs()).item() < 1e-10


@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
@pytest.mark.parametrize("method", ["dense", "lobpcg"])
def test_gradcheck_through_every_returned_pair(method, laplacian):
    g = torch.Generator().manual_seed(5)
    A = torch.rand(12, 12, dtype=F64, generator=g)
    A = 0.5 * (A + A.T) + 0.1
    C = torch.randn(12, 3, dtype=F64, generator=g)
    w = torch.tensor([1.0, 2.0, 3.0], dtype=F64)

    def f(X):
        X = 0.5 * (X + X.mT)
        lam, Z = diffeig.sym_eigh_ncut(X, 3, laplacian=laplacian, method=method, tol=1e-12)
        return (Z * C).sum() ** 2 + (lam * w).sum()

    assert torch.autograd.gradcheck(f, (A.requires_grad_(),), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_vectors_beyond_the_trivial_one_are_orthogonal_to_it_on_near_ties():
    W = two_blocks(cross=1e-12)
    for laplacian in ("ncut", "unnormalized"):
        _, Z = diffeig.sym_eigh_ncut(W, 3, laplacian=laplacian)
        D = W.sum(-1) if laplacian == "ncut" else torch.ones(80, dtype=F64)
        assert (Z[:, 1:].T @ D).abs().max().item() < 1e-12


# ------------------------------------------------- 1 and 6: near and exact ties at the k-th


def cycle(n=200, bump=0.0):
    W = torch.zeros(n, n, dtype=F64)
    i = torch.arange(n)
    W[i, (i + 1) % n] = W[(i + 1) % n, i] = 1.0
    W[0, 1] = W[1, 0] = 1.0 + bump
    return W


def grid(rows, cols=None):
    cols = rows if cols is None else cols
    n = rows * cols
    W = torch.zeros(n, n, dtype=F64)
    idx = torch.arange(n).reshape(rows, cols)
    for a, b in ((idx[:, :-1], idx[:, 1:]), (idx[:-1, :], idx[1:, :])):
        W[a.flatten(), b.flatten()] = W[b.flatten(), a.flatten()] = 1.0
    return W


TIED = {
    "cycle200+3e-13": lambda: cycle(200, 3e-13),  # l2, l3 1e-13 apart
    "cycle200": lambda: cycle(200),
    "cycle150": lambda: cycle(150),
    "grid12": lambda: grid(12),
    "grid16": lambda: grid(16),
    "grid20": lambda: grid(20),
    "grid10x12": lambda: grid(10, 12),  # not tied, but z2's largest entries are (+-)
}


def z_and_grad(W, method, laplacian, k=2):
    W = W.clone().requires_grad_()
    c = torch.randn(W.shape[0], generator=torch.Generator().manual_seed(0), dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "did not converge" / "singular" warning
        lam, Z = diffeig.sym_eigh_ncut(W, k, method=method, laplacian=laplacian)
    ((Z[:, 1] @ c) ** 2).backward()
    return Z.detach(), W.grad


@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
@pytest.mark.parametrize("name", list(TIED))
def test_auto_returns_what_dense_returns_at_ties(name, laplacian):
    W = TIED[name]()
    Zd, gd = z_and_grad(W, "dense", laplacian)
    Za, ga = z_and_grad(W, "auto", laplacian)
    assert (Za - Zd).abs().max().item() < 1e-6
    assert ((ga - gd).abs().max() / gd.abs().max()).item() < 1e-5  # auto gave 1e6 - 1e16


@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
@pytest.mark.parametrize(("name", "k"), [("cycle200", 3), ("cycle150", 5), ("grid12", 3)])
def test_ties_among_returned_pairs_give_the_dense_gradient(name, k, laplacian):
    W = TIED[name]()
    n = W.shape[0]
    C = torch.randn(n, n, generator=torch.Generator().manual_seed(2), dtype=F64)
    C = C + C.T
    grads = {}
    for method in ("dense", "lobpcg"):
        X = W.clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            lam, Z = diffeig.sym_eigh_ncut(X, k, method=method, laplacian=laplacian)
        Zt = Z[:, 1:]  # the tied pairs and their neighbours: a loss invariant within ties
        ((Zt @ Zt.T * C).sum() + lam.sum()).backward()
        grads[method] = X.grad
    g, d = grads["lobpcg"], grads["dense"]
    assert ((g - d).abs().max() / d.abs().max()).item() < 1e-6  # LOBPCG gave 1e13 - 1e15


def test_lobpcg_info_reports_residuals_and_the_certificate():
    from diffeig._lobpcg import run_lobpcg

    A = cycle(120)
    L = torch.diag(A.sum(-1)) - A
    theta, _, info = run_lobpcg(
        L,
        1,
        largest=False,
        constraints=None,
        tol=None,
        max_iter=500,
        on_fail="raise",
        block=3,
        certify=True,
    )
    assert info.residuals.shape == (3,) and bool(info.certified)
    assert info.residuals[0] <= 1e-9 * 8  # tol times the Gershgorin bound (2 max d = 4)


# ------------------------------------------------- 5: small eigenvalues of near-disconnected


def weakly_joined(seed):
    g = torch.Generator().manual_seed(1000 + seed)
    n1, n2 = (int(v) for v in torch.randint(40, 120, (2,), generator=g))
    cross = 10 ** float(-6 - 4 * torch.rand(1, generator=g))
    A = torch.rand(n1, n1, generator=g, dtype=F64)
    B = torch.rand(n2, n2, generator=g, dtype=F64)
    W = torch.block_diag(0.5 * (A + A.T), 0.5 * (B + B.T))
    W.fill_diagonal_(0)
    i = torch.randint(0, n1, (3,), generator=g)
    j = torch.randint(n1, n1 + n2, (3,), generator=g)
    W[i, j] = W[j, i] = cross
    return W


def accurate_l2(W, normalized):
    """Inverse iteration, then the edge form of the Rayleigh quotient (no cancellation)."""
    n, d = W.shape[0], W.sum(-1)
    if normalized:
        s = d.rsqrt()
        L, u1 = torch.eye(n, dtype=F64) - s[:, None] * W * s[None], d.sqrt() / d.sqrt().norm()
    else:
        L, u1 = torch.diag(d) - W, torch.full((n,), n**-0.5, dtype=F64)
    M = L + 2 * u1[:, None] * u1[None]
    x = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=F64)
    for _ in range(40):
        x = torch.linalg.solve(M, x)
        x = x - u1 * (u1 @ x)
        x = x / x.norm()
    z = x * s if normalized else x
    edge = 0.5 * (W * (z[:, None] - z[None]) ** 2).sum()
    return (edge / ((z * z * d).sum() if normalized else (z * z).sum())).item()


@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
@pytest.mark.parametrize("seed", [0, 3, 7, 11, 19, 23])
def test_small_eigenvalues_to_relative_accuracy(seed, laplacian):
    W = weakly_joined(seed)
    expected = accurate_l2(W, laplacian == "ncut")
    c = torch.randn(W.shape[0], generator=torch.Generator().manual_seed(seed), dtype=F64)
    grads = {}
    for method in ("dense", "lobpcg"):
        X = W.clone().requires_grad_()
        lam, Z = diffeig.sym_eigh_ncut(X, 2, method=method, laplacian=laplacian)
        assert abs(lam[1].item() - expected) / expected < 1e-8, method  # were 1e-4 / 1e-2
        ((Z[:, 1] @ c) ** 2 + torch.sigmoid(4 * W.shape[0] ** 0.5 * Z[:, 1]).sum()).backward()
        grads[method] = X.grad
    g, d = grads["lobpcg"], grads["dense"]
    assert ((g - d).abs().max() / d.abs().max()).item() < 1e-6


# --------------------------------------------------------------- 7: B of the generalized


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 0.0, -1.0])
def test_eigsh_refuses_a_non_finite_or_non_positive_diagonal_B(bad):
    A = torch.eye(12, dtype=F64) + 0.1
    B = torch.ones(12, dtype=F64)
    B[3] = bad
    with pytest.raises(ValueError, match="B given as a diagonal"):
        diffeig.eigsh(A, 2, B=B)
    Bd = torch.diag(B)
    with pytest.raises(ValueError, match="B must"):
        diffeig.eigsh(A, 2, B=Bd)
