"""The exact head phase: features of a buffer of training examples, computed once without a backward pass, and the
head solved on them (``UQHead.solve``; VBLL's is :mod:`polar_vbll.uq.vbll_solve`)."""

from __future__ import annotations

import time

import torch

from ..config import FitConfig
from ..data import TaskSpec, encoded_batches
from ..models import Backbone
from ..uq import UQHead


@torch.no_grad()
def cached_features(
    backbone: Backbone, task: TaskSpec, items: list, max_length: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features (M, d) fp32, labels (M,), choice masks (M, C)) of ``items`` in their order, the backbone in eval
    mode and in its precision, batched by length."""
    was_training = backbone.training
    backbone.eval()
    features = torch.zeros(len(items), backbone.hidden_size)
    labels = torch.zeros(len(items), dtype=torch.long)
    masks = torch.zeros(len(items), task.num_classes, dtype=torch.bool)
    for idx, batch in encoded_batches(backbone.tokenizer, task, items, max_length, batch_size):
        features[idx] = backbone.features(batch["input_ids"], batch["attention_mask"])
        labels[idx] = batch["labels"]
        masks[idx] = batch["choice_mask"]
    backbone.train(was_training)
    return features, labels, masks


def buffer_items(items: list, size: int, seed: int, step: int) -> list:
    """The buffer of the head phase at ``step``: every training example when they fit, else a random ``size`` of
    them drawn anew each phase from (seed, step), so a resumed run draws the same."""
    if size >= len(items):
        return items
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return [items[i] for i in sorted(torch.randperm(len(items), generator=generator)[:size].tolist())]


def head_phase(
    backbone: Backbone, head: UQHead, task: TaskSpec, items: list, config: FitConfig, step: int
) -> dict[str, float]:
    """Solve ``head`` on the features of its buffer at ``step``; returns what to log (``head_*``), with the seconds
    the features (``head_features_s``) and the solve (``head_solve_s``) took."""
    start = time.perf_counter()
    chosen = buffer_items(items, head.solve_buffer, config.seed, step)
    features, labels, masks = cached_features(backbone, task, chosen, config.max_length, config.eval_batch_size)
    cached = time.perf_counter()
    solved = head.solve(features, labels, masks, n_total=len(items))
    return {
        **{f"head_{key}": value for key, value in solved.items()},
        "head_buffer": len(chosen),
        "head_features_s": cached - start,
        "head_solve_s": time.perf_counter() - cached,
    }
