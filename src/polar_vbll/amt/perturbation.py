"""AMT's weight perturbation: the adapter's singular values and vectors pushed, each tensor by a fixed share of its
own norm, in the direction that raises the adversarial loss (an adversarial weight perturbation, AWP, on the
adapter alone).

A pool member starts as PiSSA does, A = √S_r V_rᵀ, B = U_r √S_r, so its factors hold the top singular values and
vectors of the base weight. For every factor w with gradient g of the adversarial objective (clean cross-entropy
plus β · KL(attacked ‖ clean)),

    δ_w = γ · ‖w‖ / ‖g‖ · g,     so that ‖δ_w‖ = γ ‖w‖ exactly,

and the training step's gradient is taken at w + δ_w, then the weights go back to w before the optimizer steps (the
official code's single proxy ascent step normalizes the same way, so its step size cancels).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch


def relative_perturbation(weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None], gamma: float):
    """δ of each weight: γ ‖w‖ along its gradient (zero where the gradient is missing or zero)."""
    deltas = []
    for weight, grad in zip(weights, grads, strict=True):
        if grad is None or not float(grad.norm()) > 0:
            deltas.append(torch.zeros_like(weight))
        else:
            deltas.append(gamma * weight.detach().norm() / grad.norm() * grad.detach())
    return deltas


@contextmanager
def perturbed(weights: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor]) -> Iterator[None]:
    """Within the block each weight is w + δ; afterwards exactly w again (restored from a copy, not subtracted)."""
    saved = [weight.detach().clone() for weight in weights]
    with torch.no_grad():
        for weight, delta in zip(weights, deltas, strict=True):
            weight.add_(delta)
    try:
        yield
    finally:
        with torch.no_grad():
            for weight, copy in zip(weights, saved, strict=True):
                weight.copy_(copy)
