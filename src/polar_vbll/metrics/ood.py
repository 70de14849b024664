"""Out-of-distribution detection: scoring criteria and detection metrics over a mixed ID + OOD set.

Every criterion maps logit samples (B, S, C) to an *in-distribution score* (higher = more in-distribution);
uncertainty measures enter negated. Detection metrics treat ID examples as positives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ..errors import PolarVBLLError
from ..registry import Registry


@dataclass(frozen=True)
class Criterion:
    description: str
    score: Callable[[torch.Tensor], torch.Tensor]  # logit samples (B, S, C) -> ID score (B,)
    needs_samples: bool = False  # meaningful only for methods with random logits


def _probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, -1)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def _finite(logits: torch.Tensor) -> torch.Tensor:
    """Masked (−inf) classes contribute nothing to sums over logits."""
    return torch.where(torch.isfinite(logits), logits, torch.zeros_like(logits))


CRITERIA: Registry[Criterion] = Registry("OOD criterion")
CRITERIA.register(
    "msp", Criterion("max softmax probability of the predictive", lambda z: _probs(z).mean(1).max(-1).values)
)
CRITERIA.register("entropy", Criterion("− entropy of the predictive", lambda z: -_entropy(_probs(z).mean(1))))
CRITERIA.register("max_logit", Criterion("max of the mean logits", lambda z: z.mean(1).max(-1).values))
CRITERIA.register(
    "energy", Criterion("− energy: logsumexp of the mean logits", lambda z: torch.logsumexp(z.mean(1), -1))
)
CRITERIA.register(
    "mutual_info",
    Criterion(
        "− mutual information between label and weights (epistemic)",
        lambda z: -(_entropy(_probs(z).mean(1)) - _entropy(_probs(z)).mean(1)).clamp_min(0.0),
        needs_samples=True,
    ),
)
CRITERIA.register(
    "pred_variance",
    Criterion(
        "− predictive variance of the probabilities, summed over classes",
        lambda z: -_finite(_probs(z)).var(1, unbiased=False).sum(-1),
        needs_samples=True,
    ),
)


def criterion_scores(logit_samples: torch.Tensor, stochastic: bool) -> dict[str, np.ndarray]:
    """ID scores of every criterion the method supports (sample-based ones only for stochastic heads)."""
    return {
        name: CRITERIA.get(name).score(logit_samples).double().cpu().numpy()
        for name in CRITERIA
        if stochastic or not CRITERIA.get(name).needs_samples
    }


def _check(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    id_scores, ood_scores = np.asarray(id_scores, dtype=np.float64), np.asarray(ood_scores, dtype=np.float64)
    if id_scores.size == 0 or ood_scores.size == 0:
        raise PolarVBLLError(
            f"OOD metrics need both ID and OOD examples, got {id_scores.size} ID and {ood_scores.size} OOD"
        )
    if not (np.isfinite(id_scores).all() and np.isfinite(ood_scores).all()):
        raise PolarVBLLError("OOD scores contain NaN or infinite values")
    return id_scores, ood_scores


def ood_metrics(id_scores, ood_scores) -> dict[str, float]:
    """``ood/auroc``, ``ood/aupr_in`` (ID positive), ``ood/aupr_out`` (OOD positive), ``ood/fpr95`` (fraction of
    OOD examples scored at least as ID-like as the threshold that keeps 95 % of ID examples)."""
    id_scores, ood_scores = _check(id_scores, ood_scores)
    scores = np.concatenate([id_scores, ood_scores])
    is_id = np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood_scores))])
    fpr, tpr, _ = roc_curve(is_id, scores)
    return {
        "ood/auroc": float(roc_auc_score(is_id, scores)),
        "ood/aupr_in": float(average_precision_score(is_id, scores)),
        "ood/aupr_out": float(average_precision_score(1 - is_id, -scores)),
        "ood/fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
    }
