"""One optimizer step's forward and backward passes: the global batch cut into micro-batches over the processes and
the gradient-accumulation passes, and what every process must agree on afterwards.

Global batch G = ``batch_size`` × processes × ``grad_accum``: the examples of step s are positions [sG, (s+1)G) of
the seeded epoch permutations (:func:`~polar_vbll.engine.schedule.batch_indices`), a function of (seed, step) only.
They are cut into M = processes × ``grad_accum`` micro-batches of ``batch_size``; process r takes micro-batch
a·processes + r in accumulation pass a. Each pass back-propagates loss / ``grad_accum``, and the gradients are then
averaged over the processes (:meth:`~polar_vbll.distributed.Ranks.mean_gradients_`): the mean over micro-batches of
each one's mean loss, i.e. the global batch's mean loss, as one process computes it on the whole batch (the KL terms,
weighted by the global N_train, are the same in every micro-batch).

What a step leaves behind for later steps (the exact head phase's step features, quality retaining's teachers) is
gathered in micro-batch order and applied after the step, so that every process holds the same, whatever their
number.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..adapters import adapter_auxiliary_loss
from ..config import FitConfig
from ..data import encoded_batches
from ..distributed import Ranks
from ..errors import PolarVBLLError
from .multitask import TaskLane


def with_global_batch(config: FitConfig, processes: int) -> FitConfig:
    """``config`` with its global batch recorded (a new run: ``batch_size`` × ``processes`` × ``grad_accum``, or the
    ``global_batch_size`` given, with the accumulation that makes it), or, when a run resumes on another number of
    processes, with the forward passes that keep the run's global batch: the largest micro-batch that divides each
    process's share and is not above ``batch_size``, and as many accumulation passes as the share needs."""
    if config.global_batch_size is None:
        return replace(config, global_batch_size=config.batch_size * processes * config.grad_accum)
    share, rest = divmod(config.global_batch_size, processes)
    if rest:
        raise PolarVBLLError(
            f"FitConfig.global_batch_size: the run's global batch of {config.global_batch_size} does not split over "
            f"{processes} processes; use a number of processes that divides it"
        )
    micro = max(size for size in range(1, min(config.batch_size, share) + 1) if share % size == 0)
    if (micro, share // micro) == (config.batch_size, config.grad_accum):
        return config
    return replace(config, batch_size=micro, grad_accum=share // micro)


@dataclass
class StepOutcome:
    """What a step computed, the same on every process: its mean loss and terms, and the correct answers."""

    loss: float
    terms: dict[str, float]
    hits: int


def train_step(backbone, lane: TaskLane, idx: list[int], config: FitConfig, phase: str, ranks: Ranks) -> StepOutcome:
    """The forward and backward passes of one step on the global batch ``idx`` (gradients accumulated in the
    parameters, not yet averaged over the processes); the step's leftovers applied to ``lane`` on every process."""
    accum, size = config.grad_accum, config.batch_size
    if len(idx) != size * ranks.size * accum:
        raise PolarVBLLError(
            f"a global batch of {len(idx)} examples does not split into {ranks.size} × {accum} × {size}"
        )
    loss_sum = torch.zeros(1, dtype=torch.float64)
    term_sums: dict[str, float] = {}
    hits = torch.zeros(1, dtype=torch.float64)
    leftovers: list[dict[str, torch.Tensor]] = []
    for number in range(accum):
        start = (number * ranks.size + ranks.rank) * size
        chunk = idx[start : start + size]
        items = [lane.items[i] for i in chunk]
        _, batch = next(
            encoded_batches(backbone.tokenizer, lane.task, items, config.max_length, size, sort_by_length=False)
        )
        loss, terms, point, features = lane.head.training_loss(backbone, batch, train_backbone=phase != "head")
        auxiliary = adapter_auxiliary_loss(backbone.model) if phase != "head" else None
        if auxiliary is not None:  # e.g. iLoRA's load balancing
            loss = loss + auxiliary
            terms = {**terms, "adapter_aux": auxiliary.item()}
        if lane.retain is not None and features is not None:  # EMTAL's quality retaining (earlier steps' teachers)
            retained = lane.retain.loss(
                chunk, lane.head.point_logits(features, batch["choice_mask"]), batch["choice_mask"]
            )
            if retained is not None:
                loss = loss + retained
                terms = {**terms, "quality_retaining": retained.item()}
        (loss / accum).backward()
        loss_sum += loss.item()
        for key, value in terms.items():
            term_sums[key] = term_sums.get(key, 0.0) + float(value)
        hits += int((point.argmax(-1) == batch["labels"]).sum())
        leftovers.append(
            {
                "idx": torch.tensor(chunk, dtype=torch.float64),
                "point": point.detach().double(),
                "labels": batch["labels"].double(),
                "masks": batch["choice_mask"].double(),
                **({"features": features.detach().double()} if features is not None else {}),
            }
        )
    _apply_leftovers(lane, [_gathered(part, ranks) for part in leftovers])
    keys = sorted(term_sums)
    totals = ranks.sum_(
        torch.tensor([float(loss_sum), float(hits), *(term_sums[k] for k in keys)], dtype=torch.float64)
    )
    micro = ranks.size * accum
    return StepOutcome(
        float(totals[0]) / micro, {k: float(v) / micro for k, v in zip(keys, totals[2:], strict=True)}, int(totals[1])
    )


def _gathered(part: dict[str, torch.Tensor], ranks: Ranks) -> dict[str, torch.Tensor]:
    """One accumulation pass's micro-batch tensors of every process, stacked in rank order (exactly)."""
    if ranks.size == 1:
        return part
    out = {}
    for key in sorted(part):
        value = part[key]
        whole = torch.zeros(ranks.size * value.shape[0], *value.shape[1:], dtype=value.dtype)
        whole[ranks.rank * value.shape[0] : (ranks.rank + 1) * value.shape[0]] = value
        out[key] = ranks.gather_rows(whole)
    return out


def _apply_leftovers(lane: TaskLane, parts: list[dict[str, torch.Tensor]]) -> None:
    """Feed the step's micro-batches, in order, to the exact head phase's buffer and to quality retaining."""
    for part in parts:
        labels, masks = part["labels"].long(), part["masks"].bool()
        if lane.retain is not None:
            lane.retain.update(part["idx"].long().tolist(), part["point"].float(), labels, masks)
        if lane.recent is not None and "features" in part:
            lane.recent.add(part["features"].float(), labels, masks)
