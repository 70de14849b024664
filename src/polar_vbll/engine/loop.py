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
    adapter_auxiliary_loss,
    adapter_diagnostics,
    adapter_parameters,
    adapters_on_step,
    model_tuner,
)
from ..atomic import atomic_write_json
from ..config import FitConfig
from ..data import encoded_batches, get_task
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
    """
    out = Path(out)
    if resume:
        config = resumed_config(out, overrides)
    else:
        config = config or FitConfig.from_dict(overrides)
        _check_inputs(config)  # before --overwrite removes anything
        prepare_output(out, OutputKind.RUN, overwrite=overwrite)
    backbone, task, head = build_components(config.for_task(config.task_names[0]), backbone)
    if config.precision != backbone.precision or config.base_dtype is None:  # the run records what it computes in
        config = replace(config, precision=resolved_name(backbone.precision), base_dtype=base_dtype(config, backbone))
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
        truncate_log(out / "train_log.jsonl", start_step)
    else:
        claim(out, "config.json", "train_log.jsonl", "checkpoint", ZERO_SHOT_FILE)
        atomic_write_json(out / "config.json", config.to_dict())
        (out / "train_log.jsonl").write_text("", encoding="utf-8")
        if config.zero_shot:  # before the first step every adapter is the identity: this is the zero-shot model
            atomic_write_json(out / ZERO_SHOT_FILE, lanes.zero_shot(backbone))
    zero_shot = read_json(out / ZERO_SHOT_FILE, "zero-shot metrics") if (out / ZERO_SHOT_FILE).is_file() else None
    checkpoint_step = start_step if resume else None
    bar = tqdm(
        range(start_step, config.steps), initial=start_step, total=config.steps, desc="fit", disable=not progress
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
            idx = batch_indices(local_step, config.batch_size, len(lane.items), config.seed)
            chosen = [lane.items[i] for i in idx]
            encoded = encoded_batches(
                backbone.tokenizer, lane.task, chosen, config.max_length, len(idx), sort_by_length=False
            )
            _, batch = next(encoded)
            phase = "adapter" if solve_every else phase_of(step, config)
            if tuner is not None:
                tuner.on_step(step, adapter_opt)
            adapters_on_step(backbone.model, step, config.steps)
            factor = schedule(step)
            for optimizer in optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * factor
            loss, terms, point, features = lane.head.training_loss(backbone, batch, train_backbone=phase != "head")
            auxiliary = adapter_auxiliary_loss(backbone.model) if phase != "head" else None
            if auxiliary is not None:  # e.g. iLoRA's load balancing
                loss = loss + auxiliary
                terms = {**terms, "adapter_aux": auxiliary.item()}
            if lane.retain is not None and features is not None:  # EMTAL's quality retaining (earlier teachers)
                retained = lane.retain.loss(
                    idx, lane.head.point_logits(features, batch["choice_mask"]), batch["choice_mask"]
                )
                lane.retain.update(idx, point, batch["labels"], batch["choice_mask"])
                if retained is not None:
                    loss = loss + retained
                    terms = {**terms, "quality_retaining": retained.item()}
            if lane.recent is not None and features is not None:
                lane.recent.add(features.detach(), batch["labels"], batch["choice_mask"])
            adapter_opt.zero_grad(set_to_none=True)
            head_opt.zero_grad(set_to_none=True)
            loss.backward()
            if phase in ("head", "joint"):
                _clip(lane.head.parameters(), config.grad_clip)
                head_opt.step()
            if phase in ("adapter", "joint"):
                _clip(adapter_params, config.grad_clip)
                adapter_opt.step()
            hits = int((point.argmax(-1) == batch["labels"]).sum())
            lane.correct, lane.seen = lane.correct + hits, lane.seen + len(idx)
            logs = {
                "step": step + 1,
                **({"task": lane.name} if lanes.multi else {}),
                "phase": phase,
                "loss": loss.item(),
                **terms,
                "acc_running": lane.correct / lane.seen,
                "lr_adapter": config.lr_adapter * factor,
                "lr_head": config.lr_head * factor,
                **solved,
            }
            if config.log_every and (step + 1) % config.log_every == 0:
                logs.update(adapter_diagnostics(backbone.model))
            with (out / "train_log.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(logs) + "\n")
            bar.set_postfix(
                loss=f"{loss.item():.3f}",
                **({"task": lane.name} if lanes.multi else {}),
                acc=f"{lane.correct / lane.seen:.3f}",
                phase=phase,
                **{key: f"{value:.3g}" for key, value in terms.items()},
            )
            if (config.checkpoint_every and (step + 1) % config.checkpoint_every == 0) or step + 1 == config.steps:
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
