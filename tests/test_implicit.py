"""The implicit backward's pieces: one CG (preconditioned or not, native step or its
halves), the options object it is told, and the Function every iterative backward runs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import diffeig
from diffeig import _reference
from diffeig._implicit import batched_cg
from diffeig._tolerances import SolverOptions, default_tol, eigenvalue_converged, stall_floor

F64 = torch.float64


def spd_batch(b=3, n=30, spread=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(b, n, n, generator=g, dtype=F64)).Q
    lam = torch.logspace(0, spread, n, dtype=F64)
    A = Q @ torch.diag_embed(lam.expand(b, n)) @ Q.mT
    return 0.5 * (A + A.mT), torch.randn(b, n, 4, generator=g, dtype=F64)


def test_the_reference_step_is_its_two_halves():
    # cg_step's twin is cg_advance then cg_direction with Z = R: the preconditioned step
    # runs the same two halves, so both paths are one algorithm
    A, rhs = spd_batch()
    Y, R, P = torch.zeros_like(rhs), rhs.clone(), rhs.clone()
    rr = (R * R).sum(-2)
    active = torch.ones_like(rr, dtype=torch.bool)
    active[0, 1] = False  # an inactive column stays as it was
    stop = torch.full_like(rr, 1e-30)
    Y1, R1, P1, rr1, act1 = _reference.cg_step(Y, R, P, A @ P, rr, stop, active)
    Y2, R2, rr2, act2 = _reference.cg_advance(Y, R, P, A @ P, rr, rr, active)
    P2 = _reference.cg_direction(P, R2, rr2, rr, act2)
    for a, b in ((Y1, Y2), (R1, R2), (P1, P2), (rr1, rr2)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(act1, act2 & (rr2 > stop))
    assert torch.equal(P1[0, :, 1], P[0, :, 1]) and torch.equal(Y1[0, :, 1], Y[0, :, 1])


def test_an_identity_preconditioner_gives_the_native_steps_iterates():
    A, rhs = spd_batch(spread=2.0)
    Y0, it0, rel0 = batched_cg(lambda Y: A @ Y, rhs, tol=1e-11, max_iter=500)
    Y1, it1, rel1 = batched_cg(
        lambda Y: A @ Y, rhs, tol=1e-11, max_iter=500, preconditioner=lambda R: R.clone()
    )
    assert it0 == it1 and rel0 <= 1e-11 and rel1 <= 1e-11
    torch.testing.assert_close(Y1, Y0, rtol=0, atol=1e-12 * Y0.abs().max().item())
    torch.testing.assert_close(Y0, torch.linalg.solve(A, rhs), rtol=1e-8, atol=0)


def test_a_jacobi_preconditioner_solves_a_badly_scaled_system_in_fewer_steps():
    A, rhs = spd_batch(n=40, spread=0.5, seed=1)
    s = torch.logspace(-3, 3, 40, dtype=F64)  # rows and columns scaled over 6 decades
    A = s[:, None] * A * s[None, :]
    dinv = 1 / A.diagonal(dim1=-2, dim2=-1)
    plain = batched_cg(lambda Y: A @ Y, rhs, tol=1e-10, max_iter=2000)
    jacobi = batched_cg(
        lambda Y: A @ Y, rhs, tol=1e-10, max_iter=2000, preconditioner=lambda R: dinv[..., None] * R
    )
    assert jacobi[2] <= 1e-10 and jacobi[1] < plain[1]
    exact = torch.linalg.solve(A, rhs)
    torch.testing.assert_close(jacobi[0], exact, rtol=1e-6, atol=1e-8 * exact.abs().max().item())


def test_solver_options_are_one_frozen_value():
    o = SolverOptions(tol=None, max_iter=50, gap_rtol=1e-9, gap_atol=0.5)
    assert o.cg_tol(torch.float32) == default_tol(torch.float32)
    assert SolverOptions(tol=1e-7).cg_tol(F64) == 1e-7
    assert o.gaps == (1e-9, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.tol = 1e-3
    assert hash(o) == hash(SolverOptions(max_iter=50, gap_rtol=1e-9, gap_atol=0.5))


def test_the_lanczos_stop_is_one_rule_for_floats_and_tensors():
    tol = 1e-9
    cases = [(1e-6, 1e-3, 0.5), (1e-12, 1e-9, 1e-6), (1e-13, 1e-20, 1e-20), (1e-5, 0.5, 0.5)]
    for rel, l2, gap in cases:
        f = eigenvalue_converged(rel, l2, gap, tol, stall_floor(tol))
        t = eigenvalue_converged(*(torch.tensor(x) for x in (rel, l2, gap)), tol, stall_floor(tol))
        assert bool(f) == bool(t)
    assert eigenvalue_converged(1e-13, 0.0, 0.0, tol, stall_floor(tol))  # below the floor
    assert not eigenvalue_converged(1e-8, 1e-6, 1e-6, tol, stall_floor(tol))


@pytest.mark.parametrize("which", ["eigsh", "ncut"])
def test_every_iterative_backward_refuses_double_backward_alike(which):
    g = torch.Generator().manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(60, 8, generator=g, dtype=F64), dim=-1)
    W = diffeig.ncut.affinity(f)[None].expand(2, 60, 60).clone().requires_grad_()
    if which == "eigsh":
        out = diffeig.eigsh(W, 2, method="lobpcg")[1]
    else:
        out = diffeig.sym_eigh_ncut(W, 2, method="lobpcg")[1]
    (gW,) = torch.autograd.grad((out[..., 1] ** 3).sum(), W, create_graph=True)
    with pytest.raises(RuntimeError, match="do not support double backward"):
        gW.sum().backward()
