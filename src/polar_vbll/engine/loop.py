"""``fit``: fine-tune an adapter and an uncertainty head on a task (or one adapter and a head per task on several,
:mod:`~polar_vbll.engine.multitask`), alternating between them, resumably.

Run folder (``out``):
    config.json                 the FitConfig
    train_log.jsonl             one line per step: loss, its terms, running accuracy, learning rates, diagnostics
    checkpoint/                 latest resumable state (adapter, head, optimizers, step, RNG), written atomically
    adapter/                    final adapter (adapter_config.json + adapter_model.safetensors)
    head.safetensors            final head
    report.json, report.md      metrics on the evaluation split (several tasks: each task's and their mean)
    tasks/<task>/               several tasks: each a complete single-task run folder (config, adapter, head, report)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..adapters import (
    adapter_diagnostics,
    adapter_parameters,
    adapters_on_step,
    model_tuner,
)
from ..atomic import atomic_write_json
from ..config import FitConfig
from ..data import get_task
from ..distributed import current_ranks
from ..errors import PolarVBLLError
from ..models import Backbone, resolve_model
from ..models.precision import resolved_name
from ..optim import build_optimizer
from ..outputs import OutputKind, claim, prepare_output
from ..posthoc import check_post_hoc
from ..stored import read_json
from .build import base_dtype, build_components
from .checkpoint import (
    FitInterrupted,
    interrupted_message,
    load_checkpoint,
    resumed_config,
    save_checkpoint,
    truncate_log,
)
from .finish import finish_tasks
from .multitask import TaskLanes
from .result import FitResult
from .schedule import batch_indices, phase_of, warmup_linear
from .step import train_step, with_global_batch
from .zero_shot import ZERO_SHOT_FILE

StepCallback = Callable[[int, dict], None]


def _clip(params: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    params = [p for p in params if p.grad is not None]
    if not params or max_norm <= 0:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def fit(
    config: FitConfig | None = None,
    out: str | Path = "runs/fit",
    *,
    resume: bool = False,
    overwrite: bool = False,
    backbone: Backbone | None = None,
    progress: bool = True,
    callbacks: Iterable[StepCallback] = (),
    command: str | None = None,
    **overrides,
) -> FitResult:
    """Train ``config`` (or ``FitConfig(**overrides)``) into the run folder ``out``.

    ``resume=True`` continues from ``out/checkpoint`` with the config saved there and ends with the same final
    state as an uninterrupted run; ``overwrite=True`` deletes an existing run in ``out`` first.
    ``callbacks`` are called as ``callback(step, logs)`` after every step.

    Under a launcher (``accelerate launch``, ``torchrun``) every process runs ``fit`` on its share of each step
    (:mod:`~polar_vbll.engine.step`); the main process alone writes the run folder, and a run resumes on any number
    of processes.
    """
    out = Path(out)
    ranks = current_ranks()
    if resume:
        config = resumed_config(out, overrides) if ranks.main else None
    else:
        config = config or FitConfig.from_dict(overrides)
        _check_inputs(config)  # before --overwrite removes anything
        if ranks.main:
            prepare_output(out, OutputKind.RUN, overwrite=overwrite)
    ranks.barrier()  # the main process has prepared the run folder (or repaired a torn checkpoint swap)
    if config is None:
        config = resumed_config(out, overrides, write=False)
    config = with_global_batch(config, ranks.size)
    global_batch = config.global_batch_size
    assert global_batch is not None  # with_global_batch records it
    backbone, task, head = build_components(config.for_task(config.task_names[0]), backbone)
    if config.precision != backbone.precision or config.base_dtype is None:  # the run records what it computes in
        config = replace(config, precision=resolved_name(backbone.precision), base_dtype=base_dtype(config, backbone))
    if config.gradient_checkpointing:
        backbone.enable_gradient_checkpointing()
    lanes = TaskLanes(config, backbone, task, head)
    heads = lanes.heads()
    adapter_params = adapter_parameters(backbone.model)
    tuner = model_tuner(backbone.model)
    weight_decay = head.adapter_weight_decay if config.weight_decay is None else config.weight_decay
    assert config.optimizer is not None  # FitConfig sets the adapter's default
    adapter_opt = build_optimizer(
        adapter_params,
        config.optimizer,
        lr=config.lr_adapter,
        weight_decay=weight_decay,
        landing_lambda=config.landing_lambda,
    )
    head_opt = torch.optim.Adam(heads.parameters(), lr=config.lr_head)  # a step's grads reach its task's head only
    schedule = warmup_linear(config.steps, config.warmup_ratio, config.lr_restarts)
    optimizers = [adapter_opt, head_opt]
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
    solve_every = head.solve_every  # an exact head phase replaces the stochastic head steps
    start_step = 0
    if resume:
        start_step, state = load_checkpoint(out / "checkpoint", backbone, heads, optimizers)
        lanes.load_state_dict(state)
        if ranks.main:
            truncate_log(out / "train_log.jsonl", start_step)
            atomic_write_json(out / "config.json", config.to_dict())  # a new number of processes: its accumulation
    else:
        if ranks.main:
            claim(out, "config.json", "train_log.jsonl", "checkpoint", ZERO_SHOT_FILE)
            atomic_write_json(out / "config.json", config.to_dict())
            (out / "train_log.jsonl").write_text("", encoding="utf-8")
        if config.zero_shot:  # before the first step every adapter is the identity: this is the zero-shot model
            metrics = lanes.zero_shot(backbone)  # (every process evaluates its share)
            if ranks.main:
                atomic_write_json(out / ZERO_SHOT_FILE, metrics)
    if ranks.rank > 0:  # stochastic training (dropout, BLoB's noise) draws differently on each process
        torch.manual_seed(config.seed * 1_000_003 + ranks.rank)
    ranks.barrier()  # what the main process wrote is there for the others
    zero_shot = read_json(out / ZERO_SHOT_FILE, "zero-shot metrics") if (out / ZERO_SHOT_FILE).is_file() else None
    checkpoint_step = start_step if resume else None
    bar = tqdm(
        range(start_step, config.steps),
        initial=start_step,
        total=config.steps,
        desc="fit",
        disable=not progress or not ranks.main,
    )
    train_start = time.perf_counter()
    step = start_step
    try:
        for step in bar:
            solved = {}
            if solve_every and step % solve_every == 0:
                solved = lanes.solve(backbone, step)
            lane, local_step = lanes.at(step, config.steps)
            backbone.train()
            heads.train()
            idx = batch_indices(local_step, global_batch, len(lane.items), config.seed)
            phase = "adapter" if solve_every else phase_of(step, config)
            if tuner is not None:
                tuner.on_step(step, adapter_opt)
            adapters_on_step(backbone.model, step, config.steps)
            factor = schedule(step)
            for optimizer in optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * factor
            adapter_opt.zero_grad(set_to_none=True)
            head_opt.zero_grad(set_to_none=True)
            outcome = train_step(backbone, lane, idx, config, phase, ranks)
            ranks.mean_gradients_([*adapter_params, *heads.parameters()])
            if phase in ("head", "joint"):
                _clip(lane.head.parameters(), config.grad_clip)
                head_opt.step()
            if phase in ("adapter", "joint"):
                _clip(adapter_params, config.grad_clip)
                adapter_opt.step()
            lane.head.on_optimizer_step()
            lane.correct, lane.seen = lane.correct + outcome.hits, lane.seen + len(idx)
            loss, terms = outcome.loss, outcome.terms
            logs = {
                "step": step + 1,
                **({"task": lane.name} if lanes.multi else {}),
                "phase": phase,
                "loss": loss,
                **terms,
                "acc_running": lane.correct / lane.seen,
                "lr_adapter": config.lr_adapter * factor,
                "lr_head": config.lr_head * factor,
                **solved,
            }
            if config.log_every and (step + 1) % config.log_every == 0:
                logs.update(adapter_diagnostics(backbone.model))
            if ranks.main:
                with (out / "train_log.jsonl").open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(logs) + "\n")
            bar.set_postfix(
                loss=f"{loss:.3f}",
                **({"task": lane.name} if lanes.multi else {}),
                acc=f"{lane.correct / lane.seen:.3f}",
                phase=phase,
                **{key: f"{value:.3g}" for key, value in terms.items()},
            )
            if (config.checkpoint_every and (step + 1) % config.checkpoint_every == 0) or step + 1 == config.steps:
                if ranks.main:
                    save_checkpoint(out / "checkpoint", step + 1, backbone, heads, optimizers, lanes.state_dict())
                checkpoint_step = step + 1
            for callback in callbacks:
                callback(step + 1, logs)
    except KeyboardInterrupt:
        bar.close()
        raise FitInterrupted(interrupted_message(out, step, checkpoint_step, config)) from None
    bar.close()
    try:
        return finish_tasks(
            config,
            backbone,
            lanes,
            out,
            train_s=time.perf_counter() - train_start,
            start_step=start_step,
            command=command,
            progress=progress,
            zero_shot=zero_shot,
        )
    except KeyboardInterrupt:
        raise FitInterrupted(interrupted_message(out, config.steps, config.steps, config)) from None


def _check_inputs(config: FitConfig) -> None:
    """The model and tasks exist, and the report will not score training examples unless asked to (a folder
    holding only ``train.jsonl``)."""
    check_post_hoc(config.post_hoc or [])
    resolve_model(config.model)
    for name in config.task_names:
        task = get_task(name, config.template)
        if config.eval_split is None and task.eval_split == "train":
            raise PolarVBLLError(
                f"task '{name}': only a train split, so the report would score the training examples; add a "
                "validation.jsonl (or test.jsonl) beside it, or pass --eval-split train to do so knowingly"
            )
