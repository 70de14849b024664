"""Zero-shot (or trained-head) scoring of a task split, producing metrics and a report."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import TaskSpec, get_task
from .data.encoding import DEFAULT_MAX_LENGTH
from .distributed import current_ranks
from .engine.inference import predict, zero_shot_head
from .errors import PolarVBLLError
from .metrics import classification_metrics, selective_metrics
from .models import DEFAULT_MODEL, Backbone, load_backbone, resolve_model
from .outputs import OutputKind, prepare_output
from .report.schema import Report


@dataclass
class EvalResult:
    """Predictions and metrics of one task split. ``probs`` (N, C) and ``labels`` (N,) follow the data order."""

    task: str
    split: str
    model: dict
    prompt_version: str
    label_words: list[str]
    probs: np.ndarray
    labels: np.ndarray
    metrics: dict[str, float]
    settings: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.labels)

    def to_dict(self, command: str) -> dict:
        """The report (``report.json``) of this evaluation, ``command`` reproducing it."""
        return self.to_report(command).to_dict()

    def to_report(self, command: str) -> Report:
        return Report(
            task=self.task,
            split=self.split,
            n=self.n,
            model=self.model,
            metrics=self.metrics,
            prompt_version=self.prompt_version,
            label_words=self.label_words,
            settings=self.settings,
            timings=self.timings,
            command=command,
        )


def predict_probs(
    backbone: Backbone,
    task: TaskSpec,
    items,
    batch_size: int = 16,
    max_length: int = DEFAULT_MAX_LENGTH,
    padding_side: str = "right",
    progress: bool = True,
) -> tuple[np.ndarray, dict]:
    """Class probabilities (N, C) of ``items`` under the backbone's own LM-head rows of the task's label tokens: the
    zero-shot model as a point head, through the one prediction path (:func:`~polar_vbll.engine.inference.predict`);
    and the prompt statistics (``truncated``, ``mean_tokens``)."""
    out = predict(
        backbone,
        zero_shot_head(backbone, task),
        task,
        items,
        batch_size,
        max_length,
        n_samples=1,
        progress=progress,
        padding_side=padding_side,
        desc=f"{task.name} scoring",
    )
    return out["probs"], out["prompts"]


def evaluate(
    model: str | Backbone = DEFAULT_MODEL,
    task: str | TaskSpec = "sst2",
    split: str | None = None,
    *,
    batch_size: int = 16,
    max_length: int = DEFAULT_MAX_LENGTH,
    limit: int | None = None,
    template: str | None = None,
    n_bins: int = 15,
    out: str | Path | None = None,
    progress: bool = True,
    command: str | None = None,
    precision: str | None = None,
) -> EvalResult:
    """Score ``task``'s ``split`` (default: the task's evaluation split) zero-shot with ``model``.

    ``precision``: compute in ``fp32``, ``bf16`` or ``auto`` (default: fp32, or the given backbone's).

    ``limit`` keeps the first N examples. With ``out``, writes ``report.json`` and ``report.md`` there (the folder
    is checked before the model loads: new, empty, or an earlier evaluation's, whose files it replaces).
    """
    for name, value in (("batch_size", batch_size), ("max_length", max_length), ("n_bins", n_bins), ("limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise PolarVBLLError(f"{name}: must be an integer >= 1, got {value!r}")
    spec = task if isinstance(task, TaskSpec) else get_task(task, template)
    if isinstance(task, TaskSpec) and template:
        spec = spec.with_template(template)
    split = split or spec.eval_split
    items = spec.load(split)[: limit or None]
    if isinstance(model, str):
        resolve_model(model)  # a missing model folder fails before the output folder is touched
    main = current_ranks().main  # under a launcher: every process scores its share, the main one writes
    if out is not None and main:
        prepare_output(out, OutputKind.EVALUATION)
    start = time.perf_counter()
    backbone = model if isinstance(model, Backbone) else load_backbone(model)
    if precision is not None:
        backbone.set_precision(precision)
    loaded = time.perf_counter()
    probs, stats = predict_probs(backbone, spec, items, batch_size, max_length, progress=progress)
    scored = time.perf_counter()
    labels = np.array([item.answer for item in items], dtype=np.int64)
    result = EvalResult(
        task=spec.name,
        split=split,
        model=backbone.describe(),
        prompt_version=spec.template.id,
        label_words=spec.label_words(),
        probs=probs,
        labels=labels,
        metrics={**classification_metrics(probs, labels, n_bins), **selective_metrics(probs, labels)},
        settings={
            "batch_size": batch_size,
            "max_length": max_length,
            "limit": limit,
            "n_bins": n_bins,
            "precision": str(backbone.precision),
            **stats,
        },
        timings={"load_s": loaded - start, "score_s": scored - loaded},
    )
    if out is not None and main:
        if command is None:
            model_arg = model if isinstance(model, str) else backbone.name
            args = [
                "polar-vbll",
                "evaluate",
                "--model",
                model_arg,
                "--task",
                spec.name,
                "--split",
                split,
                "--batch-size",
                str(batch_size),
                "--max-length",
                str(max_length),
                "--template",
                spec.template.name,
            ]
            args += ["--limit", str(limit)] if limit else []
            args += ["--precision", str(backbone.precision)] if backbone.precision != "fp32" else []
            command = shlex.join(args + ["--out", str(out)])
        from .report import plots

        images = plots.calibration_plots(probs, labels, f"{spec.name} / {split} (zero-shot)", n_bins)
        result.to_report(command).write(out, images)
    return result
