"""The end of a run: post-hoc steps the config asks for, saving, evaluation and the report; for a multi-task fit,
each task's run folder ``out/tasks/<task>`` and the summary report of their metrics and means."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import numpy as np

from ..adapters import adapter_diagnostics, count_trainable, save_adapter
from ..atomic import atomic_write_json, atomic_write_text
from ..config import FitConfig
from ..data import TaskSpec
from ..distributed import current_ranks
from ..models import Backbone
from ..outputs import OutputKind, claim, prepare_output
from ..posthoc import PostHocContext, run_post_hoc
from ..report.schema import Report
from ..uq import UQHead
from .checkpoint import save_head
from .head_phase import head_phase
from .inference import calibration_plots, evaluate_components
from .multitask import TaskLane, TaskLanes
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
    fine-tune is worse). Under several processes all compute, the main one writes."""
    main = current_ranks().main
    start = time.perf_counter()
    trainable, total = count_trainable(backbone.model)
    context = PostHocContext(backbone, head, task, items, held_out, config)
    reported = run_post_hoc(config.post_hoc or [], context)
    post_hoc_s = time.perf_counter() - start
    if main:
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
    if main:
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
            "global_batch_size": config.global_batch_size,
            "processes": current_ranks().size,
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


def finish_tasks(
    config: FitConfig,
    backbone: Backbone,
    lanes: TaskLanes,
    out: Path,
    *,
    train_s: float,
    start_step: int = 0,
    command: str | None = None,
    progress: bool = True,
    zero_shot: dict | None = None,
) -> FitResult:
    """The end of ``fit``: each task's head solved on the final adapter's features (an exact head phase), then
    :func:`finish_run` into ``out`` (one task) or into ``out/tasks/<task>`` (several: each a complete single-task run
    folder that ``load_run``, ``evaluate`` and ``refine`` read as any run), then their summary report in ``out``."""
    if lanes.multi and command is None:
        command = shlex.join(["polar-vbll", "fit", "--config", str(out / "config.json"), "--out", str(out)])
    results = {}
    for lane in lanes:
        extra: dict = {"multi_task_run": str(out)} if lanes.multi else {}
        if lane.head.solve_every:
            extra["head_phase"] = head_phase(backbone, lane.head, lane.task, lane.items, lane.config, config.steps)
        folder = (
            (_task_folder(out, lane) if current_ranks().main else out / "tasks" / lane.name) if lanes.multi else out
        )
        results[lane.name] = finish_run(
            lane.config,
            backbone,
            lane.head,
            lane.task,
            lane.items,
            lane.held_out,
            folder,
            train_s=train_s,
            start_step=start_step,
            command=command,
            progress=progress,
            extra=extra,
            zero_shot=lanes.zero_shot_of(lane, zero_shot),
        )
    if not lanes.multi:
        return results[lanes.first.name]
    assert command is not None
    report = _tasks_report(config, lanes, {name: result.report for name, result in results.items()}, command)
    if current_ranks().main:
        report.write(out)
    first = lanes.first
    return FitResult(out, report.to_dict(), config, backbone, first.head, first.task, tasks=results)


def _task_folder(out: Path, lane: TaskLane) -> Path:
    """``out/tasks/<task>`` made a run folder holding the task's config and its steps' log lines."""
    claim(out, "tasks")
    folder = prepare_output(out / "tasks" / lane.name, OutputKind.RUN, overwrite=True)
    claim(folder, "config.json", "train_log.jsonl")
    atomic_write_json(folder / "config.json", lane.config.to_dict())
    lines = (out / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    own = [line for line in lines if line.strip() and json.loads(line).get("task") == lane.name]
    atomic_write_text(folder / "train_log.jsonl", "".join(line + "\n" for line in own))
    return folder


def _tasks_report(config: FitConfig, lanes: TaskLanes, reports: dict[str, dict], command: str) -> Report:
    """A multi-task fit's report: the unweighted mean over tasks of every metric they all have, each task's metrics
    (``tasks``) and how many steps each trained."""
    first = reports[lanes.first.name]
    keys = [key for key in first["metrics"] if all(key in r["metrics"] for r in reports.values())]
    steps = lanes.steps_per_task(config.steps)
    tasks = {
        name: {
            "folder": f"tasks/{name}",
            "split": r["split"],
            "n": r["n"],
            "steps": steps[name],
            "metrics": r["metrics"],
            **{key: r[key] for key in ("zero_shot", "warning", "head_phase") if key in r},
        }
        for name, r in reports.items()
    }
    splits = {r["split"] for r in reports.values()}
    return Report(
        task=" + ".join(reports),
        split=splits.pop() if len(splits) == 1 else "each task's evaluation split",
        n=sum(r["n"] for r in reports.values()),
        model=first["model"],
        metrics={key: float(np.mean([r["metrics"][key] for r in reports.values()])) for key in keys},
        prompt_version=", ".join(r["prompt_version"] for r in reports.values()),
        label_words=[],
        command=command,
        method=first["method"],
        settings={**first["settings"], "task_sampling": config.task_sampling, "task_shares": list(lanes.shares)},
        diagnostics=first.get("diagnostics"),
        timings={
            "train_s": first["timings"]["train_s"],
            **{k: sum(r["timings"].get(k, 0.0) for r in reports.values()) for k in ("eval_s", "post_hoc_s")},
        },
        config=config.to_dict(),
        sections={"tasks": tasks},
    )
