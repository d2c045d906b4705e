"""From an eigenvector to a cut: TokenCut's seed and the bipartition rules."""

from __future__ import annotations

import torch

from diffeig._checks import check_choice

__all__ = ["bipartition", "seed"]


def seed(z: torch.Tensor) -> torch.Tensor:
    """Index of the entry of largest magnitude (TokenCut's seed), ``(*, N) -> (*)``; of
    entries tied with it to rounding (``max(1e-9, 100 eps)`` relative), the first.

    TokenCut's ``np.argmax`` takes the first of the entries that are *bitwise* equal to the
    maximum; on binary graphs many are equal in exact arithmetic, and which of them come
    out bitwise equal depends on the eigensolver's rounding. Taking the first of the
    near-ties is the same choice whenever the first of them came out bitwise equal to the
    maximum there, and a choice that does not depend on the solver (dense or LOBPCG)."""
    a = z.abs()
    rtol = max(1e-9, 100 * torch.finfo(a.dtype).eps) if a.is_floating_point() else 0.0
    tied = a >= a.amax(-1, keepdim=True) * (1 - rtol)
    return tied.to(torch.uint8).argmax(-1)  # the first True


def bipartition(z: torch.Tensor, *, rule: str = "zero", foreground: str | None = None):
    """Split nodes in two by an eigenvector and say which side is foreground.

    Args:
        z: ``(*, N)`` eigenvector (the Fiedler vector ``z2``).
        rule: ``'zero'`` splits at ``z > 0``; ``'mean'`` at ``z > mean(z)`` (TokenCut).
        foreground: which side is foreground: ``'smaller'`` (the side with fewer nodes,
            the DNCut "Simple" post-processing; on a tie the ``z > threshold`` side) or
            ``'seed'`` (the side holding ``argmax |z|``, TokenCut). Default: ``'smaller'``
            for ``rule='zero'`` and ``'seed'`` for ``rule='mean'``.

    Returns:
        ``(*, N)`` boolean foreground mask.
    """
    check_choice("rule", rule, ("zero", "mean"))
    if foreground is None:
        foreground = "smaller" if rule == "zero" else "seed"
    check_choice("foreground", foreground, ("smaller", "seed"))
    thr = 0.0 if rule == "zero" else z.mean(-1, keepdim=True)
    above = z > thr
    if foreground == "smaller":
        n_above = above.sum(-1, keepdim=True)
        flip = 2 * n_above > z.shape[-1]
    else:
        flip = ~torch.gather(above, -1, seed(z).unsqueeze(-1))
    return above ^ flip
