"""The torch.ops.diffeig operators: native kernels against their reference twins,
opcheck, argument checks, and the registered autograd of eigh_backward_core."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DEVICES, assert_close
from torch.autograd import gradcheck, gradgradcheck

import diffeig
from diffeig import _extension, _ops, _reference

needs_ext = pytest.mark.skipif(
    not _extension._LOADED, reason=f"native extension not built: {diffeig.load_error()}"
)


def core_samples(device="cpu", requires_grad=False):
    """(eigenvalues, X, grad_eigenvalues, gap_rtol, gap_atol) covering ties, k < n, batches."""
    g = torch.Generator().manual_seed(0)
    out = []
    for dtype in (torch.float32, torch.float64, torch.complex64, torch.complex128):
        real = torch.empty(0, dtype=dtype).real.dtype
        for batch, n, k in [((), 5, 5), ((3,), 6, 2), ((2, 2), 4, 1), ((0,), 3, 3)]:
            lam = torch.randn(*batch, n, dtype=real, generator=g).sort(-1).values
            if n >= 3:  # an exact tie and a rounding-level one
                lam[..., 1] = lam[..., 0]
                lam[..., 2] = lam[..., 1] + 1e-3 * torch.finfo(real).eps
            X = torch.randn(*batch, n, k, dtype=dtype, generator=g)
            gl = torch.randn(*batch, k, dtype=real, generator=g)
            for gl_ in (gl, None):
                args = [lam, X, gl_]
                args = [
                    a.to(device).requires_grad_(requires_grad and a.dtype.is_floating_point)
                    if a is not None
                    else None
                    for a in args
                ]
                out.append((*args, n * torch.finfo(real).eps, 0.0))
            out.append((lam.to(device), X.to(device), None, 0.0, 1e-1))
    return out


def laplacian_samples(device="cpu"):
    g = torch.Generator().manual_seed(1)
    out = []
    for dtype in (torch.float32, torch.float64):
        for shape in [(5, 5), (3, 7, 7), (0, 4, 4)]:
            W = torch.rand(*shape, dtype=dtype, generator=g) + 0.1
            for normalized in (True, False):
                out.append((W.to(device), normalized))
    return out


def assemble_samples(device="cpu"):
    g = torch.Generator().manual_seed(2)
    out = []
    for dtype in (torch.float32, torch.float64):
        for batch, n, k in [((), 6, 2), ((3,), 5, 3), ((2,), 4, 0), ((0,), 3, 2)]:
            P = torch.randn(*batch, n, k, dtype=dtype, generator=g)
            V = torch.randn(*batch, n, k, dtype=dtype, generator=g)
            c = torch.rand(*batch, n, dtype=dtype, generator=g)
            t = torch.randn(*batch, n, dtype=dtype, generator=g)
            out.append(tuple(x.to(device) for x in (P, V, c, t)))
    return out


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_core_native_equals_reference(device):
    for args in core_samples(device):
        native = torch.ops.diffeig.eigh_backward_core(*args)
        ref = _reference.eigh_backward_core(*args)
        assert native.shape == args[1].shape
        assert_close(native, ref)
        # Non-contiguous X gives the same result.
        X = args[1]
        if X.dim() >= 2 and X.numel():
            Xt = X.mT.contiguous().mT
            assert_close(torch.ops.diffeig.eigh_backward_core(args[0], Xt, *args[2:]), ref)


def test_core_masks_ties_and_fills_diagonal():
    lam = torch.tensor([1.0, 1.0, 1.0 + 1e-12, 3.0], dtype=torch.float64)
    X = torch.ones(4, 4, dtype=torch.float64)
    gl = torch.tensor([10.0, 20.0, 30.0, 40.0], dtype=torch.float64)
    for use in (True, False):
        with _extension.use_native(use and _extension._LOADED):
            M = _ops.eigh_backward_core(lam, X, gl, 0.0, 1e-9)
        expected = torch.tensor(
            [
                [10.0, 0.0, 0.0, 1 / 2],
                [0.0, 20.0, 0.0, 1 / 2],
                [0.0, 0.0, 30.0, 1 / (2 - 1e-12)],
                [-1 / 2, -1 / 2, -1 / (2 - 1e-12), 40.0],
            ],
            dtype=torch.float64,
        )
        assert_close(M, expected)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_laplacian_native_equals_reference(device):
    for W, normalized in laplacian_samples(device):
        L, d = torch.ops.diffeig.laplacian(W, normalized)
        Lr, dr = _reference.laplacian(W, normalized)
        assert_close(L, Lr)
        assert_close(d, dr)
        assert_close(
            torch.ops.diffeig.laplacian(W.mT, normalized)[0],
            _reference.laplacian(W.mT, normalized)[0],
        )


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_assemble_native_equals_reference(device):
    for args in assemble_samples(device):
        out = torch.ops.diffeig.ncut_grad_assemble(*args)
        assert out.shape == (*args[0].shape[:-1], args[0].shape[-2])
        assert_close(out, _reference.ncut_grad_assemble(*args))


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_symmetry_stats_native_equals_reference(dtype):
    g = torch.Generator().manual_seed(0)
    for shape in [(1, 1), (5, 5), (3, 65, 65), (2, 2, 130, 130)]:
        A = torch.rand(*shape, generator=g, dtype=dtype)
        for W in (A, A + A.mT, (A + A.mT).mT.contiguous(), A.mT):  # asymmetric, symmetric
            got = torch.ops.diffeig.symmetry_stats(W)
            assert got.dtype == torch.float64 and got.shape == (3,)
            assert torch.equal(got, _reference.symmetry_stats(W))
    W = torch.zeros(2, 70, 70, dtype=dtype)
    W[1, 69, 3] = 2.5  # one asymmetric pair in the last tile of the second matrix
    assert torch.ops.diffeig.symmetry_stats(W).tolist() == [0.0, 2.5, 2.5]
    W[0, 1, 2] = float("nan")
    lo, hi, _ = torch.ops.diffeig.symmetry_stats(W).tolist()
    assert math.isnan(lo) and math.isnan(hi)
    W[0, 1, 2] = float("inf")
    assert torch.ops.diffeig.symmetry_stats(W)[1] == float("inf")


def _csr_of(dense: torch.Tensor):
    S = dense.to_sparse_csr()
    return S.crow_indices(), S.col_indices(), S.values()


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_mirror_stats_native_equals_reference(dtype):
    # symmetric patterns, one or many entries without a mirror (first and last rows, the
    # diagonal, empty rows), asymmetric values; int64 and int32 indices
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 7, 40):
        A = torch.rand(n, n, generator=g, dtype=dtype) * (torch.rand(n, n, generator=g) < 0.3)
        S = A + A.mT
        S[n // 2] = 0  # an empty row and column
        S[:, n // 2] = 0
        cases = [S, S + torch.eye(n, dtype=dtype)]
        for i, j in [(0, n - 1), (n - 1, 0), (n // 2, 0), (0, n // 2)]:
            if i != j:
                W = S.clone()
                W[i, j], W[j, i] = 1.5, 0.0  # (i, j) stored, (j, i) not
                cases.append(W)
        B = S.clone()
        B[B > 0] += torch.rand(int((B > 0).sum()), generator=g, dtype=dtype)  # asymmetric
        cases += [B, A]
        for W in cases:
            crow, col, val = _csr_of(W)
            want = _reference.sparse_mirror_stats(crow, col, val)
            for index in (torch.int64, torch.int32):
                got = torch.ops.diffeig.sparse_mirror_stats(crow.to(index), col.to(index), val)
                assert got.dtype == torch.float64 and torch.equal(got, want), (n, W)
            present = W != 0
            assert want[0] == int((present & ~present.mT).sum())
            if want[0] == 0:
                assert want[1] == (W - W.mT).abs().max().double()
    with pytest.raises(RuntimeError, match="crow and col must both be int32 or both int64"):
        torch.ops.diffeig.sparse_mirror_stats(crow.int(), col.long(), val)
    with pytest.raises(RuntimeError, match=r"col must hold indices in \[0, 2\), got 5"):
        torch.ops.diffeig.sparse_mirror_stats(
            torch.tensor([0, 1, 1]), torch.tensor([5]), torch.ones(1, dtype=dtype)
        )


@needs_ext
@pytest.mark.parametrize("n", [6, 67, 130])
def test_symmetry_stats_sees_every_pair(n):
    # float64 on AVX2 compares 4 x 4 blocks transposed in registers and the edges a block
    # does not cover one pair at a time: one planted asymmetric pair, NaN or extreme
    # value is found wherever it sits (interior, last rows / columns, diagonal tiles).
    g = torch.Generator().manual_seed(n)
    A = torch.rand(n, n, generator=g, dtype=torch.float64)
    S = A + A.mT
    for i, j in [(0, 1), (1, 0), (n - 1, 0), (0, n - 1), (n - 2, n - 1), (n - 1, n - 2),
                 (n // 2, n // 2 + 1), (n - 1, n - 1), (3, n - 3), (n - 3, 3)]:  # fmt: skip
        W = S.clone()
        W[i, j] += 1.0
        stats = torch.ops.diffeig.symmetry_stats(W)
        assert torch.equal(stats, _reference.symmetry_stats(W)), (i, j)
        assert stats[2] == (0.0 if i == j else (W[i, j] - W[j, i]).abs()), (i, j)
        W[i, j] = -5.0
        assert torch.ops.diffeig.symmetry_stats(W)[0] == -5.0, (i, j)
        W[i, j] = float("nan")
        assert math.isnan(torch.ops.diffeig.symmetry_stats(W)[0]), (i, j)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sym_matmul_native_equals_reference(dtype):
    g = torch.Generator().manual_seed(0)
    tol = 1e-5 if dtype == torch.float32 else 1e-13

    def close(got, want):  # to rounding, relative to the product's scale
        scale = tol * want.abs().max().item() if want.numel() else 0.0
        torch.testing.assert_close(got, want, rtol=tol, atol=scale)

    # whole rows below N = 512, the lower triangle from there (4-row blocks and the rest)
    for B, n, m in [(1, 1, 1), (2, 3, 2), (3, 7, 1), (2, 130, 5), (4, 64, 6), (2, 514, 3)]:
        A = torch.rand(B, n, n, generator=g, dtype=dtype)
        W = A + A.mT  # exactly symmetric
        Y = torch.randn(B, n, m, generator=g, dtype=dtype)
        want = W @ Y
        got = torch.ops.diffeig.sym_matmul(W, Y)
        assert got.shape == (B, n, m) and got.dtype == dtype
        close(got, want)
        close(got, _reference.sym_matmul(W, Y))
        # a selection: repeated, reordered, a subset; Y has the selection's batch
        index = torch.tensor([B - 1, 0, B - 1])
        Ys = torch.randn(3, n, m, generator=g, dtype=dtype)
        want = W[index] @ Ys
        got = torch.ops.diffeig.sym_matmul(W, Ys, index)
        close(got, want)
        close(_reference.sym_matmul(W, Ys, index), want)
    none = torch.zeros(0, dtype=torch.long)
    for op in (torch.ops.diffeig.sym_matmul, _reference.sym_matmul):
        assert op(W, Y[:0], none).shape == (0, *Y.shape[1:])


@needs_ext
def test_sym_matmul_reads_the_lower_triangle_only():
    """As torch.linalg.eigh, from N = 512 on (below, whole rows stream faster): the strict
    upper triangle is never read (NaN there stays out)."""
    g = torch.Generator().manual_seed(1)
    n = 515  # the triangle path, and rows beyond its 4-row blocks
    L = torch.rand(1, n, n, generator=g, dtype=torch.float64).tril()
    W = L + L.tril(-1).mT  # the symmetric matrix of L's lower triangle
    Y = torch.randn(1, n, 3, generator=g, dtype=torch.float64)
    poisoned = L + torch.full_like(L, float("nan")).triu(1)
    torch.testing.assert_close(torch.ops.diffeig.sym_matmul(poisoned, Y), W @ Y)


@pytest.mark.slow  # about 20 s: every op through every opcheck utility
@needs_ext
def test_opcheck():
    torch.library.opcheck(torch.ops.diffeig.symmetry_stats.default, (torch.rand(3, 7, 7),))
    W = torch.rand(3, 7, 7, dtype=torch.float64)
    W = W + W.mT
    torch.library.opcheck(torch.ops.diffeig.sym_matmul.default, (W, torch.rand(3, 7, 2).double()))
    torch.library.opcheck(
        torch.ops.diffeig.sym_matmul.default,
        (W, torch.rand(2, 7, 3).double(), torch.tensor([2, 0])),
    )
    for args in core_samples(requires_grad=True):
        torch.library.opcheck(torch.ops.diffeig.eigh_backward_core.default, args)
    for args in laplacian_samples():
        torch.library.opcheck(torch.ops.diffeig.laplacian.default, args)
    for args in assemble_samples():
        torch.library.opcheck(torch.ops.diffeig.ncut_grad_assemble.default, args)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_core_gradcheck_and_gradgradcheck(dtype, backend):
    g = torch.Generator().manual_seed(3)
    lam = torch.randn(2, 5, dtype=torch.float64, generator=g).sort(-1).values
    lam[:, 1] = lam[:, 0]  # a masked pair: its derivative is zero, not NaN
    X = torch.randn(2, 5, 3, dtype=dtype, generator=g)
    gl = torch.randn(2, 3, dtype=torch.float64, generator=g)
    args = [t.requires_grad_() for t in (lam, X, gl)]

    def f(lam, X, gl):
        # The tie stays masked under the finite-difference step (1e-6 < gap_atol).
        return _ops.eigh_backward_core(lam, X, gl, 0.0, 1e-3)

    assert gradcheck(f, args)
    assert gradgradcheck(f, args)


@needs_ext
def test_core_vmap_rule():
    args = core_samples()[3]  # float32, batch (3,), with grad_eigenvalues
    lam, X, gl = args[:3]
    out = torch.func.vmap(
        lambda l, x, g: torch.ops.diffeig.eigh_backward_core(l, x, g, *args[3:]),
        in_dims=(0, 0, None),
    )(lam, X, gl[0])
    ref = _reference.eigh_backward_core(lam, X, gl[0].expand_as(gl), *args[3:])
    assert_close(out, ref)


@needs_ext
@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: torch.ops.diffeig.eigh_backward_core(
                torch.ones(3), torch.ones(4, 2), None, 0.0, 0.0
            ),
            "X must have n = 3 rows",
        ),
        (
            lambda: torch.ops.diffeig.eigh_backward_core(
                torch.ones(3), torch.ones(3, 4), None, 0.0, 0.0
            ),
            "X must have at most n = 3 columns",
        ),
        (
            lambda: torch.ops.diffeig.eigh_backward_core(
                torch.ones(3, dtype=torch.int32), torch.ones(3, 2), None, 0.0, 0.0
            ),
            "eigenvalues must be float32 or float64",
        ),
        (
            lambda: torch.ops.diffeig.eigh_backward_core(
                torch.ones(3), torch.ones(3, 2), torch.ones(3), 0.0, 0.0
            ),
            "grad_eigenvalues must have k = 2",
        ),
        (
            lambda: torch.ops.diffeig.eigh_backward_core(
                torch.ones(3), torch.ones(3, 2), None, -1.0, 0.0
            ),
            "gap_rtol and gap_atol must be non-negative",
        ),
        (
            lambda: torch.ops.diffeig.laplacian(torch.ones(3, 4), True),
            "W must be a batch of square",
        ),
        (
            lambda: torch.ops.diffeig.laplacian(torch.ones(3, 3, dtype=torch.int64), True),
            "W must be float32 or float64",
        ),
        (lambda: torch.ops.diffeig.symmetry_stats(torch.ones(3, 4)), "W must be a batch of square"),
        (lambda: torch.ops.diffeig.symmetry_stats(torch.ones(0, 3, 3)), "W must not be empty"),
        (
            lambda: torch.ops.diffeig.sym_matmul(torch.ones(2, 3, 4), torch.ones(2, 3, 1)),
            "W must be a batch of square",
        ),
        (
            lambda: torch.ops.diffeig.sym_matmul(torch.ones(2, 3, 3), torch.ones(2, 4, 1)),
            "Y must have n = 3 rows",
        ),
        (
            lambda: torch.ops.diffeig.sym_matmul(torch.ones(2, 3, 3), torch.ones(3, 3, 1)),
            "Y must have W's batch size 2 when index is None",
        ),
        (
            lambda: torch.ops.diffeig.sym_matmul(
                torch.ones(2, 3, 3), torch.ones(2, 3, 1, dtype=torch.float64)
            ),
            "Y must be Float as W",
        ),
        (
            lambda: torch.ops.diffeig.sym_matmul(
                torch.ones(2, 3, 3), torch.ones(1, 3, 1), torch.tensor([2])
            ),
            r"index must lie in \[0, 2\)",
        ),
        (
            lambda: torch.ops.diffeig.sym_matmul(
                torch.ones(2, 3, 3), torch.ones(1, 3, 1), torch.tensor([0, 1])
            ),
            r"index must have shape \(b,\) with b = 1",
        ),
        (
            lambda: torch.ops.diffeig.sym_matmul(
                torch.ones(2, 3, 3), torch.ones(1, 3, 1), torch.tensor([0], dtype=torch.int32)
            ),
            "index must be int64",
        ),
        (
            lambda: torch.ops.diffeig.ncut_grad_assemble(
                torch.ones(3, 2), torch.ones(3, 1), torch.ones(3), torch.ones(3)
            ),
            "V must have the shape of P",
        ),
        (
            lambda: torch.ops.diffeig.ncut_grad_assemble(
                torch.ones(3, 2), torch.ones(3, 2), torch.ones(4), torch.ones(3)
            ),
            "scale and diag_term must have n = 3",
        ),
    ],
)
def test_kernel_argument_errors(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


def test_fallback_without_extension_in_a_fresh_process():
    import subprocess
    import sys

    code = (
        "import warnings, torch, diffeig\n"
        "assert not diffeig.has_ops(), diffeig.load_error()\n"
        "A = torch.diag(torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64)).requires_grad_()\n"
        "diffeig.eigh(A).eigenvectors[:, -1].pow(2).sum().backward()\n"
        "assert torch.isfinite(A.grad).all()\n"
        "W = diffeig.ncut.affinity(torch.randn(10, 4, dtype=torch.float64)).requires_grad_()\n"
        "diffeig.sym_eigh_ncut(W)[1][:, 1].sum().backward()\n"
        "assert torch.isfinite(W.grad).all()\n"
        "print('ok', diffeig.load_error())\n"
    )
    env = {**__import__("os").environ, "DIFFEIG_NO_EXT": "1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "ok disabled by DIFFEIG_NO_EXT=1" in res.stdout


def test_has_ops_reports_the_switch():
    with _extension.use_native(False):
        assert not diffeig.has_ops()
    assert diffeig.has_ops() == _extension._LOADED


@pytest.mark.cuda
def test_cuda_kernels_compiled():
    assert diffeig.has_cuda_kernels()


def ncut_backward_samples(device="cpu"):
    """Full eigendecompositions of real Laplacians with random cotangents."""
    from diffeig.ncut import affinity

    g = torch.Generator().manual_seed(4)
    out = []
    for dtype in (torch.float32, torch.float64):
        for batch, n, k in [((), 7, 2), ((3,), 9, 3), ((2,), 5, 1), ((0,), 4, 2)]:
            W = affinity(torch.randn(*batch, n, 4, dtype=dtype, generator=g))
            for normalized in (True, False):
                L, d = _reference.laplacian(W, normalized)
                lam, V = torch.linalg.eigh(L)  # column-major V, as the forward saves it
                gZ = torch.randn(*batch, n, k, dtype=dtype, generator=g)
                gl = torch.randn(*batch, k, dtype=dtype, generator=g)
                out.append(
                    (
                        V.to(device),
                        lam.to(device),
                        d.to(device),
                        gZ.to(device),
                        gl.to(device),
                        normalized,
                        n * torch.finfo(dtype).eps,
                        0.0,
                    )
                )
    return out


@needs_ext
def test_ncut_backward_fused_equals_composite_and_reference():
    for args in ncut_backward_samples():
        fused = torch.ops.diffeig.ncut_backward(*args)
        # The composite with the native core and assemble kernels: what CUDA runs.
        composite = _reference.ncut_backward(
            *args,
            core=torch.ops.diffeig.eigh_backward_core,
            assemble=torch.ops.diffeig.ncut_grad_assemble,
        )
        ref = _reference.ncut_backward(*args)
        assert fused.shape == args[0].shape
        assert_close(fused, ref, scale=10)
        assert_close(composite, ref, scale=10)
        # A row-major V gives the same result.
        assert_close(torch.ops.diffeig.ncut_backward(args[0].contiguous(), *args[1:]), fused)


@needs_ext
def test_ncut_backward_opcheck_and_errors():
    for args in ncut_backward_samples():
        torch.library.opcheck(torch.ops.diffeig.ncut_backward.default, args)
    V, lam, d, gZ, gl = ncut_backward_samples()[2][:5]
    with pytest.raises(RuntimeError, match="grad_Z .* and grad_eigenvalues .* must agree"):
        torch.ops.diffeig.ncut_backward(V, lam, d, gZ, gl[..., :1], True, 0.0, 0.0)
    with pytest.raises(RuntimeError, match="must have V's dtype"):
        torch.ops.diffeig.ncut_backward(V, lam.double(), d, gZ, gl, True, 0.0, 0.0)


@pytest.mark.cuda
def test_cuda_ncut_backward_composite_matches_cpu():
    for args in ncut_backward_samples():
        cpu = torch.ops.diffeig.ncut_backward(*args)
        cuda_args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
        with torch.no_grad():
            gpu = _ops.ncut_backward(*cuda_args)
        assert_close(gpu.cpu(), cpu, scale=10)


@pytest.mark.cuda
def test_cuda_kernels_match_reference():
    for args in core_samples("cuda"):
        assert_close(
            torch.ops.diffeig.eigh_backward_core(*args), _reference.eigh_backward_core(*args)
        )
    for W, normalized in laplacian_samples("cuda"):
        for a, b in zip(
            torch.ops.diffeig.laplacian(W, normalized), _reference.laplacian(W, normalized)
        ):
            assert_close(a, b)
    for args in assemble_samples("cuda"):
        assert_close(
            torch.ops.diffeig.ncut_grad_assemble(*args), _reference.ncut_grad_assemble(*args)
        )


def cg_step_samples(device="cpu"):
    """(Y, R, P, AP, rr, stop, active) with active, converged, negative-curvature and
    already inactive columns in one batch."""
    g = torch.Generator().manual_seed(3)
    out = []
    for dtype in (torch.float32, torch.float64):
        for batch, n, k in [((), 7, 2), ((4,), 9, 3), ((2, 3), 5, 1), ((0,), 4, 2), ((2,), 0, 2)]:
            Y, R, P = (torch.randn(*batch, n, k, dtype=dtype, generator=g) for _ in range(3))
            AP = P + 0.1 * torch.randn(*batch, n, k, dtype=dtype, generator=g)
            if AP.numel() and k > 1 and batch:
                AP[..., 0, :, 1] = -P[..., 0, :, 1]  # non-positive curvature
            rr = (R * R).sum(-2)
            stop = torch.rand(*batch, k, dtype=dtype, generator=g) * rr.mean().nan_to_num(1.0)
            active = torch.rand(*batch, k, generator=g) > 0.2
            out.append(tuple(t.to(device) for t in (Y, R, P, AP, rr, stop, active)))
    return out


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_cg_step_native_equals_reference(device):
    for args in cg_step_samples(device):
        before = [a.clone() for a in args]
        out = torch.ops.diffeig.cg_step(*args)
        ref = _reference.cg_step(*args)
        for a, b in zip(out, ref):
            assert a.shape == b.shape and a.dtype == b.dtype
            if a.dtype == torch.bool:
                assert torch.equal(a, b)
            else:
                assert_close(a, b)
        for a, b in zip(args, before):  # functional: inputs untouched
            assert torch.equal(a, b)


def test_cg_step_leaves_inactive_columns_and_stops_on_curvature():
    Y, R, P = torch.ones(3, 2), torch.ones(3, 2), torch.ones(3, 2)
    AP = torch.tensor([[1.0, -1.0]] * 3)
    rr = torch.tensor([3.0, 3.0])
    out = _ops.cg_step(Y, R, P, AP, rr, torch.zeros(2), torch.tensor([True, True]))
    Y1, R1, P1, rr1, act = out
    # column 0: alpha = 3 / 3 = 1, R -> 0 -> converged; column 1: p.Ap < 0 -> stopped
    assert_close(Y1[:, 0], torch.full((3,), 2.0))
    assert_close(R1[:, 0], torch.zeros(3))
    assert torch.equal(act, torch.tensor([False, False]))
    assert torch.equal(Y1[:, 1], Y[:, 1]) and torch.equal(P1[:, 1], P[:, 1])
    assert rr1[1] == 3.0


@needs_ext
def test_cg_step_opcheck_vmap_and_errors():
    for args in cg_step_samples():
        torch.library.opcheck(torch.ops.diffeig.cg_step.default, args)
    args = cg_step_samples()[1]
    out = torch.func.vmap(torch.ops.diffeig.cg_step)(*args)
    for a, b in zip(out, _reference.cg_step(*args)):
        assert torch.equal(a, b) if a.dtype == torch.bool else torch.allclose(a, b)
    Y = torch.ones(2, 3, 2)
    k2 = torch.ones(2, 2)
    with pytest.raises(RuntimeError, match="R, P and AP must have the shape of Y"):
        torch.ops.diffeig.cg_step(Y, Y[:, :2], Y, Y, k2, k2, k2.bool())
    with pytest.raises(RuntimeError, match="active must be bool"):
        torch.ops.diffeig.cg_step(Y, Y, Y, Y, k2, k2, k2)
    with pytest.raises(RuntimeError, match="rr, stop and active must have k = 2"):
        torch.ops.diffeig.cg_step(Y, Y, Y, Y, torch.ones(2, 3), k2, k2.bool())


@pytest.mark.cuda
def test_cuda_cg_step_matches_reference():
    for args in cg_step_samples("cuda"):
        for a, b in zip(torch.ops.diffeig.cg_step(*args), _reference.cg_step(*args)):
            assert torch.equal(a, b) if a.dtype == torch.bool else torch.allclose(a, b)
