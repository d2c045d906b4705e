"""diffeig.eigsh and sym_eigh_ncut(method='lobpcg'): the iterative partial solver."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, random_hermitian
from torch.autograd import gradcheck

import diffeig
from diffeig.ncut import affinity, sym_eigh_ncut


def spectrum_matrix(n, eigenvalues, seed=0, batch=()):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(*batch, n, n, dtype=torch.float64, generator=g))
    return (Q * eigenvalues) @ Q.mT


def aligned(X, V):
    """X with each column's sign matched to V's."""
    return X * torch.sign((X * V).sum(-2, keepdim=True))


@pytest.mark.parametrize("largest", [False, True])
def test_eigsh_matches_dense(largest):
    # Three matrices with very different spectra in one batch.
    n, k = 60, 3
    lam = torch.stack(
        [
            torch.linspace(0, 1, n),
            torch.logspace(-1, 1, n),
            torch.cat([torch.zeros(2), torch.linspace(5, 6, n - 2)]),
        ]
    ).double()
    A = spectrum_matrix(n, lam.unsqueeze(-2), batch=(3,))
    theta, X, info = diffeig.eigsh(A, k, largest=largest, return_info=True)
    assert info.converged and info.iterations > 0
    l0, V0 = torch.linalg.eigh(A)
    sl = slice(n - k, n) if largest else slice(0, k)
    ref_l, ref_V = l0[..., sl], V0[..., sl]
    if largest:
        ref_l, ref_V = ref_l.flip(-1), ref_V.flip(-1)
    assert_close(theta, ref_l, scale=1e3)
    # Ties (the zero pair of the third matrix) allow any basis: compare projectors, to
    # the accuracy the residual tolerance gives (tol * |A| / gap ~ 1e-9 * 10 / 0.1).
    torch.testing.assert_close(X @ X.mT, ref_V @ ref_V.mT, rtol=0, atol=1e-7)


def test_lobpcg_sparse_convergence_checks_give_the_same_pairs():
    # On CUDA the convergence test is read back every few iterations; converged
    # matrices are frozen in between, so the result matches checking every iteration.
    from diffeig._lobpcg import lobpcg

    lam = torch.stack([torch.linspace(0, 1, 60), torch.logspace(-1, 1, 60)]).double()
    A = spectrum_matrix(60, lam.unsqueeze(-2), batch=(2,))
    X0 = torch.randn(2, 60, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t1, X1, i1 = lobpcg(lambda Y: A @ Y, X0, 3, check_every=1)
    t3, X3, i3 = lobpcg(lambda Y: A @ Y, X0, 3, check_every=3)
    assert i1.converged and i3.converged and i3.iterations % 3 == 0
    assert i3.iterations >= i1.iterations
    torch.testing.assert_close(t3, t1, rtol=0, atol=1e-12)
    torch.testing.assert_close(X3 @ X3.mT, X1 @ X1.mT, rtol=0, atol=1e-8)


def test_eigsh_dense_method_and_small_fallback():
    A = random_hermitian(2, 8, 8)
    for method in ("dense", "lobpcg"):  # N = 8 is below the LOBPCG block: dense fallback
        theta, X = diffeig.eigsh(A, 2, method=method)
        l0, V0 = torch.linalg.eigh(A)
        assert_close(theta, l0[..., :2])
        assert_close(aligned(X, V0[..., :2]), V0[..., :2])


@pytest.mark.slow
def test_eigsh_gradient_matches_dense_and_gradcheck():
    n, k = 32, 2  # N > 5 (k + 4): the LOBPCG forward, not the dense one
    A0 = spectrum_matrix(n, torch.linspace(0, 3, n).double() ** 2, seed=1)

    def loss_terms(theta, X):
        return theta.sum(), (X * X)[:, 1].sum(), (X[:, 0:1] @ X[:, 0:1].T)[:3, :3]

    A = A0.clone().requires_grad_()
    gs = []
    # tol 1e-10: at the default 1e-9 where LOBPCG stops within its tolerance moved the
    # gradient by 1.2e-8 - 2.4e-8 of its size with the build's summation order (it failed
    # on some builds); at 1e-10 the difference is 1e-9
    eigsh = lambda A: diffeig.eigsh(A, k, tol=1e-10)  # noqa: E731
    for fn in (eigsh, lambda A: tuple(t[..., :k] for t in diffeig.eigh(A))):
        A.grad = None
        theta, X = fn(A)
        a, b, c = loss_terms(theta, X)
        (a + b + c.sum()).backward()
        gs.append(A.grad.clone())
    # Within 1e-8 of the dense gradient (relative to its size): LOBPCG stops at a residual
    # of 1e-10 of |A|'s bound (~20 here) with a gap of 0.028 above the pair
    torch.testing.assert_close(gs[0], gs[1], rtol=0, atol=1e-8 * gs[1].abs().max().item())

    X = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    X = (0.01 * X).requires_grad_()
    # The iterative forward is accurate to ~1e-10 (its tolerance), so the finite
    # differences take a larger step than gradcheck's default 1e-6.
    assert gradcheck(
        lambda E: loss_terms(*diffeig.eigsh(A0 + E + E.T, k)), (X,), eps=1e-4, atol=1e-5, rtol=1e-3
    )


def test_eigsh_nonconvergence_is_reported():
    A = spectrum_matrix(60, torch.linspace(0, 1, 60).double())
    with pytest.raises(RuntimeError, match="did not converge"):
        diffeig.eigsh(A, 2, max_iter=1, on_fail="raise")
    with pytest.warns(RuntimeWarning, match="did not converge"):
        diffeig.eigsh(A, 2, max_iter=1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": 0}, "k must be"),
        ({"k": 61}, "k must be"),
        ({"method": "arpack"}, "method"),
        ({"on_fail": "ignore"}, "on_fail"),
        ({"max_iter": 0}, "max_iter"),
        ({"tol": 0.0}, "tol"),
    ],
)
def test_eigsh_bad_arguments(kwargs, match):
    args = {"k": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        diffeig.eigsh(torch.eye(60), **args)


# ------------------------------------------------------------------------ NCut by LOBPCG


def graphs(n=64, dtype=torch.float64):
    """Weighted, TokenCut-binary and near-disconnected graphs of the same size, batched."""
    g = torch.Generator().manual_seed(3)
    lab = torch.arange(n) < n // 3
    protos = torch.randn(2, 8, dtype=dtype, generator=g)
    f = protos[lab.long()] + 0.7 * torch.randn(3, n, 8, dtype=dtype, generator=g)
    weighted = affinity(f[0])
    binary = affinity(f[1], tau=0.2, eps=1e-5, mode="binary")
    block = torch.where(lab[:, None] == lab[None, :], 1.0, 1e-3).to(dtype)
    block = block * (0.5 + torch.rand(n, n, dtype=dtype, generator=g))
    block = 0.5 * (block + block.T)
    return torch.stack([weighted, binary, block])


@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_ncut_lobpcg_matches_dense_float64(laplacian, k, backend):
    W0 = graphs()
    gl = torch.randn(3, k, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gZ = torch.randn(3, 64, k, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = {}
    for method in ("dense", "lobpcg"):
        W = W0.clone().requires_grad_()
        lam, Z = sym_eigh_ncut(W, k, laplacian=laplacian, method=method)
        ((lam * gl).sum() + (Z * gZ).sum()).backward()
        out[method] = (lam.detach(), Z.detach(), W.grad)
    (l1, z1, g1), (l2, z2, g2) = out["dense"], out["lobpcg"]
    torch.testing.assert_close(l2, l1, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(z2, z1, rtol=1e-7, atol=1e-8)  # same sign rule
    # LOBPCG stops at a residual of 1e-9 (of |L|), the CG solves at 1e-9 of the cotangent:
    # the gradient's error is that over the gaps to the next eigenvalues (1e-9 - 2e-8 of
    # max |dL/dW| on these graphs, depending on where the iterations happened to stop).
    torch.testing.assert_close(g2, g1, rtol=0, atol=max(3e-8 * g1.abs().max().item(), 1e-12))


@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
def test_ncut_lobpcg_small_graph_dense_fallback(laplacian):
    # N = 12: the LOBPCG block would not be small, so the k pairs come from a dense
    # solve with the trivial pair removed by its overlap; same results, same backward.
    W0 = graphs(n=12)
    out = []
    for method in ("dense", "lobpcg"):
        W = W0.clone().requires_grad_()
        lam, Z = sym_eigh_ncut(W, 3, laplacian=laplacian, method=method)
        (lam.sum() + Z[..., 1:].pow(3).sum()).backward()
        out.append((lam.detach(), Z.detach(), W.grad))
    for a, b in zip(*out):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9 * max(a.abs().max().item(), 1))


@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
def test_ncut_lobpcg_float32_agrees_with_float64(laplacian):
    W = graphs()
    lam64, Z64 = sym_eigh_ncut(W, 2, laplacian=laplacian)
    lam32, Z32 = sym_eigh_ncut(W.float(), 2, laplacian=laplacian, method="lobpcg")
    torch.testing.assert_close(
        lam32.double(), lam64, rtol=1e-5, atol=1e-5 * lam64.abs().max().item()
    )
    cos = torch.nn.functional.cosine_similarity(Z32.double(), Z64, dim=-2)
    assert (1 - cos.abs()).max() <= 1e-5


@pytest.mark.parametrize(
    "fast", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["fast", "full"]
)
@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
def test_ncut_lobpcg_gradcheck(laplacian, fast):
    # fast: random projections of the Jacobian (two solves an output); full: every entry
    # of W (1,152 solves, 10 - 670 s depending on the machine's load, so behind make test-slow)
    W = (graphs(n=24)[0] + 0.01).requires_grad_()  # stays >= 0 under the FD step

    def fn(W):
        lam, Z = sym_eigh_ncut(0.5 * (W + W.T), 2, laplacian=laplacian, method="lobpcg")
        return lam, Z[:, 1] ** 2

    # see the eigsh gradcheck for the tolerances
    assert gradcheck(fn, (W,), eps=1e-4, atol=1e-5, rtol=1e-3, fast_mode=fast)


def test_ncut_lobpcg_bad_arguments():
    W = graphs()[0]
    with pytest.raises(ValueError, match="method"):
        sym_eigh_ncut(W, method="arnoldi")
    with pytest.raises(ValueError, match="tol"):
        sym_eigh_ncut(W, method="lobpcg", tol=-1.0)
    with pytest.raises(ValueError, match="max_iter"):
        sym_eigh_ncut(W, method="lobpcg", max_iter=0)
    with pytest.raises(RuntimeError, match="did not converge"):
        sym_eigh_ncut(W, 3, method="lobpcg", max_iter=1, on_fail="raise")


# ---------------------------------------------------------------------------- matrix-free


def _matmul(X, f):
    """W @ X for W = F F^T + 1 (F the normalized features): never formed."""
    F = torch.nn.functional.normalize(f, dim=-1)
    return F @ (F.mT @ X) + X.sum(-2, keepdim=True)


def _dense(f):
    F = torch.nn.functional.normalize(f, dim=-1)
    return F @ F.mT + 1.0


@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
@pytest.mark.parametrize("n", [80, 12])  # 12: the block is not small: solved densely
def test_matrix_free_equals_dense_matrix(laplacian, n):
    from diffeig.ncut import ncut_operator

    f = torch.randn(2, n, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    out = []
    for path in ("operator", "dense"):
        fr = f.clone().requires_grad_()
        if path == "operator":
            lam, Z = ncut_operator(_matmul, [fr], (2, n), 3, laplacian=laplacian)
        else:
            lam, Z = sym_eigh_ncut(_dense(fr), 3, laplacian=laplacian, method="lobpcg")
        (lam.sum() + Z[..., 1:].pow(3).sum()).backward()
        out.append((lam.detach(), Z.detach(), fr.grad))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9 * max(b.abs().max().item(), 1))


def test_matrix_free_arguments():
    from diffeig.ncut import ncut_operator

    f = torch.randn(10, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="params"):
        ncut_operator(_matmul, [], (10,), 2)
    with pytest.raises(ValueError, match="k must be in"):
        ncut_operator(_matmul, [f], (10,), 11)
    with pytest.raises(ValueError, match="zero degree"):
        ncut_operator(lambda X, f: 0 * X, [f], (10,), 2)


def spd(n, seed, batch=()):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(*batch, n, n, dtype=torch.float64, generator=g)
    return M @ M.mT / n + torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize("diagonal", [False, True])
def test_eigsh_generalized_matches_scipy_and_dense_gradients(diagonal):
    import scipy.linalg

    n, k = 36, 2
    A0 = spectrum_matrix(n, torch.linspace(0, 3, n).double() ** 2, seed=3)
    B0 = spd(n, 4)
    if diagonal:
        B0 = B0.diagonal().clone()
    Bm = torch.diag_embed(B0) if diagonal else B0
    theta, X = diffeig.eigsh(A0, k, B=B0)
    ref = scipy.linalg.eigh(A0.numpy(), Bm.numpy(), subset_by_index=[0, k - 1])
    assert_close(theta, torch.from_numpy(ref[0]))
    assert_close(X.mT @ Bm @ X, torch.eye(k, dtype=X.dtype))
    # the residual is LOBPCG's tolerance (1e-9) relative to |A|'s row-sum bound
    assert (A0 @ X - Bm @ X * theta).abs().max() < 1e-8 * A0.abs().sum(-1).max()

    # gradients w.r.t. A and B: LOBPCG against the dense method (the same reduction),
    # and a gradcheck through a few directions (finite differences of the whole chain)
    def loss(theta, X):
        return theta.sum() + (X[:, 1] ** 2 * torch.arange(n, dtype=X.dtype)).sum()

    grads = []
    for method in ("lobpcg", "dense"):
        A, B = A0.clone().requires_grad_(), B0.clone().requires_grad_()
        loss(*diffeig.eigsh(A, k, B=B, method=method)).backward()
        grads.append((A.grad, B.grad))
    for g, h in zip(*grads):
        torch.testing.assert_close(g, h, rtol=0, atol=1e-7 * h.abs().max().item())
    g = torch.Generator().manual_seed(5)
    dA = torch.randn(n, n, dtype=torch.float64, generator=g)
    dB = torch.rand(*B0.shape, dtype=torch.float64, generator=g)
    if not diagonal:
        dB = dB + dB.mT
    t = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    # method='dense': an exact forward (the same partial backward), so that the finite
    # differences are not blurred by LOBPCG's tolerance
    assert gradcheck(
        lambda t: loss(
            *diffeig.eigsh(A0 + t[0] * (dA + dA.T), k, B=B0 + t[1] * dB, method="dense")
        ),
        (t,),
    )


def test_eigsh_generalized_bad_B():
    A = torch.eye(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="B must be symmetric positive definite"):
        diffeig.eigsh(A, 1, B=-torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="B given as a diagonal"):
        diffeig.eigsh(A, 1, B=torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="B must have shape"):
        diffeig.eigsh(A, 1, B=torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="dtype"):
        diffeig.eigsh(A, 1, B=torch.eye(4))


def test_ncut_lobpcg_under_vmap_and_grad():
    g = torch.Generator().manual_seed(0)
    f = torch.nn.functional.normalize(
        torch.randn(3, 100, 16, dtype=torch.float64, generator=g), dim=-1
    )
    W = diffeig.ncut.affinity(f)
    weights = torch.arange(100.0, dtype=W.dtype)

    def z2(W):
        return diffeig.sym_eigh_ncut(W, 2, method="lobpcg")[1][..., 1]

    def loss(W):
        return (z2(W) ** 2 * weights).sum()

    batched = z2(W)
    torch.testing.assert_close(torch.func.vmap(z2)(W), batched, rtol=0, atol=1e-8)
    Wr = W.clone().requires_grad_()
    loss(Wr).backward()
    torch.testing.assert_close(torch.func.grad(loss)(W[0]), Wr.grad[0], rtol=0, atol=1e-8)
    torch.testing.assert_close(
        torch.func.vmap(torch.func.grad(loss))(W), Wr.grad, rtol=0, atol=1e-8
    )


@pytest.mark.slow  # torch.compile's warm-up
def test_ncut_lobpcg_under_compile():
    g = torch.Generator().manual_seed(0)
    f = torch.nn.functional.normalize(
        torch.randn(3, 100, 16, dtype=torch.float64, generator=g), dim=-1
    )
    W = diffeig.ncut.affinity(f)

    def z2(W):
        return diffeig.sym_eigh_ncut(W, 2, method="lobpcg")[1][..., 1]

    # torch.compile: the convergence checks are graph breaks, the results the same
    torch.testing.assert_close(torch.compile(z2)(W), z2(W), rtol=0, atol=1e-8)


def test_eigsh_under_vmap_and_grad():
    n, k = 40, 2
    A = torch.stack(
        [spectrum_matrix(n, torch.linspace(0, 3, n).double() ** 2, seed=s) for s in (1, 2)]
    )
    w = torch.arange(n, dtype=torch.float64)

    def loss(A):
        theta, X = diffeig.eigsh(A, k)
        return theta.sum() + (X[..., 1] ** 2 * w).sum()

    Ar = A.clone().requires_grad_()
    loss(Ar).backward()
    theta = torch.func.vmap(lambda a: diffeig.eigsh(a, k)[0])(A)
    torch.testing.assert_close(theta, diffeig.eigsh(A, k)[0], rtol=0, atol=1e-9)
    torch.testing.assert_close(torch.func.grad(loss)(A[0]), Ar.grad[0], rtol=0, atol=1e-7)
    torch.testing.assert_close(
        torch.func.vmap(torch.func.grad(loss))(A), Ar.grad, rtol=0, atol=1e-7
    )
