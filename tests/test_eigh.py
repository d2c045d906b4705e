"""diffeig.eigh / eigvalsh / patch_torch: forward contract, backward, transforms, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import TOL, assert_close, random_hermitian, sym_directional_fd, with_spectrum
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

import diffeig

DTYPES = [torch.float32, torch.float64, torch.complex64, torch.complex128]


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (4, 4), (3, 5, 5), (2, 2, 3, 3), (0, 3, 3), (0, 0)])
def test_forward_matches_torch(dtype, shape, device):
    A = random_hermitian(*shape, dtype=dtype, device=device)
    L, V = diffeig.eigh(A)
    Lt, Vt = torch.linalg.eigh(A)
    assert L.dtype == Lt.dtype and V.dtype == Vt.dtype
    assert L.shape == Lt.shape and V.shape == Vt.shape
    assert_close(L, Lt, dtype)
    # Same LAPACK call, so the vectors agree including sign/phase.
    assert_close(V, Vt, dtype)
    res = diffeig.eigh(A)
    assert isinstance(res, torch.return_types.linalg_eigh)
    assert res.eigenvalues is not None and res.eigenvectors is not None


def test_forward_non_contiguous():
    A = random_hermitian(4, 6, 6)
    At = A.transpose(0, 0)[::2]  # a strided view of the batch
    assert not At.is_contiguous()
    L, V = diffeig.eigh(At)
    Lt, Vt = torch.linalg.eigh(At.contiguous())
    assert_close(L, Lt)
    assert_close(V, Vt)


@pytest.mark.parametrize("UPLO", ["L", "U"])
def test_reads_only_the_uplo_triangle(UPLO):
    A = random_hermitian(5, 5)
    junk = torch.randn(5, 5, dtype=torch.float64) * 100
    keep = torch.tril(torch.ones(5, 5, dtype=torch.bool))
    keep = keep if UPLO == "L" else keep.T
    B = torch.where(keep, A, junk)
    assert_close(diffeig.eigh(B, UPLO).eigenvalues, torch.linalg.eigvalsh(A))
    assert_close(diffeig.eigvalsh(B, UPLO), torch.linalg.eigvalsh(A))


def test_nan_input_does_not_hang():
    A = torch.tensor([[float("nan"), 0.0], [0.0, 1.0]], dtype=torch.float64)
    try:
        L, _ = diffeig.eigh(A)
    except RuntimeError as exc:  # LAPACK's convergence error is the other documented outcome
        assert "linalg.eigh" in str(exc)
    else:
        assert not torch.isfinite(L).all()


# ---------------------------------------------------------------------------- backward


def _spectral_losses(r):
    L, V = r
    return L, V.abs(), (V[..., :2] @ V[..., :2].mH).real


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_gradcheck_and_gradgradcheck(dtype, backend):
    X = torch.randn(2, 4, 4, dtype=dtype, requires_grad=True)

    def f(X):
        return _spectral_losses(diffeig.eigh(X + X.mH))

    assert gradcheck(f, (X,))
    assert gradgradcheck(f, (X,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128])
def test_gradient_matches_torch_on_distinct_spectra(dtype, device):
    g = torch.Generator().manual_seed(1)
    A0 = random_hermitian(3, 6, 6, dtype=dtype, generator=g).to(device)
    W = torch.randn(3, 6, 6, dtype=dtype, generator=g).to(device)
    grads = []
    for fn in (diffeig.eigh, torch.linalg.eigh):
        A = A0.clone().requires_grad_()
        L, V = fn(A)
        loss = (L * torch.arange(6, device=device)).sum() + ((V @ V.mH * W).abs() ** 2).sum()
        loss = loss + (V.abs() ** 3).sum()
        (gA,) = torch.autograd.grad(loss, A)
        grads.append(gA)
    assert_close(grads[0], grads[1], dtype, scale=10)


def _fd_check(loss, A, n_dirs=4, seed=0, rtol=1e-6):
    """Our gradient against central differences along random symmetric directions."""
    A = A.detach().clone().requires_grad_()
    (gA,) = torch.autograd.grad(loss(A), A)
    assert torch.isfinite(gA).all()
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_dirs):
        E = random_hermitian(*A.shape, dtype=A.dtype, generator=g)
        fd = sym_directional_fd(lambda X: loss(X).detach(), A.detach(), E)
        an = (gA * E.conj()).sum().real
        torch.testing.assert_close(an, fd, rtol=rtol, atol=1e-8)
    return gA


def _top_vector_loss(eigh):
    B = torch.arange(9, dtype=torch.float64).reshape(3, 3)
    B = B + B.T

    def loss(A):
        v = eigh(A).eigenvectors[..., -1]
        return v @ B @ v  # sign-invariant, depends only on the non-degenerate top vector

    return loss


def test_degenerate_top_eigenvector_exact_tie():
    A = torch.diag(torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64))
    At = A.clone().requires_grad_()
    (gt,) = torch.autograd.grad(_top_vector_loss(torch.linalg.eigh)(At), At)
    assert not torch.isfinite(gt).all(), "torch.linalg.eigh is expected to fail here"
    _fd_check(_top_vector_loss(diffeig.eigh), A)


def test_degenerate_top_eigenvector_rotated():
    _fd_check(_top_vector_loss(diffeig.eigh), with_spectrum([4.0, 1.0, 1.0]))


@pytest.mark.parametrize("spectrum", [[1.0, 1.0, 3.0, 5.0], [1.0, 1.0 + 1e-15, 3.0, 5.0]])
def test_gauge_invariant_loss_on_degenerate_eigenspace(spectrum, backend):
    A = with_spectrum(spectrum, seed=3)
    B = random_hermitian(4, 4, generator=torch.Generator().manual_seed(5))

    def loss(A, eigh=diffeig.eigh):
        V = eigh(A).eigenvectors[..., :2]
        return ((V @ V.mT) * B).sum()  # projector onto the (near-)degenerate eigenspace

    L = torch.linalg.eigvalsh(A)
    assert (L[1] - L[0]).abs() < 1e-14  # a rounding-level tie
    _fd_check(loss, A)


def test_exact_diagonal_ties_torch_nan_ours_finite():
    A = torch.diag(torch.tensor([1.0, 1.0, 3.0], dtype=torch.float64))
    B = random_hermitian(3, 3, generator=torch.Generator().manual_seed(2))

    def loss(A, eigh):
        V = eigh(A).eigenvectors[..., :2]
        return ((V @ V.mT) * B).sum()

    At = A.clone().requires_grad_()
    (gt,) = torch.autograd.grad(loss(At, torch.linalg.eigh), At)
    assert not torch.isfinite(gt).all()
    _fd_check(lambda X: loss(X, diffeig.eigh), A)


def test_eigenvector_term_sign_against_finite_differences():
    # If K and K^T were swapped, the eigenvector term would flip sign: this 2 x 2 case
    # has a known non-zero eigenvector derivative, and the check would fail.
    A = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=torch.float64)

    def loss(A):
        v = diffeig.eigh(A).eigenvectors[..., 1]
        return v[0] * v[1]  # sign-invariant

    gA = _fd_check(loss, A, n_dirs=3)
    assert gA.abs().max() > 0.1


def test_gap_eps_masks_the_eigenvector_term():
    A = with_spectrum([1.0, 2.0, 4.0]).requires_grad_()
    L, V = diffeig.eigh(A, gap_eps=10.0)  # every pair counts as tied
    c = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    ((L * c).sum() + V.sum()).backward()
    Vd = V.detach()
    # Only the eigenvalue term survives.
    assert_close(A.grad, (Vd * c) @ Vd.T)


def test_gap_eps_paper_value_is_absolute():
    # With gap 1e-10 between two eigenvalues the paper's 1e-9 masks the pair; the
    # dtype-aware default (eps^(3/4) * 2 ~ 3.6e-12) does not.
    A = with_spectrum([1.0, 1.0 + 1e-10, 2.0])
    assert diffeig.gap_tolerances(1e-9, 3, torch.float64) == (0.0, 1e-9)
    rtol, atol = diffeig.gap_tolerances(None, 3, torch.float64)
    assert atol == 0.0 and rtol == pytest.approx(torch.finfo(torch.float64).eps ** 0.75)
    gs = []
    for gap in (1e-9, None):
        X = A.clone().requires_grad_()
        V = diffeig.eigh(X, gap_eps=gap).eigenvectors
        (g,) = torch.autograd.grad(V[:, 0].sum() * V[0, 0], X)
        gs.append(g.abs().max())
    assert gs[0] < 1e3 < gs[1]  # masked vs the (huge, 1/gap) unmasked gradient


def test_complex_phase_dependent_loss_raises():
    A = random_hermitian(4, 4, dtype=torch.complex128).requires_grad_()
    for eigh in (torch.linalg.eigh, diffeig.eigh):  # the same error as torch's
        V = eigh(A).eigenvectors
        with pytest.raises(RuntimeError, match="e\\^\\{i phi\\}"):
            V.imag.sum().backward()


def test_only_eigenvalues_used():
    A = random_hermitian(3, 5, 5).requires_grad_()
    diffeig.eigh(A).eigenvalues.sum().backward()
    assert_close(A.grad, torch.eye(5, dtype=torch.float64).expand(3, 5, 5))


def test_eigvalsh_gradient_with_ties():
    A = torch.eye(3, dtype=torch.float64, requires_grad=True)
    L = diffeig.eigvalsh(A)
    (L * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum().backward()
    assert torch.isfinite(A.grad).all()
    assert_close(A.grad.trace(), torch.tensor(6.0, dtype=torch.float64))


# ------------------------------------------------------------------------------ hypothesis


@settings(deadline=None, max_examples=30)
@given(
    n=st.integers(1, 7),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([torch.float64, torch.complex128]),
    repeat=st.booleans(),
)
def test_properties(n, seed, dtype, repeat):
    g = torch.Generator().manual_seed(seed)
    A = random_hermitian(n, n, dtype=dtype, generator=g)
    if repeat and n >= 2:  # force a repeated eigenvalue
        lam = torch.linalg.eigvalsh(A)
        lam[1] = lam[0]
        Q = torch.linalg.eigh(A).eigenvectors
        A = (Q * lam.to(dtype)) @ Q.mH
    A.requires_grad_()
    L, V = diffeig.eigh(A)
    eye = torch.eye(n, dtype=dtype)
    assert_close(V.mH @ V, eye, scale=1e3)
    assert_close((V * L.to(dtype)) @ V.mH, A.detach(), scale=1e3)
    assert (L[1:] >= L[:-1]).all()
    c = torch.randn(n, dtype=torch.float64, generator=g)
    (gA,) = torch.autograd.grad((L * c).sum() + 0 * V.abs().sum(), A)
    # d(sum c_i l_i)/dA = V diag(c) V^H, whatever the multiplicities.
    Vd = V.detach()
    assert torch.isfinite(gA).all()
    assert_close(gA, (Vd * c.to(dtype)) @ Vd.mH, scale=1e3)


# ------------------------------------------------------------------------------ transforms


def test_vmap_matches_batched():
    A = random_hermitian(4, 5, 5)
    L, V = torch.func.vmap(diffeig.eigh)(A)
    Lb, Vb = diffeig.eigh(A)
    assert_close(L, Lb)
    assert_close(V, Vb)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_jacrev_matches_torch(dtype, backend):
    # jacrev takes real inputs: complex matrices are built from a real pair.
    X = torch.randn(2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def build(X):
        A = X[0] if dtype == torch.float64 else torch.complex(X[0], X[1])
        return A + A.mH

    def loss(eigh):
        def f(X):
            r = eigh(build(X))
            return r.eigenvalues, r.eigenvectors.abs()

        return f

    ours = torch.func.jacrev(loss(diffeig.eigh))(X)
    theirs = torch.func.jacrev(loss(torch.linalg.eigh))(X)
    for j, jt in zip(ours, theirs):
        assert_close(j, jt, torch.float64, scale=100)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_jvp_matches_torch(dtype, backend):
    g = torch.Generator().manual_seed(4)
    A = random_hermitian(3, 4, 4, dtype=dtype, generator=g)
    dA = random_hermitian(3, 4, 4, dtype=dtype, generator=g)

    def f(eigh):
        return lambda A: (eigh(A).eigenvalues, eigh(A).eigenvectors.abs())

    out, tan = torch.func.jvp(f(diffeig.eigh), (A,), (dA,))
    out_t, tan_t = torch.func.jvp(f(torch.linalg.eigh), (A,), (dA,))
    for a, b in zip(tan, tan_t):
        assert_close(a, b, scale=100)


def test_jvp_finite_on_ties():
    A = torch.diag(torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64))
    E = random_hermitian(3, 3, generator=torch.Generator().manual_seed(0))

    def top_projector(X):
        v = diffeig.eigh(X).eigenvectors[:, -1]
        return torch.outer(v, v)

    _, tan = torch.func.jvp(top_projector, (A,), (E,))
    fd = sym_directional_fd(top_projector, A, E)
    assert tan.abs().max() > 0.1
    torch.testing.assert_close(tan, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.slow  # torch.compile warms up for 10 - 20 s
def test_compile_fullgraph(backend):
    torch._dynamo.reset()

    def loss(A):
        L, V = diffeig.eigh(A)
        return L.sum() + (V[..., -1] ** 4).sum()

    compiled = torch.compile(loss, fullgraph=True)
    A = random_hermitian(2, 5, 5).requires_grad_()
    B = A.detach().clone().requires_grad_()
    compiled(A).backward()
    loss(B).backward()
    assert_close(A.grad, B.grad)


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "A, match",
    [
        (torch.randn(3), "at least 2 dimensions"),
        (torch.randn(3, 4), "square"),
        (torch.ones(3, 3, dtype=torch.int64), "dtype"),
        (torch.ones(3, 3, dtype=torch.bool), "dtype"),
        (torch.ones(3, 3, dtype=torch.float16), "dtype"),
        ([[1.0]], "torch.Tensor"),
    ],
)
def test_bad_input(A, match):
    with pytest.raises(ValueError, match=match):
        diffeig.eigh(A)
    with pytest.raises(ValueError, match=match):
        diffeig.eigvalsh(A)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"UPLO": "X"}, "UPLO"),
        ({"gap_eps": -1.0}, "gap_eps"),
        ({"gap_eps": float("nan")}, "gap_eps"),
        ({"gap_eps": "1e-9"}, "gap_eps"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        diffeig.eigh(torch.eye(3), **kwargs)


# ----------------------------------------------------------------------------- patch_torch


def test_patch_torch_context_and_restore():
    original = torch.linalg.eigh, torch.linalg.eigvalsh
    A = torch.diag(torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64)).requires_grad_()
    with diffeig.patch_torch():
        assert torch.linalg.eigh is not original[0]
        with diffeig.patch_torch(gap_eps=1e-9):  # nesting restores the outer patch
            pass
        assert torch.linalg.eigh is not original[0]
        V = torch.linalg.eigh(A).eigenvectors
        L = torch.linalg.eigvalsh(A)
    assert (torch.linalg.eigh, torch.linalg.eigvalsh) == original
    (V[:, -1] ** 2 * torch.arange(3.0, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(A.grad).all()
    assert_close(L, torch.tensor([1.0, 1.0, 4.0], dtype=torch.float64))


def test_patch_torch_decorator_and_out():
    @diffeig.patch_torch()
    def layer(A):
        return torch.linalg.eigh(A)

    A = torch.eye(2).requires_grad_()
    layer(A).eigenvectors.sum().backward()
    assert torch.isfinite(A.grad).all()
    with diffeig.patch_torch():
        out = (torch.empty(2), torch.empty(2, 2))
        torch.linalg.eigh(torch.eye(2), out=out)  # the out= variant stays torch's
    assert_close(out[0], torch.ones(2))
    with pytest.raises(ValueError, match="gap_eps"):
        diffeig.patch_torch(gap_eps=-1)


# ------------------------------------------------------------------------------------ CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_gradient_matches_cpu(dtype):
    A = random_hermitian(3, 6, 6, dtype=dtype)
    grads = []
    for dev in ("cpu", "cuda"):
        X = A.to(dev).requires_grad_()
        L, V = diffeig.eigh(X)
        (L.sum() + (V.abs() ** 2 * torch.arange(6, device=dev)).sum()).backward()
        grads.append(X.grad.cpu())
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(grads[1], grads[0], rtol=rtol * 100, atol=atol * 100)
