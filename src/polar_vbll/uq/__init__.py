"""Uncertainty methods behind one contract (:class:`UQHead`): VBLL, MAP, MLE, MC dropout, deep ensembles,
BLoB, ScalaBL, Laplace-LoRA, TFB, temperature scaling."""

from . import blob, ensemble, laplace, mc_dropout, point, scalabl, temperature, tfb, vbll  # noqa: F401  (registers)
from .base import UQ_METHODS, TrainingStep, UQHead, UQMethod, uncertainty_decomposition
from .blob import BlobHead, flipout_noise, kl_to_prior
from .ensemble import EnsembleHead
from .laplace import LaplaceHead
from .mc_dropout import MCDropoutHead
from .point import PointHead
from .scalabl import ScalaBLConfig, ScalaBLHead
from .temperature import fit_temperature
from .tfb import TFBConfig, TFBHead
from .vbll import VBLLConfig, VBLLGuide, VBLLHead, VBLLModel, VBLLOutput

__all__ = [
    "BlobHead",
    "EnsembleHead",
    "LaplaceHead",
    "MCDropoutHead",
    "PointHead",
    "ScalaBLConfig",
    "ScalaBLHead",
    "TFBConfig",
    "TFBHead",
    "TrainingStep",
    "UQHead",
    "UQMethod",
    "UQ_METHODS",
    "VBLLConfig",
    "VBLLGuide",
    "VBLLHead",
    "VBLLModel",
    "VBLLOutput",
    "fit_temperature",
    "flipout_noise",
    "kl_to_prior",
    "uncertainty_decomposition",
]
