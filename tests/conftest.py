"""Shared fixtures: devices, the native/reference switch, tolerances per dtype."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

import diffeig
from diffeig import _extension

# One tolerance table per dtype (kornia's habit): (rtol, atol).
TOL = {
    torch.float32: (1e-4, 1e-5),
    torch.float64: (1e-10, 1e-12),
    torch.complex64: (1e-4, 1e-5),
    torch.complex128: (1e-10, 1e-12),
}

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_configure(config):
    # `make gpu-check` sets this: there the cuda-marked tests must run, never be skipped.
    if os.environ.get("DIFFEIG_REQUIRE_CUDA") == "1" and not torch.cuda.is_available():
        raise pytest.UsageError(
            "DIFFEIG_REQUIRE_CUDA=1 but torch.cuda.is_available() is False: the cuda-marked "
            "tests would be skipped"
        )


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)


def assert_close(actual, expected, dtype=None, scale=1.0):
    rtol, atol = TOL[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol * scale, atol=atol * scale)


@pytest.fixture(params=["native", "reference"])
def backend(request):
    """Run a test once with the compiled kernels and once with the reference path."""
    if request.param == "native" and not _extension._LOADED:
        pytest.skip(f"native extension not built: {diffeig.load_error()}")
    with _extension.use_native(request.param == "native"):
        yield request.param


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def random_hermitian(*shape, dtype=torch.float64, device="cpu", generator=None):
    A = torch.randn(*shape, dtype=dtype, device=device, generator=generator)
    return 0.5 * (A + A.mH)


def with_spectrum(eigenvalues, dtype=torch.float64, seed=0):
    """``Q diag(l) Q^T`` for a random orthogonal (unitary) Q."""
    g = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=dtype, generator=g))
    lam = torch.tensor(eigenvalues, dtype=Q.real.dtype).to(dtype)
    return (Q * lam) @ Q.mH


def sym_directional_fd(f, A, E, h=1e-6):
    """Central difference of f along the Hermitian direction E."""
    return (f(A + h * E) - f(A - h * E)) / (2 * h)


@pytest.fixture
def quokka_ecssd(tmp_path):
    """The quokka photo and its mask laid out as the ECSSD dataset."""
    data = Path(__file__).parent / "data"
    root = tmp_path / "ECSSD"
    (root / "images").mkdir(parents=True)
    (root / "ground_truth_mask").mkdir()
    shutil.copy(data / "quokka.jpg", root / "images/quokka.jpg")
    shutil.copy(data / "quokka_mask.png", root / "ground_truth_mask/quokka.png")
    return root
