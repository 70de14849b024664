"""Metrics with namespaced keys: ``cls/`` (classification), ``cal/`` (calibration), ``sel/`` (selective
prediction), ``ood/`` (out-of-distribution detection)."""

from .bootstrap import paired_bootstrap
from .calibration import (
    accuracy,
    adaptive_ece,
    brier,
    check_probs,
    classification_metrics,
    classwise_ece,
    ece,
    mce,
    nll,
)
from .ood import CRITERIA, criterion_scores, ood_metrics
from .selective import risk_coverage, selective_metrics

__all__ = [
    "CRITERIA",
    "accuracy",
    "adaptive_ece",
    "brier",
    "check_probs",
    "classification_metrics",
    "classwise_ece",
    "criterion_scores",
    "ece",
    "mce",
    "nll",
    "ood_metrics",
    "paired_bootstrap",
    "risk_coverage",
    "selective_metrics",
]
