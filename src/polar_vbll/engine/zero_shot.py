"""The model before fine-tuning, scored on a run's own evaluation examples: the reference a fine-tune must beat.

Every adapter starts as the identity map (LoRA's B = 0, PoLAR's Θ = 0, PiSSA's and CorDA's residual plus adapter =
W, ...), so the backbone before the first step, read through its own LM-head rows at the label tokens, is the
zero-shot model.
"""

from __future__ import annotations

import numpy as np

from ..config import FitConfig
from ..data import TaskSpec
from ..metrics import classification_metrics
from ..models import Backbone
from .inference import predict, zero_shot_head

ZERO_SHOT_FILE = "zero_shot.json"


def zero_shot_metrics(backbone: Backbone, task: TaskSpec, config: FitConfig) -> dict[str, float]:
    """cls/ and cal/ metrics of the untrained model on the examples the run's report will score."""
    split = config.eval_split or task.eval_split
    items = task.load(split)[: config.eval_limit or None]
    out = predict(
        backbone, zero_shot_head(backbone, task), task, items, config.eval_batch_size, config.max_length, n_samples=1
    )
    return classification_metrics(out["probs"], np.array([item.answer for item in items]))


def fine_tune_warning(zero_shot: dict[str, float], metrics: dict[str, float]) -> str | None:
    """One line when the fine-tune ends below the zero-shot accuracy or above its NLL, else None."""
    worse = []
    if metrics["cls/acc"] < zero_shot["cls/acc"]:
        worse.append(f"accuracy {metrics['cls/acc']:.4f} below zero-shot {zero_shot['cls/acc']:.4f}")
    if metrics["cls/nll"] > zero_shot["cls/nll"]:
        worse.append(f"NLL {metrics['cls/nll']:.4f} above zero-shot {zero_shot['cls/nll']:.4f}")
    return "fine-tuning did not help: " + ", ".join(worse) if worse else None
