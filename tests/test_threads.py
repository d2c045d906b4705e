"""The sparse solve's thread count on a shared machine (diffeig/_threads.py)."""

import contextlib
import sys

import pytest
import torch

import diffeig
from diffeig import _threads


@pytest.fixture
def two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_busy_cores_reads_the_machine():
    busy = _threads.busy_cores()
    assert isinstance(busy, int) and busy >= 0
    free = _threads.free_cores()
    assert 0 <= free <= len(__import__("os").sched_getaffinity(0))


def test_solve_threads_uses_free_cores_and_restores(monkeypatch, two_threads):
    seen = []
    monkeypatch.setattr(_threads, "free_cores", lambda: 0)  # every core busy elsewhere
    with _threads.solve_threads(10**6) as used:
        seen.append((used, torch.get_num_threads()))
    assert seen == [(1, 1)] and torch.get_num_threads() == 2
    with _threads.solve_threads(10) as used:  # a small solve: left alone
        assert used == 2 == torch.get_num_threads()
    monkeypatch.setenv("DIFFEIG_ADAPTIVE_THREADS", "0")
    with _threads.solve_threads(10**6) as used:
        assert used == 2
    monkeypatch.delenv("DIFFEIG_ADAPTIVE_THREADS")
    monkeypatch.setattr(_threads, "free_cores", lambda: None)  # not Linux: unchanged
    with _threads.solve_threads(10**6) as used:
        assert used == 2
    with pytest.raises(RuntimeError, match="boom"):  # restored when the solve fails too
        monkeypatch.setattr(_threads, "free_cores", lambda: 1)
        with _threads.solve_threads(10**6):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_the_sparse_solve_on_fewer_threads_gives_the_same_pairs(monkeypatch, two_threads):
    # a pixel graph above MIN_ENTRIES, solved with all threads and with one: same numbers
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 40, 40, generator=g, dtype=torch.float64).cumsum(-1) / 40
    W = diffeig.ncut.pixel_affinity(img).coalesce()
    assert W._nnz() >= _threads.MIN_ENTRIES
    counts = []
    real = _threads.solve_threads

    @contextlib.contextmanager
    def spy(entries):
        with real(entries) as used:
            counts.append(torch.get_num_threads())
            yield used

    import diffeig.ncut._sparse as sparse

    monkeypatch.setattr(sparse, "solve_threads", spy)
    monkeypatch.setattr(_threads, "free_cores", lambda: 2)
    lam2, Z2 = diffeig.sym_eigh_ncut(W, 2, method="lobpcg")
    monkeypatch.setattr(_threads, "free_cores", lambda: 0)
    lam1, Z1 = diffeig.sym_eigh_ncut(W, 2, method="lobpcg")
    assert counts == [2, 1] and torch.get_num_threads() == 2
    torch.testing.assert_close(lam1, lam2, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(Z1.abs(), Z2.abs(), rtol=1e-6, atol=1e-9)
