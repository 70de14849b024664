"""Paired bootstrap intervals of metric differences between two methods scored on the same examples."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import PolarVBLLError

Metric = Callable[[np.ndarray, np.ndarray], float]


def paired_bootstrap(
    metric: Metric,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    labels: np.ndarray,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """``metric(a) − metric(b)`` on the examples and its percentile interval over ``n_resamples`` resamples of the
    examples (the same indices for both methods: the pairing removes the examples' shared difficulty).

    Returns ``{"diff", "low", "high"}``; an interval that excludes 0 says the difference is not resampling noise.
    """
    probs_a, probs_b, labels = np.asarray(probs_a), np.asarray(probs_b), np.asarray(labels)
    if probs_a.shape != probs_b.shape or len(labels) != len(probs_a):
        raise PolarVBLLError(
            f"paired_bootstrap: shapes differ ({probs_a.shape}, {probs_b.shape}, {len(labels)} labels)"
        )
    if not 0 < confidence < 1:
        raise PolarVBLLError(f"paired_bootstrap: confidence must lie in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    n = len(labels)
    diffs = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, n, n)
        diffs[i] = metric(probs_a[idx], labels[idx]) - metric(probs_b[idx], labels[idx])
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return {"diff": metric(probs_a, labels) - metric(probs_b, labels), "low": float(low), "high": float(high)}
