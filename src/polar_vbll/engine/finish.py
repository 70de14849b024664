"""The end of a run: post-hoc steps the config asks for, saving, evaluation and the report."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from ..adapters import adapter_diagnostics, count_trainable, save_adapter
from ..config import FitConfig
from ..data import TaskSpec
from ..models import Backbone
from ..outputs import claim
from ..posthoc import PostHocContext, run_post_hoc
from ..report.schema import Report
from ..uq import UQHead
from .checkpoint import save_head
from .inference import calibration_plots, evaluate_components
from .result import FitResult
from .zero_shot import fine_tune_warning


def finish_run(
    config: FitConfig,
    backbone: Backbone,
    head: UQHead,
    task: TaskSpec,
    items: list,
    held_out: list,
    out: Path,
    *,
    train_s: float,
    start_step: int = 0,
    command: str | None = None,
    progress: bool = True,
    extra: dict | None = None,
    zero_shot: dict[str, float] | None = None,
) -> FitResult:
    """The post-hoc steps ``config`` lists (:mod:`polar_vbll.posthoc`), then save, evaluate and report into ``out``;
    ``zero_shot``: the untrained model's metrics on the same examples, reported beside (with a warning line when the
    fine-tune is worse)."""
    start = time.perf_counter()
    trainable, total = count_trainable(backbone.model)
    context = PostHocContext(backbone, head, task, items, held_out, config)
    reported = run_post_hoc(config.post_hoc or [], context)
    post_hoc_s = time.perf_counter() - start
    claim(out, "adapter", "head.safetensors")
    save_adapter(backbone.model, out / "adapter")
    save_head(head, out / "head.safetensors")
    evaluation = evaluate_components(backbone, head, task, config, limit=config.eval_limit, progress=progress)
    report = _run_report(config, backbone, task, evaluation, out, command, trainable, total, train_s, start_step)
    report.timings["post_hoc_s"] = post_hoc_s
    report.sections.update({**reported, **(extra or {})})
    if zero_shot is not None:  # the untrained model on the same examples, and whether fine-tuning helped
        report.sections["zero_shot"] = zero_shot
        warning = fine_tune_warning(zero_shot, report.metrics)
        if warning:
            report.sections["warning"] = warning
    report.write(out, calibration_plots(evaluation))
    return FitResult(out, report.to_dict(), config, backbone, head, task, evaluation)


def _run_report(config, backbone, task, evaluation, out, command, trainable, total, train_s, start_step) -> Report:
    if command is None:
        command = shlex.join(["polar-vbll", "fit", "--config", str(out / "config.json"), "--out", str(out)])
    return Report(
        task=evaluation["task"],
        split=evaluation["split"],
        n=evaluation["n"],
        model=backbone.describe(),
        method={"adapter": config.adapter.method, "uq": config.uq.method, "optimizer": config.optimizer},
        metrics=evaluation["metrics"],
        prompt_version=task.template.id,
        label_words=task.label_words(),
        settings={
            "steps": config.steps,
            "batch_size": config.batch_size,
            "max_length": config.max_length,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "resumed_at_step": start_step,
            "precision": config.precision,
            "base_dtype": backbone.base_dtype,
        },
        diagnostics=adapter_diagnostics(backbone.model),
        timings={"train_s": train_s, "eval_s": evaluation["eval_s"]},
        config=config.to_dict(),
        command=command,
    )
