"""sym_eigh_ncut on torch sparse graphs: against the dense path on graphs small enough for
both, gradients on the stored entries, batches, and every bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import diffeig
from diffeig.ncut import pixel_affinity
from diffeig.ncut._multigrid import Multigrid

DATA = Path(__file__).parent / "data"

pytestmark = pytest.mark.filterwarnings("ignore:Sparse (CSR tensor support|invariant checks)")


def image(h=12, w=13, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, h, w, dtype=dtype, generator=g)
    x[:, : h // 2] += 0.5  # two regions, so z2 is well separated
    return x


def graph(seed=0, **kw):
    return pixel_affinity(image(seed=seed), radius=2, sigma_color=0.4, **kw)


def dense_grad_at(W_sparse, Wd_grad):
    idx = W_sparse.indices()
    return Wd_grad[tuple(idx)]


@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
@pytest.mark.parametrize("k", [2, 4])
def test_matches_the_dense_path(laplacian, k):
    W = graph()
    Ws = W.detach().requires_grad_()
    Wd = W.to_dense().requires_grad_()
    lam, z = diffeig.sym_eigh_ncut(Ws, k, laplacian=laplacian, method="lobpcg", tol=1e-10)
    lam_d, z_d = diffeig.sym_eigh_ncut(Wd, k, laplacian=laplacian)
    assert lam.shape == (k,) and z.shape == (W.shape[0], k) and z.layout == torch.strided
    torch.testing.assert_close(lam, lam_d, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(z, z_d, atol=1e-6, rtol=0)
    w = torch.randn(z.shape[0], dtype=z.dtype, generator=torch.Generator().manual_seed(1))
    ((z[:, -1] * w).sum() ** 2 + lam.sum()).backward()
    ((z_d[:, -1] * w).sum() ** 2 + lam_d.sum()).backward()
    g = Ws.grad
    assert g.layout == torch.sparse_coo
    g = g.coalesce()
    assert torch.equal(g.indices(), W.indices())  # W's pattern
    ref = dense_grad_at(W, Wd.grad)
    assert ((g.values() - ref).norm() / ref.norm()) < 1e-6


def test_gradient_reaches_values_of_an_uncoalesced_coo():
    W = graph()
    idx, v = W.indices(), W.values()
    perm = torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))
    vals = v[perm].clone().requires_grad_()
    Wu = torch.sparse_coo_tensor(idx[:, perm], vals, W.shape)
    assert not Wu.is_coalesced()
    lam, z = diffeig.sym_eigh_ncut(Wu, 2, method="lobpcg", tol=1e-10)
    (z[:, 1] ** 3).sum().backward()
    Wd = W.to_dense().requires_grad_()
    lam_d, z_d = diffeig.sym_eigh_ncut(Wd, 2)
    (z_d[:, 1] ** 3).sum().backward()
    ref = Wd.grad[tuple(idx[:, perm])]
    assert ((vals.grad - ref).norm() / ref.norm()) < 1e-6


def test_csr_input_and_auto():
    W = graph()
    lam, z = diffeig.sym_eigh_ncut(W.to_sparse_csr(), 3, method="auto")
    lam2, z2 = diffeig.sym_eigh_ncut(W, 3, method="lobpcg")
    torch.testing.assert_close(lam, lam2)
    torch.testing.assert_close(z, z2)


def test_batch_equals_graph_by_graph():
    imgs = torch.stack([image(seed=s) for s in range(3)])
    W = pixel_affinity(imgs, radius=2, sigma_color=0.4).detach().requires_grad_()
    assert W.shape == (3, 156, 156)
    lam, z = diffeig.sym_eigh_ncut(W, 2, method="lobpcg", tol=1e-10)
    assert lam.shape == (3, 2) and z.shape == (3, 156, 2)
    (z[..., 1] ** 3).sum().backward()
    gb = W.grad.coalesce()
    for b in range(3):
        Wb = pixel_affinity(imgs[b], radius=2, sigma_color=0.4).detach().requires_grad_()
        lb, zb = diffeig.sym_eigh_ncut(Wb, 2, method="lobpcg", tol=1e-10)
        torch.testing.assert_close(lam[b], lb, atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(z[b], zb, atol=1e-7, rtol=0)
        (zb[:, 1] ** 3).sum().backward()
        mine = gb.values()[gb.indices()[0] == b]
        ref = Wb.grad.coalesce().values()
        assert ((mine - ref).norm() / ref.norm()) < 1e-6


def test_float32_agrees_with_float64():
    W = graph()
    lam, z = diffeig.sym_eigh_ncut(W.float(), 2, method="lobpcg")
    lam64, z64 = diffeig.sym_eigh_ncut(W, 2, method="lobpcg")
    assert lam.dtype == torch.float32
    torch.testing.assert_close(lam.double(), lam64, atol=1e-5, rtol=1e-3)
    assert (z[:, 1].double() - z64[:, 1]).abs().max() < 1e-3 * z64[:, 1].abs().max()


def test_gradcheck_on_a_small_sparse_graph():
    W = pixel_affinity(image(5, 6), radius=1.5, sigma_color=0.5).coalesce()
    idx, t = W.indices(), None
    n = W.shape[0]
    key = idx[0] * n + idx[1]
    t = torch.searchsorted(key, idx[1] * n + idx[0])

    def f(v):
        v = 0.5 * (v + v[t])  # a perturbation of one stored value keeps W symmetric
        Ws = torch.sparse_coo_tensor(idx, v, W.shape, is_coalesced=True)
        lam, z = diffeig.sym_eigh_ncut(Ws, 2, method="lobpcg", tol=1e-12, laplacian="ncut")
        return lam[1], (z[:, 1] * torch.linspace(-1, 1, n, dtype=z.dtype)).sum() ** 2

    v = W.values().clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (v,), eps=1e-7, atol=1e-5, rtol=1e-4)


def test_ties_follow_the_dense_rules():
    # two uniform halves joined by weights of 3e-15: l2 ~ 1e-15 nearly ties the trivial
    # l1 = 0 (a gap below the threshold, masked); z2, the halves' indicator, is well defined
    x = torch.zeros(3, 8, 8, dtype=torch.float64)
    x[:, :, 4:] = 1.0
    W = pixel_affinity(x, radius=1.5, sigma_color=0.3).detach().requires_grad_()
    lam, z = diffeig.sym_eigh_ncut(W, 2, method="lobpcg", tol=1e-10)
    Wd = W.detach().to_dense().requires_grad_()
    lam_d, z_d = diffeig.sym_eigh_ncut(Wd, 2)
    torch.testing.assert_close(lam, lam_d, atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(z, z_d, atol=1e-6, rtol=0)
    w = torch.linspace(-1, 2, 64, dtype=torch.float64)
    (lam.sum() + (z[:, 1] * w).sum() ** 2).backward()
    (lam_d.sum() + (z_d[:, 1] * w).sum() ** 2).backward()
    g = W.grad.coalesce()
    assert torch.isfinite(g.values()).all()
    ref = Wd.grad[tuple(g.indices())]
    assert ((g.values() - ref).norm() / ref.norm()) < 1e-6


def test_scale_extremes_are_exact():
    W = graph()
    lam, z = diffeig.sym_eigh_ncut(W, 2, method="lobpcg")
    for s in (2.0**-300, 2.0**300):
        lam_s, z_s = diffeig.sym_eigh_ncut(W * s, 2, method="lobpcg")
        torch.testing.assert_close(lam_s, lam, atol=1e-10, rtol=1e-8)
        torch.testing.assert_close(z_s * s**0.5, z, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------- bad input


def _sparse(i, j, v, n=4):
    return torch.sparse_coo_tensor(
        torch.tensor([i, j]), torch.tensor(v, dtype=torch.float64), (n, n), check_invariants=False
    )


def ring(n=6, w=1.0):  # coalesced
    i = list(range(n)) + [(a + 1) % n for a in range(n)]
    j = [(a + 1) % n for a in range(n)] + list(range(n))
    return _sparse(i, j, [w] * (2 * n), n).coalesce()


@pytest.mark.parametrize(
    "W, match",
    [
        (_sparse([0, 1, 2], [1, 0, 3], [1.0, 1.0, 1.0]), "pattern must be symmetric"),
        (_sparse([0, 1, 2, 3], [1, 0, 3, 2], [1.0, 2.0, 1.0, 1.0]), "must be symmetric"),
        (_sparse([0, 1, 2, 3], [1, 0, 3, 2], [-1.0, -1.0, 1.0, 1.0]), "non-negative"),
        (_sparse([0, 1, 2, 3], [1, 0, 3, 2], [float("nan")] * 2 + [1.0] * 2), "finite"),
        (_sparse([0, 1, 2, 3], [1, 0, 3, 2], [float("inf")] * 2 + [1.0] * 2), "finite"),
        (_sparse([0, 1, 0, 1, 2, 3], [1, 0, 1, 0, 3, 2], [1.0] * 6), "duplicate"),
        (_sparse([0, 1], [1, 0], [1.0, 1.0]), "zero degree"),
    ],
)
def test_bad_values_and_patterns(W, match):
    with pytest.raises(ValueError, match=match):
        diffeig.sym_eigh_ncut(W, 2, method="lobpcg")


def test_bad_shapes_layouts_and_methods():
    W = ring()
    with pytest.raises(ValueError, match="to_dense"):
        diffeig.sym_eigh_ncut(W, 2, method="dense")
    with pytest.raises(ValueError, match=r"\(N, N\), or \(B, N, N\)"):
        diffeig.sym_eigh_ncut(torch.sparse_coo_tensor(W.indices(), W.values(), (6, 7)), 2)
    with pytest.raises(ValueError, match="3-D sparse COO"):
        diffeig.sym_eigh_ncut(W.to_dense().expand(2, 6, 6).to_sparse_csr(), 2, method="lobpcg")
    with pytest.raises(ValueError, match="dtype"):
        diffeig.sym_eigh_ncut(W.to(torch.int64), 2, method="lobpcg")
    with pytest.raises(ValueError, match="k"):
        diffeig.sym_eigh_ncut(W, 7, method="lobpcg")
    with pytest.raises(ValueError, match="sorted, unique column"):
        bad = torch.sparse_csr_tensor(
            torch.tensor([0, 2, 2, 2, 2, 2, 2]), torch.tensor([3, 1]), torch.ones(2), (6, 6)
        ).double()
        diffeig.sym_eigh_ncut(bad, 2, method="lobpcg")


def test_isolated_node_is_fine_for_the_unnormalized_laplacian():
    W = _sparse([0, 1, 1, 2], [1, 0, 2, 1], [1.0, 1.0, 2.0, 2.0], n=4)
    lam, z = diffeig.sym_eigh_ncut(W, 2, method="lobpcg", laplacian="unnormalized")
    lam_d, _ = diffeig.sym_eigh_ncut(W.to_dense(), 2, laplacian="unnormalized")
    torch.testing.assert_close(lam, lam_d)


# --------------------------------------------------------------------- pixel_affinity


def test_pixel_affinity_matches_the_definition():
    x = image(5, 7)
    W = pixel_affinity(x, radius=2.5, sigma_color=0.3, sigma_space=1.5)
    assert W.is_coalesced() and W.shape == (35, 35)
    ys, xs = torch.meshgrid(torch.arange(5), torch.arange(7), indexing="ij")
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], -1).double()
    f = x.reshape(3, -1).T
    dist2 = torch.cdist(pos, pos) ** 2
    ref = torch.exp(-(torch.cdist(f, f) ** 2) / 0.3**2) * torch.exp(-dist2 / 1.5**2)
    ref = torch.where((dist2 <= 2.5**2) & (dist2 > 0), ref, 0)
    torch.testing.assert_close(W.to_dense(), ref)


def test_pixel_affinity_batches_and_gradients():
    x = image(4, 5).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: pixel_affinity(t, radius=1.5).coalesce().values(), (x,)
    )
    xb = torch.stack([image(4, 5, seed=s) for s in range(2)])
    Wb = pixel_affinity(xb, radius=1.5)
    assert Wb.shape == (2, 20, 20)
    torch.testing.assert_close(Wb.to_dense()[1], pixel_affinity(xb[1], radius=1.5).to_dense())


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"radius": 0.5}, "radius"),
        ({"sigma_color": 0.0}, "sigma_color"),
        ({"sigma_space": -1.0}, "sigma_space"),
    ],
)
def test_pixel_affinity_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        pixel_affinity(image(4, 4), **kw)


def test_pixel_affinity_bad_images():
    with pytest.raises(ValueError, match="image"):
        pixel_affinity(torch.rand(4, 4))
    with pytest.raises(ValueError, match="finite"):
        pixel_affinity(torch.full((3, 4, 4), float("nan")))


# -------------------------------------------------------------------------- multigrid


def test_multigrid_is_a_symmetric_positive_preconditioner():
    W = pixel_affinity(image(24, 24), radius=2, sigma_color=0.3).coalesce()
    i, j = W.indices()
    d = torch.zeros(576, dtype=torch.float64).index_add_(0, i, W.values())
    mg = Multigrid(i, j, W.values(), d.unsqueeze(0), coarsest=16)  # a few levels
    assert len(mg.sizes) >= 3 and mg.sizes[0] == 576
    assert f"levels={mg.sizes}" in repr(mg) and mg.operator_complexity > 1
    X = torch.randn(1, 576, 5, dtype=torch.float64)
    X = X - X.mean(-2, keepdim=True)
    TX = mg(X)
    G = X[0].T @ TX[0]
    torch.testing.assert_close(G, G.T, atol=1e-10, rtol=1e-8)  # symmetric
    assert torch.linalg.eigvalsh(0.5 * (G + G.T)).min() > 0  # positive


def test_float32_is_solved_to_float32_accuracy_with_float64_iterations():
    from diffeig.ncut import _sparse

    W = graph()
    info64, info32 = _sparse.SparseInfo(), _sparse.SparseInfo()
    diffeig.sym_eigh_ncut(W, 2, tol=7e-5, info=info64)
    its64 = info64.forward_calls
    Wf = W.float().detach().requires_grad_()
    lam, z = diffeig.sym_eigh_ncut(Wf, 2, info=info32)
    its32 = info32.forward_calls
    assert abs(its32 - its64) <= max(1, 0.2 * its64)
    assert lam.dtype == z.dtype == torch.float32
    z[:, 1].pow(3).sum().backward()
    assert Wf.grad.dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_same_code_runs_on_cuda():
    W = graph()
    Wc = W.cuda().detach().requires_grad_()
    lam, z = diffeig.sym_eigh_ncut(Wc, 2, tol=1e-10)
    lam_c, z_c = diffeig.sym_eigh_ncut(W, 2, tol=1e-10)
    torch.testing.assert_close(lam.cpu(), lam_c, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(z.cpu(), z_c, atol=1e-6, rtol=0)
    z[:, 1].pow(3).sum().backward()
    assert Wc.grad.is_cuda and torch.isfinite(Wc.grad.coalesce().values()).all()


@pytest.mark.slow
def test_never_forms_an_n_by_n_matrix(tmp_path):
    # 300 x 300 px: an N x N float64 matrix would be 64 GB; the process stays under 2 GB
    import subprocess
    import sys

    code = (
        "import resource, torch, diffeig\n"
        "x = torch.rand(3, 300, 300, dtype=torch.float64)\n"
        "x[:, :, 150:] += 1\n"
        "W = diffeig.ncut.pixel_affinity(x, radius=2).requires_grad_()\n"
        "lam, z = diffeig.sym_eigh_ncut(W, 2)\n"
        "z[:, 1].pow(3).sum().backward()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) < 2.0


# ------------------------------------------------------------- no skipped eigenpair
# A few pixels of a colour unlike their neighbours form an island whose pair has the
# smallest nontrivial eigenvalue, with an eigenvector on those pixels alone: a random
# start barely sees it, and an iterative solver that returns the next pair reports a
# small residual (lobpcg + pyamg and torch.lobpcg do so on the quokka's 8-neighbour graph
# at 224 px). These tests compare with solvers that cannot skip it: the dense path, and
# scipy's shift-invert Lanczos.


def with_island(x, offset=0.45, at=(5, 7)):
    """``x`` with a 3-pixel island: its blue channel moved by ``offset``."""
    x = x.clone()
    a, b = at
    for p, q in [(a, b), (a, b + 1), (a + 1, b)]:
        x[2, p, q] = x[2, p, q] + offset if x[2, p, q] < 0.5 else x[2, p, q] - offset
    return x


def smooth_image(h, w):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    x = torch.stack([0.3 + 0.2 * xx, 0.4 + 0.1 * yy, 0.2 + 0.1 * xx * yy]).double()
    x[0, :, w // 2 :] += 0.3  # two halves
    return x


@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
def test_an_island_pair_is_found_like_the_dense_path(laplacian):
    x = with_island(smooth_image(30, 32))
    W = pixel_affinity(x, radius=1.5, sigma_color=0.1)
    lam, z = diffeig.sym_eigh_ncut(W, 3, laplacian=laplacian, method="lobpcg")
    lam_d, z_d = diffeig.sym_eigh_ncut(W.to_dense(), 3, laplacian=laplacian)
    assert lam_d[1] < 0.01 * lam_d[2]  # the island's pair is z2, far below the halves'
    torch.testing.assert_close(lam, lam_d, rtol=1e-8, atol=1e-14)
    island = z_d[:, 1].abs() > 0.5 * z_d[:, 1].abs().max()
    assert int(island.sum()) == 3
    torch.testing.assert_close(z[:, 1:], z_d[:, 1:], atol=1e-5 * z_d.abs().max(), rtol=0)


def test_an_island_in_one_graph_of_a_batch():
    x = smooth_image(30, 32)
    W = pixel_affinity(torch.stack([x, with_island(x), x]), radius=1.5, sigma_color=0.1)
    lam, _ = diffeig.sym_eigh_ncut(W, 2, method="lobpcg")
    for b in range(3):
        lam_b, _ = diffeig.sym_eigh_ncut(W[b].to_dense(), 2)
        torch.testing.assert_close(lam[b], lam_b, rtol=1e-8, atol=1e-14)
    assert lam[1, 1] < 0.01 * lam[0, 1]


@pytest.mark.parametrize("radius", [1.5, 5.0])
def test_an_island_on_the_quokka_against_shift_invert(radius):
    sla = pytest.importorskip("scipy.sparse.linalg")
    import numpy as np
    import scipy.sparse as sp
    from PIL import Image

    img = Image.open(DATA / "quokka.jpg").convert("RGB").resize((112, 112), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).double() / 255
    x = with_island(x, at=(37, 37))
    W = pixel_affinity(x, radius=radius)
    i, v = W.indices().numpy(), W.values().numpy()
    Ws = sp.csc_matrix((v, (i[0], i[1])), shape=W.shape)
    d = np.asarray(Ws.sum(1)).ravel()
    ref = sla.eigsh(sp.diags(d) - Ws, k=4, M=sp.diags(d), sigma=-1e-10, which="LM")[0]
    ref = np.sort(ref)[:3]
    assert ref[1] < 0.1 * ref[2]  # the island's pair, well below the photo's
    lam, z = diffeig.sym_eigh_ncut(W, 3, method="lobpcg")
    np.testing.assert_allclose(lam[1:].numpy(), ref[1:], rtol=1e-6)
    assert int((z[:, 1].abs() > 0.5 * z[:, 1].abs().max()).sum()) <= 3


def test_a_forward_only_block_gives_the_same_pairs():
    # solve_sparse(block=k): the k - 1 pairs and one guard (pixel-ncut's forward)
    from diffeig._eigh import gap_tolerances
    from diffeig.ncut._sparse import solve_sparse

    W = graph()
    rtol, atol = gap_tolerances(None, W.shape[0], W.dtype)
    for k in (3, 4):
        lam, z = solve_sparse(W, k, True, "max", rtol, atol, 1e-10, 1000, "raise", block=k)
        lam_d, z_d = diffeig.sym_eigh_ncut(W.to_dense(), k)
        torch.testing.assert_close(lam, lam_d, atol=1e-8, rtol=1e-8)
        torch.testing.assert_close(z, z_d, atol=1e-6, rtol=0)


@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
@pytest.mark.parametrize("k", [2, 3])
def test_an_island_converges_without_stalling(laplacian, k):
    # The multigrid amplifies the island's converged vector by ~1e8 in every
    # preconditioned residual; unless those are orthogonalized against the Ritz block the
    # Gram whitening drops the rest and LOBPCG crawls (52 iterations for ncut, k = 2) or
    # stalls (1000, after a rounding-level change of the V-cycle). Now 10 - 12.
    W = pixel_affinity(with_island(smooth_image(30, 32)), radius=1.5, sigma_color=0.1)
    info = diffeig.ncut.SparseInfo()
    lam, _ = diffeig.sym_eigh_ncut(
        W, k, laplacian=laplacian, method="lobpcg", on_fail="raise", info=info
    )
    assert 0 < info.forward_calls <= 25
    lam_d, _ = diffeig.sym_eigh_ncut(W.to_dense(), k, laplacian=laplacian)
    torch.testing.assert_close(lam, lam_d, rtol=1e-8, atol=1e-14)
