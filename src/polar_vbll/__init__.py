"""polar-vbll: fine-tune language models that know when they don't know.

PoLAR adapters feed a variational Bayesian last layer; calibration and OOD metrics judge the result.
"""

from .data import get_task, list_tasks
from .engine import (
    FitConfig,
    FitResult,
    Predictions,
    conformalize_run,
    evaluate_run,
    export_run,
    fit,
    load_exported,
    load_run,
    predict_run,
    refine,
)
from .errors import PolarVBLLError
from .evaluation import EvalResult, evaluate
from .models import load_backbone, prepare_embedded

__all__ = [
    "EvalResult",
    "FitConfig",
    "FitResult",
    "PolarVBLLError",
    "Predictions",
    "conformalize_run",
    "evaluate",
    "evaluate_run",
    "export_run",
    "fit",
    "get_task",
    "list_tasks",
    "load_backbone",
    "load_exported",
    "load_run",
    "predict_run",
    "prepare_embedded",
    "refine",
]
