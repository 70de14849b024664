"""Training: ``FitConfig``, ``fit`` (alternating PoLAR / head optimization, resumable), run reloading."""

from .config import FitConfig
from .run import evaluate_run, load_run, refine
from .trainer import FitResult, fit

__all__ = ["FitConfig", "FitResult", "evaluate_run", "fit", "load_run", "refine"]
