"""Uncertainty methods behind one contract (:class:`UQHead`): VBLL, MAP, MLE."""

from . import point, vbll  # noqa: F401  (registers the methods)
from .base import UQ_METHODS, UQHead, UQMethod, uncertainty_decomposition
from .point import PointHead
from .vbll import VBLLConfig, VBLLGuide, VBLLHead, VBLLModel, VBLLOutput

__all__ = [
    "PointHead",
    "UQHead",
    "UQMethod",
    "UQ_METHODS",
    "VBLLConfig",
    "VBLLGuide",
    "VBLLHead",
    "VBLLModel",
    "VBLLOutput",
    "uncertainty_decomposition",
]
