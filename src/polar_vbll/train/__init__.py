"""Training: ``FitConfig``, ``fit`` (alternating PoLAR / head optimization, resumable), run reloading."""

from .config import FitConfig
from .predictions import Predictions, predict_run
from .run import evaluate_run, load_run, refine
from .trainer import FitResult, fit

__all__ = ["FitConfig", "FitResult", "Predictions", "evaluate_run", "fit", "load_run", "predict_run", "refine"]
