"""LARS as the DNCut authors train with it.

Their ``util/LARS.py`` wraps ``torch.optim.SGD(momentum=0.9)`` with ``eps = 0`` and
adapts the gradient of every parameter whose name contains neither ``bias`` nor ``bn``:

    g <- g + wd * w
    g <- tc * |w| / (|g| + eps) * g        (only when |w| > 0 and |g| > 0)

then takes a plain momentum step (``buf <- mu buf + g``, ``w <- w - lr buf``). The others
(biases, modules named ``bn``) take the momentum step on their raw gradient, without weight
decay. timm's ``Lars`` differs in two places that change the first step of training: its
trust ratio is ``tc |w| / (|g| + wd |w|)`` (the norm of the sum against the sum of the
norms: up to 3 % apart), and it adapts only groups with weight decay, while the authors'
grouping also decays and adapts LayerNorm and BatchNorm weights whose names lack ``bn``
(all of a timm ViT's and of the heads' ``Sequential`` BatchNorm). ``tests/test_fidelity.py``
checks one step against the authors' optimizer (a fixture made from their code).
"""

from __future__ import annotations

import torch

__all__ = ["LARS", "authors_param_groups"]


def authors_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The authors' grouping: a trainable parameter whose name contains ``bias`` or ``bn``
    gets neither weight decay nor LARS adaptation; every other one gets both."""
    adapted, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if "bn" in name or "bias" in name else adapted).append(p)
    return [
        {"params": adapted, "weight_decay": weight_decay, "adapt": True},
        {"params": plain, "weight_decay": 0.0, "adapt": False},
    ]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and the authors' layer-wise adaptation (see the module).

    Args:
        params: parameters or groups; a group's ``adapt`` (default True) turns the
            adaptation on, its ``weight_decay`` is added to the gradient first.
        lr, momentum, weight_decay: as ``torch.optim.SGD`` (no dampening, no Nesterov).
        trust_coeff: ``tc`` (the authors': 0.001).
        eps: added to ``|g|`` in the ratio (the authors': 0).
    """

    def __init__(self, params, lr=0.0, momentum=0.9, weight_decay=0.0, trust_coeff=1e-3, eps=0.0):
        for name, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay),
                        ("trust_coeff", trust_coeff), ("eps", eps)):  # fmt: skip
            if not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coeff=trust_coeff,
            eps=eps,
            adapt=True,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, mu, lr = group["weight_decay"], group["momentum"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd > 0:
                    g = g.add(p, alpha=wd)
                if group["adapt"]:
                    w_norm, g_norm = p.norm(), g.norm()
                    ratio = group["trust_coeff"] * w_norm / (g_norm + group["eps"])
                    g = g * torch.where((w_norm > 0) & (g_norm > 0), ratio, 1.0)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = g.clone()
                else:
                    buf.mul_(mu).add_(g)
                p.add_(buf, alpha=-lr)
        return loss
