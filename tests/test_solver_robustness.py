"""Solver robustness against independent oracles (issue 13): LOBPCG never diverges,
higher-order AD through diffeig.eigh is exact, exact ties at LAPACK's real precision,
torch's keyword and empty matrices. PyTorch's OpInfo suite is tests/test_opinfo.py.

Each test here failed before the fix it guards."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.func import hessian, jacfwd, jacrev

import diffeig

F64 = torch.float64


# ---------------------------------------------------------------------- graph families


def clustered(N, C, dim, noise, g, dtype):
    centres = torch.nn.functional.normalize(torch.randn(C, dim, generator=g, dtype=dtype), dim=-1)
    labels = torch.randint(0, C, (N,), generator=g)
    f = centres[labels] + noise * torch.randn(N, dim, generator=g, dtype=dtype)
    return torch.nn.functional.normalize(f, dim=-1)


def family(name, N, g, dtype):
    """Seeded graphs of the kinds users build: dense Gaussian kernels, kNN with a floor,
    TokenCut's binary ``(cos > 0.2) + 1e-5``, near-disconnected clusters, DNCut's weighted
    cosine graph."""
    if name == "gaussian":
        x = torch.randn(N, 3, generator=g, dtype=dtype)
        W = torch.exp(-(torch.cdist(x, x) ** 2))
    elif name == "knn":
        x = torch.randn(N, 4, generator=g, dtype=dtype)
        d = torch.cdist(x, x)
        kth = d.topk(8, largest=False).values[:, -1:]
        W = torch.exp(-(d**2)) * (d <= kth)
        W = torch.maximum(W, W.T) + 1e-6
    elif name == "tokencut":
        noise = torch.rand(1, generator=g).item() / 16
        f = clustered(N, 3, 64, noise, g, dtype)
        W = ((f @ f.T) > 0.2).to(dtype) + 1e-5
    elif name == "near-disconnected":
        f = clustered(N, 3, 16, 0.05, g, dtype)
        A = f @ f.T
        W = torch.where(A > 0.5, A, torch.full_like(A, 1e-9))
    else:  # "weighted"
        f = clustered(N, 4, 64, 0.1, g, dtype)
        A = f @ f.T
        W = torch.where(A > 0, A, torch.full_like(A, 1e-6))
    return 0.5 * (W + W.T)


FAMILIES = ["gaussian", "knn", "tokencut", "near-disconnected", "weighted"]


def lobpcg_vs_dense(W, k, laplacian):
    """Largest eigenvalue error of the LOBPCG NCut against the dense float64 solve,
    relative to the spectrum's bound; and whether every eigenvalue is inside it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a dense fallback is allowed, and reported
        lam, _ = diffeig.sym_eigh_ncut(W, k, laplacian=laplacian, method="lobpcg")
    ref, _ = diffeig.sym_eigh_ncut(W.double(), k, laplacian=laplacian)
    bound = 2.0 if laplacian == "ncut" else 2 * W.double().sum(-1).max().item()
    lam = lam.double()
    inside = bool(((lam >= -1e-6 * bound) & (lam <= bound * (1 + 1e-6))).all())
    return ((lam - ref).abs().max() / bound).item(), inside


# ----------------------------------------------------------------- 1: LOBPCG never diverges


@pytest.mark.parametrize(
    "fam,N,k,laplacian",
    [
        ("tokencut", 200, 8, "unnormalized"),
        ("near-disconnected", 50, 5, "unnormalized"),
        ("near-disconnected", 50, 8, "ncut"),
        ("weighted", 200, 5, "unnormalized"),
        ("tokencut", 784, 5, "ncut"),
    ],
)
def test_graphs_that_diverged(fam, N, k, laplacian):
    g = torch.Generator().manual_seed(N + k)
    W = family(fam, N, g, F64)
    err, inside = lobpcg_vs_dense(W, k, laplacian)
    assert inside and err < 1e-9, err


def test_eigsh_block_just_below_n_uses_the_dense_solve():
    A = torch.randn(26, 26, dtype=F64, generator=torch.Generator().manual_seed(0))
    A = A + A.T
    theta, _, info = diffeig.eigsh(A, 4, return_info=True)
    torch.testing.assert_close(theta, torch.linalg.eigvalsh(A)[:4])
    assert info.iterations == 0  # 3 (k + max(k, 4)) = 24 is not much below 26


def test_failed_matrices_fall_back_to_the_dense_solve():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(3, 120, 120, dtype=F64, generator=g)
    A = A + A.mT
    with pytest.warns(RuntimeWarning, match="solved densely"):
        theta, X, info = diffeig.eigsh(A, 3, max_iter=2, return_info=True)
    assert info.fallbacks == 3 and not info.converged
    torch.testing.assert_close(theta, torch.linalg.eigvalsh(A)[..., :3])
    with pytest.raises(RuntimeError, match="did not converge"):
        diffeig.eigsh(A, 3, max_iter=2, on_fail="raise")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_lobpcg_stress_over_seeded_families(dtype):
    """Every family, N in {50, 200, 784}, k = 1 ... 8, both Laplacians: zero divergences
    and eigenvalues within tolerance of the dense float64 solve."""
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    counts = {"solves": 0, "outside": 0, "inaccurate": 0}
    worst = 0.0
    for fam in FAMILIES:
        for N in (50, 200, 784):
            for k in range(1, 9) if N < 784 else (2, 5, 8):
                W = family(fam, N, torch.Generator().manual_seed(1000 * k + N), dtype)
                for laplacian in ("ncut", "unnormalized"):
                    err, inside = lobpcg_vs_dense(W, k, laplacian)
                    counts["solves"] += 1
                    counts["outside"] += not inside
                    counts["inaccurate"] += not err < tol
                    worst = max(worst, err)
    print(f"LOBPCG stress ({dtype}): {counts}, worst eigenvalue error {worst:.1e} of the bound")
    assert counts["outside"] == 0 and counts["inaccurate"] == 0, (counts, worst)


# ------------------------------------------------------------------ 2: higher-order AD exact


def loss_through(eigh):
    C = torch.randn(4, 4, dtype=F64, generator=torch.Generator().manual_seed(5))

    def loss(A):
        A = 0.5 * (A + A.mT)
        L, V = eigh(A)
        w = torch.arange(4.0, dtype=A.dtype)
        return (V[:, -1] ** 2 * w).sum() + (L**3).sum() + (V * C).sum() ** 2

    return loss


@pytest.mark.parametrize(
    "transform",
    [hessian, lambda f: jacfwd(jacrev(f)), lambda f: jacrev(jacrev(f))],
    ids=["hessian", "jacfwd(jacrev)", "jacrev(jacrev)"],
)
def test_second_derivatives_equal_torch(transform, backend):
    A = torch.randn(4, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    A = A + A.T  # non-degenerate
    expected = transform(loss_through(torch.linalg.eigh))(A)
    got = transform(loss_through(diffeig.eigh))(A)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_forward_mode_through_the_backward(backend):
    A = torch.randn(5, 5, dtype=F64, generator=torch.Generator().manual_seed(2))
    A = (A + A.T).requires_grad_()
    f = loss_through(diffeig.eigh)
    A4 = A[:4, :4].detach().requires_grad_()
    assert torch.autograd.gradgradcheck(f, (A4,), check_fwd_over_rev=True)


# ------------------------------------------------- 3: exact ties at LAPACK's real precision


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [2, 3, 4, 6, 8, 16, 32, 64])
def test_exact_ties_from_rotated_diagonals(n, dtype):
    """A fully tied spectrum: ``sum(V V^T o C) = sum(C o I)`` is constant in A, so its
    gradient is 0; unmasked noise gaps would give 1 / (rounding) instead."""
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=g))
        for c in (5e-3, 1.0, 300.0):
            A = (c * Q @ Q.T).to(dtype).requires_grad_()
            C = torch.randn(n, n, dtype=dtype, generator=g)
            _, V = diffeig.eigh(0.5 * (A + A.mT))
            (V @ V.mT * C).sum().backward()
            # every gap is masked, so the gradient is 0 up to rounding (it is exactly 0)
            eps = torch.finfo(dtype).eps
            assert A.grad.abs().max().item() <= 10 * eps * C.abs().max().item(), (seed, c)


def test_the_default_tie_threshold():
    rtol, atol = diffeig.gap_tolerances(None, 4, F64)
    eps = torch.finfo(F64).eps
    assert atol == 0 and rtol == pytest.approx(eps**0.75)  # above 16 sqrt(4) eps
    assert diffeig.gap_tolerances(None, 1024, F64)[0] == pytest.approx(eps**0.75)
    assert diffeig.gap_tolerances(None, 2**14, F64)[0] == pytest.approx(2**14 * eps)
    f32 = torch.finfo(torch.float32).eps
    assert diffeig.gap_tolerances(None, 196, torch.float32)[0] == pytest.approx(16 * 14 * f32)


# ------------------------------------------------------------------------ 4: drop-in gaps


def test_torch_keyword_input():
    A = torch.randn(5, 5, dtype=F64)
    A = A + A.T
    torch.testing.assert_close(diffeig.eigh(input=A).eigenvalues, torch.linalg.eigvalsh(A))
    torch.testing.assert_close(diffeig.eigvalsh(input=A), torch.linalg.eigvalsh(A))
    with diffeig.patch_torch():
        torch.testing.assert_close(torch.linalg.eigh(input=A)[0], diffeig.eigvalsh(A))
    with pytest.raises(TypeError, match="takes the matrix once"):
        diffeig.eigh(A, input=A)
    with pytest.raises(TypeError, match="takes the matrix once"):
        diffeig.eigh()


@pytest.mark.parametrize("shape", [(0, 0), (2, 0, 0), (0, 3, 3)])
def test_double_backward_on_empty_matrices(shape):
    E = torch.zeros(*shape, dtype=F64, requires_grad=True)

    def f(A):
        L, V = diffeig.eigh(A)
        return L.sum() + V.sum()

    assert torch.autograd.gradgradcheck(f, (E,), check_batched_grad=True)
