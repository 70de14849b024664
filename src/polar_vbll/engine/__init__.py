"""The engine: build a run from its config, train it (``fit``), predict with it, reload, refine and transfer it.

Stages, each a module that needs no other's private names: ``build`` (components through the registries),
``schedule``, ``step`` and ``loop`` (the steps), ``inference`` (the one prediction path), ``finish`` (post-hoc
steps, saving, the report), ``checkpoint``/``state`` (resumable state), ``runs`` (reload, refine, predict),
``transfer`` (another task, OOD detection) and ``decisions`` (conformal sets and abstention). The engine names no
adapter and no uncertainty method: it asks the registries.
"""

from ..config import FitConfig
from .decisions import conformalize_run
from .export import export_run, load_exported
from .loop import fit
from .predictions import Predictions
from .result import FitResult
from .runs import load_run, predict_run, refine
from .transfer import evaluate_run

__all__ = [
    "FitConfig",
    "FitResult",
    "Predictions",
    "conformalize_run",
    "evaluate_run",
    "export_run",
    "fit",
    "load_exported",
    "load_run",
    "predict_run",
    "refine",
]
