"""Which examples and which learning rate each step gets, and which phase (head, adapter or joint) it is in.

Every quantity is a pure function of the step, so a resumed run recomputes exactly what an uninterrupted one used.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable

import torch

from ..config import FitConfig


def warmup_linear(total_steps: int, warmup_ratio: float, restarts: Iterable[int] = ()) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup_ratio`` of the steps, then linear decay to 0.

    ``restarts`` cut the steps into cycles [0, r₁), [r₁, r₂), ..., [r_k, total): each cycle warms up over
    ``warmup_ratio`` of its own length and decays to 0 at its end (an extended run starts a new cycle).
    """
    bounds = [0, *restarts, total_steps]

    def factor(step: int) -> float:
        cycle = max(i for i in range(len(bounds) - 1) if bounds[i] <= step) if step >= 0 else 0
        start, end = bounds[cycle], bounds[cycle + 1]
        length, local = end - start, step - start
        warmup = int(math.ceil(length * warmup_ratio))
        if local < warmup:
            return (local + 1) / warmup
        return max(0.0, (length - local) / max(1, length - warmup))

    return factor


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Indices of the examples of ``step``: epochs of seeded permutations, so any step can be recomputed."""
    return [
        _epoch_order(n, seed, position // n)[position % n]
        for position in range(step * batch_size, (step + 1) * batch_size)
    ]


def phase_of(step: int, config: FitConfig) -> str:
    if not config.alternate:
        return "joint"
    cycle = config.head_steps + config.adapter_steps
    return "head" if step % cycle < config.head_steps else "adapter"
