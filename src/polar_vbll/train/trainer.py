"""``fit``: fine-tune an adapter and an uncertainty head on a task, alternating between them, resumably.

Run folder (``out``):
    config.json                 the FitConfig
    train_log.jsonl             one line per step: loss, its terms, running accuracy, learning rates, diagnostics
    checkpoint/                 latest resumable state (adapter, head, optimizers, step, RNG), written atomically
    adapter/                    final adapter (adapter_config.json + adapter_model.safetensors)
    head.safetensors            final head
    report.json, report.md      metrics on the evaluation split
"""

from __future__ import annotations

import functools
import json
import math
import platform
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..adapters import (
    adapter_diagnostics,
    adapter_parameters,
    count_trainable,
    inject_adapters,
    make_config,
    model_tuner,
    save_adapter,
)
from ..adapters.base import ADAPTERS
from ..atomic import atomic_write_json
from ..data import TaskSpec, collate, encode_items, get_task, iter_batches, label_token_ids
from ..errors import PolarVBLLError
from ..metrics import classification_metrics, criterion_scores, selective_metrics
from ..models import Backbone, load_backbone, resolve_model
from ..optim import build_optimizer
from ..outputs import OutputKind, claim, prepare_output
from ..report import write_report
from ..uq import UQ_METHODS, UQHead, fit_temperature, uncertainty_decomposition
from .checkpoint import (
    FitInterrupted,
    interrupted_message,
    load_checkpoint,
    resumed_config,
    save_checkpoint,
    save_head,
    truncate_log,
)
from .config import FitConfig
from .prepare import TrainingInputs

StepCallback = Callable[[int, dict], None]


@dataclass
class FitResult:
    """What ``fit`` leaves behind: the run folder, the final report and the trained pieces (in memory)."""

    out: Path
    report: dict
    config: FitConfig
    backbone: Backbone
    head: UQHead
    task: TaskSpec

    def predict(self, questions: list[dict] | None = None, **options):
        """Predictions with uncertainty on new ``questions`` or a task split: see :func:`predict_run`."""
        from .predictions import predict_run

        return predict_run(self, questions, **options)


def warmup_linear(total_steps: int, warmup_ratio: float, restarts: Iterable[int] = ()) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup_ratio`` of the steps, then linear decay to 0.

    ``restarts`` cut the steps into cycles [0, r₁), [r₁, r₂), ..., [r_k, total): each cycle warms up over
    ``warmup_ratio`` of its own length and decays to 0 at its end (an extended run starts a new cycle).
    """
    bounds = [0, *restarts, total_steps]

    def factor(step: int) -> float:
        cycle = max(i for i in range(len(bounds) - 1) if bounds[i] <= step) if step >= 0 else 0
        start, end = bounds[cycle], bounds[cycle + 1]
        length, local = end - start, step - start
        warmup = int(math.ceil(length * warmup_ratio))
        if local < warmup:
            return (local + 1) / warmup
        return max(0.0, (length - local) / max(1, length - warmup))

    return factor


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Indices of the examples of ``step``: epochs of seeded permutations, so any step can be recomputed."""
    return [
        _epoch_order(n, seed, position // n)[position % n]
        for position in range(step * batch_size, (step + 1) * batch_size)
    ]


def build_components(
    config: FitConfig, backbone: Backbone | None = None, n_train: int | None = None, restore: bool = False
):
    """Backbone with the adapter injected, the task, its label ids and the head, as ``config`` says.

    ``restore=True``: the adapter will be loaded from a run, so data-dependent initialization (CorDA's covariances,
    PiSSA's SVD, S2FT's permutation) is skipped.
    """
    torch.manual_seed(config.seed)
    backbone = backbone or load_backbone(config.model)
    # a new fit has refused an ambiguous task name already (_check_inputs); a saved one meant the bundled task
    task = get_task(config.task, config.template, registered_first=True)
    label_ids = label_token_ids(backbone.tokenizer, task.label_words(), task.name)
    init_weight = backbone.lm_head.weight.detach()[label_ids].clone().float()
    if n_train is None:
        n_train = len(training_items(task, config)[0])
    method = UQ_METHODS.get(config.uq)
    head = method.build(init_weight, n_train, config=config.vbll, fit=config)
    adapter = make_config(config.adapter, **config.adapter_options())
    layer = ADAPTERS.get(config.adapter).layer
    data = {}
    if layer is not None and layer.needs_data and not restore:
        data = layer.prepare(backbone.model, adapter, TrainingInputs(backbone, config))
    members = config.ensemble_size if method.ensemble else 1
    inject_adapters(backbone.model, adapter, restore=restore, members=members, **data)
    head.attach(backbone)
    return backbone, task, head


def training_items(task: TaskSpec, config: FitConfig) -> tuple[list, list]:
    """(examples to train on, examples held out for the temperature).

    With ``calibration_holdout`` a seeded random ``calibration_size`` of the training split is held out first and
    never trained on; ``train_limit`` then keeps the first N of the rest.
    """
    items = task.load("train")
    held_out: list = []
    if config.calibration_holdout:
        if config.calibration_size >= len(items):
            raise PolarVBLLError(
                f"FitConfig.calibration_size={config.calibration_size} leaves no training examples of {len(items)}"
            )
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(config.seed + 7919)).tolist()
        held = set(order[: config.calibration_size])
        held_out = [items[i] for i in sorted(held)]
        items = [x for i, x in enumerate(items) if i not in held]
    return items[: config.train_limit or None], held_out


def _clip(params: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    params = [p for p in params if p.grad is not None]
    if not params or max_norm <= 0:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


@torch.no_grad()
def predict(
    backbone: Backbone,
    head: UQHead,
    task: TaskSpec,
    items,
    batch_size: int,
    max_length: int,
    seed: int = 0,
    n_samples: int = 100,
    progress: bool = False,
    return_logits: bool = False,
) -> dict[str, np.ndarray]:
    """Probabilities (N, C), per-example total / aleatoric / epistemic uncertainty and the ID score of every OOD
    criterion the head supports (``scores``), in data order; with ``return_logits`` the logit samples (N, S, C)."""
    backbone.eval()
    head.eval()
    generator = torch.Generator().manual_seed(seed)
    encoded = encode_items(backbone.tokenizer, task, items, max_length)
    out = {k: np.zeros(len(items)) for k in ("total", "aleatoric", "epistemic")}
    out["probs"] = np.zeros((len(items), task.num_classes))
    scores: dict[str, np.ndarray] = {}
    bar = tqdm(total=len(items), desc="evaluating", unit="ex", disable=not progress)
    for idx, batch in iter_batches(encoded, batch_size, backbone.tokenizer.pad_token_id, task.num_classes):
        probs, logits = head.predict_batch(backbone, batch, n_samples, generator)
        out["probs"][idx] = probs.double().numpy()
        if return_logits:
            out.setdefault("logits", np.zeros((len(items), *logits.shape[1:])))[idx] = logits.double().numpy()
        for key, value in uncertainty_decomposition(torch.softmax(logits, -1)).items():
            out[key][idx] = value.double().numpy()
        for key, value in criterion_scores(logits, head.stochastic).items():
            scores.setdefault(key, np.zeros(len(items)))[idx] = value
        bar.update(len(idx))
    bar.close()
    out["scores"] = scores
    return out


def evaluate_components(
    backbone,
    head,
    task,
    config: FitConfig,
    split: str | None = None,
    limit: int | None = None,
    progress: bool = False,
    items=None,
) -> dict:
    """Metrics (cls/, cal/, sel/, unc/), probabilities and OOD criterion scores on ``split`` (or on ``items``)."""
    split = split or config.eval_split or task.eval_split
    items = task.load(split)[: limit or None] if items is None else items
    start = time.perf_counter()
    pred = predict(
        backbone, head, task, items, config.eval_batch_size, config.max_length, config.seed, progress=progress
    )
    labels = np.array([item.answer for item in items])
    metrics = classification_metrics(pred["probs"], labels)
    metrics.update(selective_metrics(pred["probs"], labels))
    metrics.update({f"unc/{k}_mean": float(pred[k].mean()) for k in ("total", "aleatoric", "epistemic")})
    return {
        "task": task.name,
        "split": split,
        "n": len(items),
        "metrics": metrics,
        "probs": pred["probs"],
        "labels": labels,
        "scores": pred["scores"],
        "eval_s": time.perf_counter() - start,
    }


def calibration_plots(evaluation: dict) -> dict[str, bytes]:
    """The report plots of an ``evaluate_components`` result."""
    from ..report import plots

    return plots.calibration_plots(
        evaluation["probs"], evaluation["labels"], f"{evaluation['task']} / {evaluation['split']}"
    )


def _phase(step: int, config: FitConfig) -> str:
    if not config.alternate:
        return "joint"
    cycle = config.head_steps + config.adapter_steps
    return "head" if step % cycle < config.head_steps else "adapter"


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
        config = config or FitConfig(**overrides)
        _check_inputs(config)  # before --overwrite removes anything
        prepare_output(out, OutputKind.RUN, overwrite=overwrite)
    backbone, task, head = build_components(config, backbone)
    items, held_out = training_items(task, config)
    adapter_params = adapter_parameters(backbone.model)
    tuner = model_tuner(backbone.model)
    weight_decay = head.adapter_weight_decay if config.weight_decay is None else config.weight_decay
    adapter_opt = build_optimizer(
        adapter_params,
        config.optimizer,
        lr=config.lr_adapter,
        weight_decay=weight_decay,
        landing_lambda=config.landing_lambda,
    )
    head_opt = torch.optim.Adam(head.parameters(), lr=config.lr_head)
    schedule = warmup_linear(config.steps, config.warmup_ratio, config.lr_restarts)
    optimizers = [adapter_opt, head_opt]
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
    start_step, correct, seen = 0, 0, 0
    if resume:
        start_step, correct, seen = load_checkpoint(out / "checkpoint", backbone, head, optimizers)
        truncate_log(out / "train_log.jsonl", start_step)
    else:
        claim(out, "config.json", "train_log.jsonl", "checkpoint")
        atomic_write_json(out / "config.json", config.to_dict())
        (out / "train_log.jsonl").write_text("", encoding="utf-8")
    checkpoint_step = start_step if resume else None
    pad_id = backbone.tokenizer.pad_token_id
    bar = tqdm(
        range(start_step, config.steps), initial=start_step, total=config.steps, desc="fit", disable=not progress
    )
    train_start = time.perf_counter()
    step = start_step
    try:
        for step in bar:
            backbone.train()
            head.train()
            idx = batch_indices(step, config.batch_size, len(items), config.seed)
            batch = collate(
                encode_items(backbone.tokenizer, task, [items[i] for i in idx], config.max_length),
                pad_id,
                task.num_classes,
            )
            phase = _phase(step, config)
            if tuner is not None:
                tuner.on_step(step, adapter_opt)
            factor = schedule(step)
            for optimizer in optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * factor
            loss, terms, point = head.training_loss(backbone, batch, train_backbone=phase != "head")
            adapter_opt.zero_grad(set_to_none=True)
            head_opt.zero_grad(set_to_none=True)
            loss.backward()
            if phase in ("head", "joint"):
                _clip(head.parameters(), config.grad_clip)
                head_opt.step()
            if phase in ("adapter", "joint"):
                _clip(adapter_params, config.grad_clip)
                adapter_opt.step()
            hits = int((point.argmax(-1) == batch["labels"]).sum())
            correct, seen = correct + hits, seen + len(idx)
            logs = {
                "step": step + 1,
                "phase": phase,
                "loss": loss.item(),
                **terms,
                "acc_running": correct / seen,
                "lr_adapter": config.lr_adapter * factor,
                "lr_head": config.lr_head * factor,
            }
            if config.log_every and (step + 1) % config.log_every == 0:
                logs.update(adapter_diagnostics(backbone.model))
            with (out / "train_log.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(logs) + "\n")
            bar.set_postfix(
                loss=f"{loss.item():.3f}",
                acc=f"{correct / seen:.3f}",
                phase=phase,
                **{key: f"{value:.3g}" for key, value in terms.items()},
            )
            if (config.checkpoint_every and (step + 1) % config.checkpoint_every == 0) or step + 1 == config.steps:
                save_checkpoint(out / "checkpoint", step + 1, backbone, head, optimizers, correct, seen)
                checkpoint_step = step + 1
            for callback in callbacks:
                callback(step + 1, logs)
    except KeyboardInterrupt:
        bar.close()
        raise FitInterrupted(interrupted_message(out, step, checkpoint_step, config)) from None
    bar.close()
    try:
        return finish_run(
            config,
            backbone,
            head,
            task,
            items,
            held_out,
            out,
            train_s=time.perf_counter() - train_start,
            start_step=start_step,
            command=command,
            progress=progress,
        )
    except KeyboardInterrupt:
        raise FitInterrupted(interrupted_message(out, config.steps, config.steps, config)) from None


def _check_inputs(config: FitConfig) -> None:
    """The model and task exist, and the report will not score the training examples unless asked to (a folder
    holding only ``train.jsonl``)."""
    resolve_model(config.model)
    task = get_task(config.task, config.template)
    if config.eval_split is None and task.eval_split == "train":
        raise PolarVBLLError(
            f"task '{config.task}': only a train split, so the report would score the training examples; add a "
            "validation.jsonl (or test.jsonl) beside it, or pass --eval-split train to do so knowingly"
        )


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
) -> FitResult:
    """The post-hoc steps ``config`` asks for (Laplace, temperature), then save, evaluate and report into ``out``."""
    start = time.perf_counter()
    trainable, total = count_trainable(backbone.model)
    if config.laplace:
        _laplace(backbone, head, task, items, config)
    posterior = {}
    if UQ_METHODS.get(config.uq).post_hoc_laplace:
        posterior = head.post_hoc(backbone, _laplace_batches(backbone, task, items, config), len(items))
    if config.temperature_scaling:
        _fit_temperature(backbone, head, task, held_out, config)
    post_hoc_s = time.perf_counter() - start
    claim(out, "adapter", "head.safetensors")
    save_adapter(backbone.model, out / "adapter")
    save_head(head, out / "head.safetensors")
    evaluation = evaluate_components(backbone, head, task, config, limit=config.eval_limit, progress=progress)
    report = _run_report(config, backbone, task, evaluation, out, command, trainable, total, train_s, start_step)
    report["timings"]["post_hoc_s"] = post_hoc_s
    if config.temperature_scaling:
        report["calibration"] = {"temperature": float(head.temperature), "held_out": len(held_out)}
    if posterior:
        report["posterior"] = posterior
    report.update(extra or {})
    write_report(report, out, calibration_plots(evaluation))
    return FitResult(out, report, config, backbone, head, task)


def _laplace_batches(backbone: Backbone, task: TaskSpec, items, config: FitConfig):
    """Batches of a seeded random subset (``laplace_samples``) of the training examples."""
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(config.seed))[: config.laplace_samples]
    encoded = encode_items(backbone.tokenizer, task, [items[i] for i in order.tolist()], config.max_length)
    pad = backbone.tokenizer.pad_token_id
    return [batch for _, batch in iter_batches(encoded, config.eval_batch_size, pad, task.num_classes)]


@torch.no_grad()
def _laplace(backbone: Backbone, head: UQHead, task: TaskSpec, items, config: FitConfig) -> None:
    """Post-hoc Laplace refinement of the VBLL head on a seeded subset of the training set."""
    backbone.eval()
    batches = _laplace_batches(backbone, task, items, config)
    features = [backbone.features(b["input_ids"], b["attention_mask"]) for b in batches]
    labels = torch.cat([b["labels"] for b in batches])
    masks = torch.cat([b["choice_mask"] for b in batches])
    head.laplace_(torch.cat(features), labels, masks, n_total=len(items))


@torch.no_grad()
def _fit_temperature(backbone: Backbone, head: UQHead, task: TaskSpec, held_out, config: FitConfig) -> None:
    """Fit the head's temperature on the held-out training examples' logit samples."""
    head.temperature.fill_(1.0)
    evaluation = predict(
        backbone, head, task, held_out, config.eval_batch_size, config.max_length, config.seed, return_logits=True
    )
    labels = torch.tensor([item.answer for item in held_out])
    head.temperature.fill_(fit_temperature(torch.from_numpy(evaluation["logits"]), labels))


def _run_report(config, backbone, task, evaluation, out, command, trainable, total, train_s, start_step) -> dict:
    import transformers

    if command is None:
        command = shlex.join(["polar-vbll", "fit", "--config", str(out / "config.json"), "--out", str(out)])
    return {
        "task": evaluation["task"],
        "split": evaluation["split"],
        "n": evaluation["n"],
        "model": backbone.describe(),
        "method": {"adapter": config.adapter, "uq": config.uq, "optimizer": config.optimizer},
        "metrics": evaluation["metrics"],
        "prompt_version": task.template.id,
        "label_words": task.label_words(),
        "settings": {
            "steps": config.steps,
            "batch_size": config.batch_size,
            "max_length": config.max_length,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "resumed_at_step": start_step,
        },
        "diagnostics": adapter_diagnostics(backbone.model),
        "timings": {"train_s": train_s, "eval_s": evaluation["eval_s"]},
        "config": config.to_dict(),
        "command": command,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
