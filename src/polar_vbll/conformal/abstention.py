"""Selective prediction with a risk bound (Learn then Test, Angelopoulos et al. 2021): answer a question only when its
confidence max_y p(y | x) reaches a threshold λ, chosen so that, with probability ≥ 1 − δ over the calibration
examples,

    R(λ) = P(wrong | answered at λ) ≤ α.

On n held-out examples, each λ of a fixed grid (never chosen from the data) is a hypothesis H_λ: R(λ) > α, with the
Hoeffding–Bentkus p-value of its empirical risk over the n(λ) examples it answers (the risk's binary loss); a
family-wise error control at δ rejects some of them, and the smallest λ rejected (the most questions answered) is
kept. The grid is geometric in 1 − λ (from 1e-7 to 1, 201 points), so that it resolves the confidences of an
over-confident model as finely as a calibrated one's: a fine-tuned model's answers crowd within 0.01 of 1, where a
grid even in λ has two points, and the same ranking of questions (a temperature changes no ranking) would certify
very different shares. The default control is fixed-sequence testing from the highest λ down, with 20 starts (every
10 points) at δ/20 each (a start whose λ answers too few questions to certify anything does not end the search);
Bonferroni–Holm over all of them is the other choice. When none is, no threshold is certified and every question
is abstained on. The starts keep one limit: each is tested at δ/20, and where the useful thresholds' p-values lie
near it (256 calibration examples at an error near α, measured on SST-2), whether a start lands below it decides
between certifying most questions and none, so a temperature can still flip the result
(``benchmarks/abstention_sensitivity.py``).
MAPIE (``mapie.risk_control``) computes the p-values and the family-wise control.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import PolarVBLLError

GRID = tuple((1.0 - np.geomspace(1e-7, 1.0, 201)).tolist())  # the candidate thresholds λ, safest first
FWER_STARTS = 20  # fixed-sequence testing's starts: one every 10 points of the grid


@dataclass(frozen=True)
class Abstention:
    """Answer where confidence ≥ ``threshold`` (inf: no threshold holds the bound; abstain everywhere), certified
    for error ≤ ``alpha`` among answered with probability ≥ 1 − ``delta``; on its calibration examples it answered
    ``calibration_coverage`` of them with error ``calibration_risk``."""

    alpha: float
    delta: float
    threshold: float
    n_calibration: int
    calibration_coverage: float
    calibration_risk: float
    fwer: str = "fixed_sequence"

    def answers(self, probs: np.ndarray) -> np.ndarray:
        """(N,) bool: which questions to answer (the others are abstained on)."""
        return np.asarray(probs).max(1) >= self.threshold

    def to_dict(self) -> dict:
        """As JSON: an infinite threshold (abstain everywhere) is null."""
        return {**asdict(self), "threshold": self.threshold if math.isfinite(self.threshold) else None}

    @classmethod
    def from_dict(cls, data: dict) -> Abstention:
        values = {key: data[key] for key in cls.__dataclass_fields__}
        return cls(**{**values, "threshold": math.inf if values["threshold"] is None else float(values["threshold"])})


def selective_risk(probs: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """(coverage: the share of questions answered at ``threshold``, risk: the error rate among them; 0 if none)."""
    answered = np.asarray(probs).max(1) >= threshold
    if not answered.any():
        return 0.0, 0.0
    wrong = np.asarray(probs).argmax(1) != np.asarray(labels)
    return float(answered.mean()), float(wrong[answered].mean())


def grid_p_values(probs: np.ndarray, labels: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(the thresholds λ of :data:`GRID`, (len(GRID),), their Hoeffding–Bentkus p-values for H_λ: R(λ) > ``alpha``
    on ``probs`` (n, C) with right answers ``labels`` (n,)); a threshold that answers nothing gets p = 1."""
    from mapie.risk_control.methods import compute_hoeffding_bentkus_p_value

    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    confidence, wrong = probs.max(1), probs.argmax(1) != labels
    grid = np.array(GRID)
    answered = confidence[None, :] >= grid[:, None]  # (λ, n)
    n_obs = answered.sum(1)
    risk = np.where(n_obs > 0, (answered & wrong[None, :]).sum(1) / np.maximum(n_obs, 1), 1.0)
    p_values = compute_hoeffding_bentkus_p_value(risk, np.maximum(n_obs, 1).astype(float), alpha, binary=True)[:, 0]
    return grid, np.where(n_obs > 0, p_values, 1.0)  # a threshold that answers nothing certifies nothing


def calibrate_abstention(
    probs: np.ndarray, labels: np.ndarray, alpha: float, delta: float = 0.1, fwer: str = "fixed_sequence"
) -> Abstention:
    """The smallest confidence threshold of :data:`GRID` that Learn then Test certifies on held-out ``probs`` (n, C)
    and ``labels`` (n,) for error ≤ ``alpha`` among answered, with probability ≥ 1 − ``delta``."""
    from mapie.risk_control import FWERFixedSequenceTesting, control_fwer

    for name, value in (("alpha", alpha), ("delta", delta)):
        if not 0 < value < 1:
            raise PolarVBLLError(f"{name}: must be in (0, 1), got {value}")
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if len(labels) == 0:
        raise PolarVBLLError("abstention: no calibration examples")
    if fwer not in ("fixed_sequence", "bonferroni_holm"):
        raise PolarVBLLError(f"fwer: fixed_sequence or bonferroni_holm, got {fwer!r}")
    grid, p_values = grid_p_values(probs, labels, alpha)
    procedure = FWERFixedSequenceTesting(n_starts=FWER_STARTS) if fwer == "fixed_sequence" else fwer
    valid = np.asarray(control_fwer(p_values, delta, fwer_method=procedure), dtype=int)
    threshold = float(grid[valid].min()) if len(valid) else math.inf
    coverage, error = selective_risk(probs, labels, threshold)
    return Abstention(alpha, delta, threshold, len(labels), coverage, error, fwer)
