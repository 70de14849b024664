"""What ``fit`` (and ``load_run``) hand back: the run folder, its report and the trained pieces in memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import FitConfig
from ..data import TaskSpec
from ..models import Backbone
from ..uq import UQHead
from .predictions import Predictions, predict_with


@dataclass
class FitResult:
    """What ``fit`` leaves behind: the run folder, the final report and the trained pieces (in memory)."""

    out: Path
    report: dict
    config: FitConfig
    backbone: Backbone
    head: UQHead
    task: TaskSpec
    #: the report's evaluation (``fit`` and ``refine``; None from ``load_run``): "probs" (N, C), "labels" (N,),
    #: "scores" (OOD criteria), "metrics", in the order of the evaluated examples
    evaluation: dict | None = None

    def predict(self, questions: list[dict] | None = None, **options) -> Predictions:
        """Predictions with uncertainty on new ``questions`` or a task split: see :func:`predict_with`."""
        return predict_with(self, questions, **options)
