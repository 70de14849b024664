"""The end of a run: post-hoc steps the config asks for, saving, evaluation and the report."""

from __future__ import annotations

import platform
import shlex
import time
from pathlib import Path

import torch

from ..adapters import adapter_diagnostics, count_trainable, save_adapter
from ..config import FitConfig
from ..data import TaskSpec, encoded_batches
from ..models import Backbone
from ..outputs import claim
from ..report import write_report
from ..uq import UQ_METHODS, UQHead, fit_temperature
from .checkpoint import save_head
from .inference import calibration_plots, evaluate_components, predict
from .result import FitResult


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
    chosen = [items[i] for i in order.tolist()]
    return [
        batch
        for _, batch in encoded_batches(backbone.tokenizer, task, chosen, config.max_length, config.eval_batch_size)
    ]


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
