"""The iterative solvers drop converged matrices from their working set (BatchedOperator).

A batch then costs the sum of its matrices' iterations instead of its slowest matrix's
iterations times its size. Each matrix's iteration is independent of the others', so the
answers must be those of the same solver without compaction (a plain function, which
cannot be restricted), and the per-matrix iteration counts the same.
"""

from __future__ import annotations

import pytest
import torch
from test_eigsh import spectrum_matrix

import diffeig
import diffeig._lobpcg
from diffeig._implicit import batched_cg, partial_eigh_factor
from diffeig._lobpcg import BatchedOperator, Symmetric, lobpcg


def mixed_batch(n=60, batch=(2, 3)):
    """Spectra from fast (large relative gap) to slow (a small gap above the wanted pairs)."""
    gaps = torch.logspace(-3, 0, batch[0] * batch[1], dtype=torch.float64).reshape(batch)
    lam = torch.linspace(1, 2, n, dtype=torch.float64).expand(*batch, n).clone()
    lam[..., 0] = 0.0
    lam[..., 1] = 1 - gaps  # the wanted pair's distance to the rest of the spectrum
    return spectrum_matrix(n, lam.unsqueeze(-2), seed=3, batch=batch)


class Counting(BatchedOperator):
    """Counts the matrices each product runs on (across restrictions)."""

    def __init__(self, A, counter, batch_shape):
        super().__init__(lambda Y, A: A @ Y, A, batch_shape=batch_shape)
        self.counter = counter

    def __call__(self, Y):
        self.counter.append(Y.shape[:-2].numel())
        return super().__call__(Y)

    def restrict(self, index=None):
        sub = super().restrict(index)
        return Counting(sub.data[0], self.counter, sub.batch_shape)


@pytest.mark.parametrize("sym", [False, True])
def test_lobpcg_compaction_gives_the_uncompacted_answer_for_less_work(sym):
    # sym: the matrices as a Symmetric batch (never copied, diffeig::sym_matmul on the
    # selection), else a tensor indexed (copied) at each compaction
    A = mixed_batch()
    X0 = torch.randn(*A.shape[:-1], 6, dtype=A.dtype, generator=torch.Generator().manual_seed(0))
    scale = A.abs().sum(-1).amax(-1)
    products = []
    data = Symmetric(A) if sym else A
    t1, X1, i1 = lobpcg(Counting(data, products, A.shape[:-2]), X0, 2, scale=scale)
    t0, X0_, i0 = lobpcg(lambda Y: data @ Y, X0, 2, scale=scale)  # not restrictable
    assert i0.converged and i1.converged
    assert torch.equal(i1.matrix_iterations, i0.matrix_iterations)
    assert i1.matrix_iterations.shape == A.shape[:-2]
    assert int(i1.matrix_iterations.min()) < int(i1.matrix_iterations.max())
    torch.testing.assert_close(t1, t0, rtol=0, atol=1e-12)
    torch.testing.assert_close((X1.mT @ X0_).abs(), torch.eye(2).expand(2, 3, 2, 2).double())
    # Without compaction every product covers the 6 matrices; with it, fewer.
    assert len(products) == i1.iterations  # the first block, then one per iteration but the last
    assert sum(products) < 6 * len(products)
    assert min(products) < 6


@pytest.mark.parametrize("sym", [False, True])
def test_batched_cg_compaction_matches(sym):
    A = mixed_batch() + 0.5 * torch.eye(60, dtype=torch.float64)  # SPD, condition numbers vary
    A[0, 0] = A[0, 0] + torch.diag(torch.logspace(0, 3, 60, dtype=torch.float64))
    rhs = torch.randn(2, 3, 60, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    products = []
    data = Symmetric(A) if sym else A
    Y1, it1, rel1 = batched_cg(Counting(data, products, (2, 3)), rhs, tol=1e-10, max_iter=500)
    Y0, it0, rel0 = batched_cg(lambda Y: data @ Y, rhs, tol=1e-10, max_iter=500)
    assert it1 == it0 and rel1 <= 1e-10 and rel0 <= 1e-10
    torch.testing.assert_close(Y1, Y0, rtol=1e-9, atol=0)
    torch.testing.assert_close(A @ Y1, rhs, rtol=1e-8, atol=1e-8)
    assert sum(products) < 6 * len(products)


@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
def test_ncut_lobpcg_batch_equals_one_by_one(laplacian):
    """Through the public function: each graph of a batch gets the answer (and gradient)
    it gets alone, to the solver's tolerance, while the batch compacts."""
    g = torch.Generator().manual_seed(4)
    f = torch.randn(6, 144, 16, generator=g, dtype=torch.float64)
    f[3] = f[3] * 0.2 + f[3].mean(0)  # one graph whose spectrum is much tighter
    W = diffeig.ncut.affinity(torch.nn.functional.normalize(f, dim=-1)).requires_grad_()
    lam, Z = diffeig.sym_eigh_ncut(W, 3, laplacian=laplacian, method="lobpcg", sign="max")
    torch.sigmoid(Z[..., 1:] / 0.05).sum().backward()
    for i in range(W.shape[0]):
        Wi = W[i].detach().clone().requires_grad_()
        li, Zi = diffeig.sym_eigh_ncut(Wi, 3, laplacian=laplacian, method="lobpcg", sign="max")
        torch.sigmoid(Zi[..., 1:] / 0.05).sum().backward()
        torch.testing.assert_close(lam[i].detach(), li.detach(), rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(Z[i].detach(), Zi.detach(), rtol=0, atol=1e-6)
        torch.testing.assert_close(W.grad[i], Wi.grad, rtol=0, atol=1e-6 * Wi.grad.abs().max())


def test_partial_eigh_factor_with_a_plain_function_equals_the_operator():
    A = mixed_batch()
    lam, V = torch.linalg.eigh(A)
    theta, X = lam[..., :2], V[..., :2]
    g = torch.Generator().manual_seed(5)
    gX = torch.randn(X.shape, generator=g, dtype=A.dtype)
    gt = torch.randn(theta.shape, generator=g, dtype=A.dtype)
    kw = dict(cg_tol=1e-11, cg_max_iter=500, diagonal=torch.diagonal(A, dim1=-2, dim2=-1))
    P_op = partial_eigh_factor(A, theta, X, gt, gX, 1e-12, 0.0, **kw)
    P_fn = partial_eigh_factor(lambda Y: A @ Y, theta, X, gt, gX, 1e-12, 0.0, **kw)
    torch.testing.assert_close(P_op, P_fn, rtol=1e-8, atol=1e-10)
