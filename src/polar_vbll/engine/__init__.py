"""The engine: build a run from its config, train it (``fit``), predict with it, reload, refine and transfer it.

Stages, each a module that needs no other's private names: ``build`` (components through the registries),
``schedule`` and ``loop`` (the steps), ``inference`` (the one prediction path), ``finish`` (post-hoc steps, saving,
the report), ``checkpoint``/``state`` (resumable state), ``runs`` (reload, refine, predict) and ``transfer``
(another task, OOD detection). The engine names no adapter and no uncertainty method: it asks the registries.
"""

from ..config import FitConfig
from .loop import fit
from .predictions import Predictions
from .result import FitResult
from .runs import load_run, predict_run, refine
from .transfer import evaluate_run

__all__ = ["FitConfig", "FitResult", "Predictions", "evaluate_run", "fit", "load_run", "predict_run", "refine"]
