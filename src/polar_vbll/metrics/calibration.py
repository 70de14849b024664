"""Classification and calibration metrics on predicted probabilities.

Inputs are probabilities (N, C), or samples (N, S, C) that are averaged into the predictive first, and integer
labels (N,). Keys are namespaced: ``cls/acc``, ``cls/nll``, ``cls/brier``, ``cal/ece``, ``cal/mce``, ``cal/aece``,
``cal/cw_ece``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import PolarVBLLError

ArrayLike = np.ndarray | torch.Tensor


def check_probs(probs: ArrayLike, labels: ArrayLike, atol: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return ``(probs (N, C) float64, labels (N,) int64)``; (N, S, C) is averaged over S."""
    p = (
        probs.detach().cpu().double().numpy()
        if isinstance(probs, torch.Tensor)
        else np.asarray(probs, dtype=np.float64)
    )
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if p.ndim == 3:
        p = p.mean(axis=1)
    if p.ndim != 2:
        raise PolarVBLLError(f"probs: expected shape (N, C) or (N, S, C), got {tuple(p.shape)}")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise PolarVBLLError(f"labels: expected shape ({p.shape[0]},), got {tuple(y.shape)}")
    if p.shape[0] == 0:
        raise PolarVBLLError("probs: empty (no examples)")
    if not np.isfinite(p).all():
        raise PolarVBLLError(f"probs: {int((~np.isfinite(p)).sum())} NaN or infinite values")
    if (p < 0).any() or (p > 1 + atol).any():
        raise PolarVBLLError("probs: values outside [0, 1]")
    sums = p.sum(axis=1)
    if np.abs(sums - 1).max() > atol:
        bad = int(np.abs(sums - 1).argmax())
        raise PolarVBLLError(f"probs: row {bad} sums to {sums[bad]:.6f}, not 1 (pass probabilities, not logits)")
    if not np.issubdtype(y.dtype, np.integer):
        raise PolarVBLLError(f"labels: expected integers, got {y.dtype}")
    if (y < 0).any() or (y >= p.shape[1]).any():
        raise PolarVBLLError(f"labels: values must lie in [0, {p.shape[1] - 1}], got min {y.min()} max {y.max()}")
    return p, y.astype(np.int64)


def accuracy(probs: ArrayLike, labels: ArrayLike) -> float:
    p, y = check_probs(probs, labels)
    return float((p.argmax(1) == y).mean())


def nll(probs: ArrayLike, labels: ArrayLike, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the labels (nats); probabilities are floored at ``eps``."""
    p, y = check_probs(probs, labels)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], eps, None)).mean())


def brier(probs: ArrayLike, labels: ArrayLike) -> float:
    """Multi-class Brier score: mean over examples of Σ_c (p_c − 1[y = c])², in [0, 2]."""
    p, y = check_probs(probs, labels)
    onehot = np.eye(p.shape[1])[y]
    return float(((p - onehot) ** 2).sum(1).mean())


def _bin_gaps(confidence: np.ndarray, correct: np.ndarray, bins: np.ndarray, n_bins: int):
    """Per-bin counts and |Σ correct − Σ confidence| (the unnormalized calibration gap)."""
    counts = np.bincount(bins, minlength=n_bins)
    gap = np.abs(
        np.bincount(bins, weights=correct, minlength=n_bins) - np.bincount(bins, weights=confidence, minlength=n_bins)
    )
    return counts, gap


def _equal_width_bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    if n_bins < 1:
        raise PolarVBLLError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin b holds confidences in (edges[b], edges[b+1]]; 0 falls into the first bin
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)


def _top_label(probs: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, y = check_probs(probs, labels)
    return p.max(1), (p.argmax(1) == y).astype(np.float64)


def ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error of the top-1 confidence, ``n_bins`` equal-width bins (lo, hi], L1, in [0, 1].

    ECE = Σ_b (n_b / N) |acc_b − conf_b|.
    """
    confidence, correct = _top_label(probs, labels)
    counts, gap = _bin_gaps(confidence, correct, _equal_width_bins(confidence, n_bins), n_bins)
    return float(gap.sum() / counts.sum())


def mce(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Maximum calibration error: max over non-empty equal-width bins of |acc_b − conf_b|."""
    confidence, correct = _top_label(probs, labels)
    counts, gap = _bin_gaps(confidence, correct, _equal_width_bins(confidence, n_bins), n_bins)
    return float((gap[counts > 0] / counts[counts > 0]).max())


def adaptive_ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """ECE over equal-mass bins: examples sorted by confidence, split into ``n_bins`` groups of (nearly) equal size."""
    if n_bins < 1:
        raise PolarVBLLError(f"n_bins must be >= 1, got {n_bins}")
    confidence, correct = _top_label(probs, labels)
    order = np.argsort(confidence, kind="stable")
    bins = np.empty(len(order), dtype=np.int64)
    for b, chunk in enumerate(np.array_split(order, min(n_bins, len(order)))):
        bins[chunk] = b
    counts, gap = _bin_gaps(confidence, correct, bins, n_bins)
    return float(gap.sum() / counts.sum())


def classwise_ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Class-wise ECE: the mean over classes c of the ECE of p_c against the event y = c (equal-width bins)."""
    p, y = check_probs(probs, labels)
    total = 0.0
    for c in range(p.shape[1]):
        confidence, hit = p[:, c], (y == c).astype(np.float64)
        counts, gap = _bin_gaps(confidence, hit, _equal_width_bins(confidence, n_bins), n_bins)
        total += gap.sum() / counts.sum()
    return float(total / p.shape[1])


def classification_metrics(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> dict[str, float]:
    """``cls/acc``, ``cal/ece``, ``cls/nll``, ``cls/brier``, ``cal/mce``, ``cal/aece``, ``cal/cw_ece``."""
    p, y = check_probs(probs, labels)
    return {
        "cls/acc": accuracy(p, y),
        "cal/ece": ece(p, y, n_bins),
        "cls/nll": nll(p, y),
        "cls/brier": brier(p, y),
        "cal/mce": mce(p, y, n_bins),
        "cal/aece": adaptive_ece(p, y, n_bins),
        "cal/cw_ece": classwise_ece(p, y, n_bins),
    }
