"""What ``fit`` (and ``load_run``) hand back: the run folder, its report and the trained pieces in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import FitConfig
from ..data import TaskSpec
from ..errors import PolarVBLLError
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
    #: a multi-task run's tasks, each a single-task result over the same backbone (``head``, ``task``: the first's)
    tasks: dict[str, FitResult] = field(default_factory=dict)

    def predict(self, questions: list[dict] | None = None, **options) -> Predictions:
        """Predictions with uncertainty on new ``questions`` or a task split: see :func:`predict_with`. A multi-task
        run answers with the head of ``task`` (one of its tasks, required)."""
        if self.tasks:
            return self.task_result(options.pop("task", None)).predict(questions, **options)
        return predict_with(self, questions, **options)

    def task_result(self, task: str | None) -> FitResult:
        """The single-task result of ``task``, one of a multi-task run's tasks (a one-line error otherwise)."""
        if task not in self.tasks:
            given = "no task" if task is None else f"task {task!r}"
            raise PolarVBLLError(f"{self.out}: a multi-task run of {', '.join(self.tasks)}; {given} given, name one")
        return self.tasks[task]
