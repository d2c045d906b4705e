"""Exact rescaling by powers of two: inputs far from unit scale are solved at it and the
results scaled back exactly (floor 0: it imports torch only)."""

from __future__ import annotations

import math

import torch

__all__ = ["UNIT_RANGE", "scale2", "unit_scale"]


# Inputs whose largest magnitude lies outside [2^-UNIT_RANGE, 2^UNIT_RANGE] are scaled by
# a power of two into it before solving (and the results scaled back, exactly): far from
# 1, eigen-gaps underflow to subnormals, degrees^-3/2 and squared residuals overflow, and
# the gradients came back 86 % wrong or NaN at 1e+-250 (float64) and 1e+-30 (float32).
# Inside it, nothing is rescaled, so ordinary inputs give bit-identical results.
UNIT_RANGE = 20


# Largest power of two applied in one multiplication by :func:`scale2` (2^64 and 2^-64
# are normal numbers of every float dtype diffeig takes).
_STEP = 64


def unit_scale(magnitude: float | None, *, power: int = 2) -> int:
    """The exponent ``e`` such that ``2^e``, a power of ``power`` (2, or 4 where its square
    root must be exact too), is nearest to ``magnitude`` when that lies outside
    ``[2^-UNIT_RANGE, 2^UNIT_RANGE]``, else 0 (also for ``None``, unreadable values, and
    0). Scale by :func:`scale2`: ``2^e`` itself may not be a float (``1e-310`` gives
    ``e = -1030``)."""
    if magnitude is None or not math.isfinite(magnitude) or magnitude <= 0:
        return 0
    if 2.0**-UNIT_RANGE <= magnitude <= 2.0**UNIT_RANGE:
        return 0
    step = 2 if power == 4 else 1
    mantissa, exponent = math.frexp(magnitude)  # magnitude = mantissa 2^exponent, exactly
    log2 = exponent + math.log2(mantissa)
    return step * round(log2 / step)


def scale2(x, e: int):
    """``x * 2^e`` exactly (barring underflow of the result) for a tensor or a float,
    in steps that never overflow the factor; a float result past the range is inf."""
    if isinstance(x, torch.Tensor):
        while e:
            step = max(-_STEP, min(_STEP, e))
            x, e = x * 2.0**step, e - step
        return x
    try:
        return math.ldexp(x, e)
    except OverflowError:
        return math.copysign(math.inf, x)
