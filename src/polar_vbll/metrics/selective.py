"""Selective prediction: answer only the most confident examples; risk = error rate among those answered."""

from __future__ import annotations

import numpy as np

from .calibration import ArrayLike, check_probs


def risk_coverage(probs: ArrayLike, labels: ArrayLike, confidence: np.ndarray | None = None):
    """(coverage (N,), risk (N,)): answering the k most confident examples, k = 1..N (ties kept in data order)."""
    p, y = check_probs(probs, labels)
    score = p.max(1) if confidence is None else np.asarray(confidence, dtype=np.float64)
    order = np.argsort(-score, kind="stable")
    errors = (p.argmax(1) != y)[order].astype(np.float64)
    answered = np.arange(1, len(y) + 1)
    return answered / len(y), np.cumsum(errors) / answered


def selective_metrics(probs: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """``sel/aurc`` (area under the risk-coverage curve, mean risk over k = 1..N) and accuracy at 80 / 90 % coverage."""
    coverage, risk = risk_coverage(probs, labels)
    out = {"sel/aurc": float(risk.mean())}
    for level in (80, 90):
        k = max(1, int(np.ceil(level / 100 * len(risk))))
        out[f"sel/acc@{level}"] = float(1 - risk[k - 1])
    return out
