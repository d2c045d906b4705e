"""diffeig.eigh / eigvalsh driven through PyTorch's own OpInfo entries for
torch.linalg.eigh / eigvalsh: their sample inputs, gradcheck wrapper and output processing.

Forward against torch, gradcheck, gradgradcheck and forward-mode AD, for every sample and
dtype torch's OpInfo declares, skipping only samples where torch itself fails the same
check: any drift from the drop-in promise fails here."""

from __future__ import annotations

import pytest
import torch

import diffeig

pytest.importorskip("expecttest")  # torch.testing._internal needs it

from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402

OPS = {o.name: o for o in op_db if o.name in ("linalg.eigh", "linalg.eigvalsh")}
OURS = {"linalg.eigh": diffeig.eigh, "linalg.eigvalsh": diffeig.eigvalsh}
DTYPES = [torch.float64, torch.complex128]
CHECKS = ["forward", "gradcheck", "gradgradcheck", "forward_ad"]


def samples(name, dtype):
    return list(OPS[name].sample_inputs("cpu", dtype, requires_grad=True))


def as_function(op, fn, sample):
    """The callable gradcheck sees: OpInfo's wrapper (Hermitian input from the raw one)
    and its output processing (|V|: a sign / phase-invariant view of the eigenvectors)."""
    post = sample.output_process_fn_grad

    def f(x):
        return post(op.gradcheck_wrapper(fn, x, *sample.args, **sample.kwargs))

    return f


def run_check(check, f, x):
    if check == "gradcheck":
        return torch.autograd.gradcheck(f, (x,), check_batched_grad=True)
    if check == "gradgradcheck":
        return torch.autograd.gradgradcheck(f, (x,), check_batched_grad=True)
    return torch.autograd.gradcheck(
        f, (x,), check_forward_ad=True, check_backward_ad=False, check_batched_grad=False
    )


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("check", CHECKS)
def test_opinfo_samples(name, dtype, check):
    op = OPS[name]
    if dtype not in op.supported_dtypes("cpu"):
        pytest.skip(f"torch's OpInfo does not list {dtype}")
    ran = 0
    for sample in samples(name, dtype):
        x = sample.input
        ours = as_function(op, OURS[name], sample)
        theirs = as_function(op, op.op, sample)
        if check == "forward":
            expected = theirs(x.detach())
            got = ours(x.detach())
            for e, g in zip(*(t if isinstance(t, tuple) else (t,) for t in (expected, got))):
                torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)
            ran += 1
            continue
        try:
            run_check(check, theirs, x)
        except Exception:  # noqa: BLE001  (torch fails this sample itself: skip it)
            continue
        assert run_check(check, ours, x), (tuple(x.shape), sample.kwargs)
        ran += 1
    assert ran > 0
