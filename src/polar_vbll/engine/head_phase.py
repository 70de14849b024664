"""The exact head phase: features of a buffer of training examples, computed once without a backward pass (or kept
from the adapter steps, :class:`StepFeatures`), and the head solved on them (``UQHead.solve``; VBLL's is
:mod:`polar_vbll.uq.vbll_solve`)."""

from __future__ import annotations

import time

import torch

from ..config import FitConfig
from ..data import TaskSpec, encoded_batches
from ..distributed import current_ranks
from ..models import Backbone
from ..uq import UQHead


@torch.no_grad()
def cached_features(
    backbone: Backbone, task: TaskSpec, items: list, max_length: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features (M, d) fp32, labels (M,), choice masks (M, C)) of ``items`` in their order, the backbone in eval
    mode and in its precision, batched by length; under several processes each computes its own batches and all
    receive every feature, the same as one process computes (:mod:`~polar_vbll.distributed`)."""
    was_training = backbone.training
    backbone.eval()
    ranks = current_ranks()
    features = torch.zeros(len(items), backbone.hidden_size)
    labels = torch.zeros(len(items), dtype=torch.long)
    masks = torch.zeros(len(items), task.num_classes, dtype=torch.bool)
    for number, (idx, batch) in enumerate(encoded_batches(backbone.tokenizer, task, items, max_length, batch_size)):
        labels[idx] = batch["labels"]
        masks[idx] = batch["choice_mask"]
        if ranks.owns(number):
            features[idx] = backbone.features(batch["input_ids"], batch["attention_mask"])
    backbone.train(was_training)
    return ranks.gather_rows(features), labels, masks


def buffer_items(items: list, size: int, seed: int, step: int) -> list:
    """The buffer of the head phase at ``step``: every training example when they fit, else a random ``size`` of
    them drawn anew each phase from (seed, step), so a resumed run draws the same."""
    if size >= len(items):
        return items
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return [items[i] for i in sorted(torch.randperm(len(items), generator=generator)[:size].tolist())]


class StepFeatures:
    """The features (M, d) fp32, labels (M,) and choice masks (M, C) of the last ``size`` training examples the
    adapter steps saw, oldest first: an exact head phase's buffer at no backbone cost (features up to
    ``size / batch_size`` adapter steps old). Part of a checkpoint, so that a resumed run solves on the same."""

    def __init__(self, size: int):
        self.size = size
        self.tensors: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.tensors["labels"]) if self.tensors else 0

    def add(self, features: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor) -> None:
        new = {"features": features, "labels": labels, "masks": masks}
        if self.tensors:
            new = {key: torch.cat([self.tensors[key], value]) for key, value in new.items()}
        self.tensors = {key: value[-self.size :] for key, value in new.items()}

    def contents(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.tensors["features"], self.tensors["labels"], self.tensors["masks"]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.tensors)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.tensors = dict(state)


def head_phase(
    backbone: Backbone,
    head: UQHead,
    task: TaskSpec,
    items: list,
    config: FitConfig,
    step: int,
    recent: StepFeatures | None = None,
) -> dict[str, float]:
    """Solve ``head`` on the features of its buffer at ``step`` (those of ``recent`` when it holds any); returns what
    to log (``head_*``), with the seconds the features (``head_features_s``) and the solve (``head_solve_s``)
    took."""
    start = time.perf_counter()
    if recent is not None and len(recent):
        features, labels, masks = recent.contents()
    else:
        chosen = buffer_items(items, head.solve_buffer, config.seed, step)
        features, labels, masks = cached_features(backbone, task, chosen, config.max_length, config.eval_batch_size)
    cached = time.perf_counter()
    solved = head.solve(features, labels, masks, n_total=len(items))
    return {
        **{f"head_{key}": value for key, value in solved.items()},
        "head_buffer": len(labels),
        "head_features_s": cached - start,
        "head_solve_s": time.perf_counter() - cached,
    }
