"""Metrics with namespaced keys: ``cls/`` (classification), ``cal/`` (calibration)."""

from .calibration import accuracy, brier, check_probs, classification_metrics, ece, nll

__all__ = ["accuracy", "brier", "check_probs", "classification_metrics", "ece", "nll"]
