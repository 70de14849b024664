"""The one prediction path: probabilities, uncertainty and OOD scores of any head (zero-shot is a point head)."""

from __future__ import annotations

import time
from contextlib import nullcontext

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import FitConfig
from ..data import TaskSpec, encoded_batches, label_token_ids
from ..distributed import Ranks, current_ranks
from ..metrics import classification_metrics, criterion_scores, selective_metrics
from ..models import Backbone
from ..uq import UQHead, uncertainty_decomposition
from ..uq.point import PointHead
from .attack import EmbeddingAttack


def zero_shot_head(backbone: Backbone, task: TaskSpec) -> PointHead:
    """The model's own answer: a point head of its LM-head rows (and bias) at the task's label tokens."""
    answer = backbone.answer_head(label_token_ids(backbone.tokenizer, task.label_words(), task.name))
    return PointHead(answer.weight.detach().float(), init_bias=None if answer.bias is None else answer.bias.detach())


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
    padding_side: str = "right",
    desc: str = "evaluating",
    attack: EmbeddingAttack | None = None,
    ranks: Ranks | None = None,
) -> dict:
    """Probabilities (N, C), per-example total / aleatoric / epistemic uncertainty and the ID score of every OOD
    criterion the head supports (``scores``), in data order; with ``return_logits`` the logit samples (N, S, C);
    ``prompts``: how many prompts lost their start to ``max_length`` and their mean length in tokens. ``attack``:
    each batch's prompts attacked first (:mod:`~polar_vbll.engine.attack`).

    Batch b draws its samples from a generator seeded by (``seed``, b), and under several processes (``ranks``,
    default: the launcher's) each computes its own batches and all receive the whole result: the same numbers
    whatever the number of processes (:mod:`~polar_vbll.distributed`)."""
    backbone.eval()
    head.eval()
    ranks = current_ranks() if ranks is None else ranks
    stats: dict = {}
    batches = encoded_batches(
        backbone.tokenizer, task, items, max_length, batch_size, padding_side=padding_side, stats=stats
    )
    out: dict = {k: np.zeros(len(items)) for k in ("total", "aleatoric", "epistemic")}
    out["probs"] = np.zeros((len(items), task.num_classes))
    scores: dict[str, np.ndarray] = {}
    bar = tqdm(total=len(items), desc=desc, unit="ex", disable=not progress or not ranks.main)
    for number, (idx, batch) in enumerate(batches):
        if not ranks.owns(number):
            continue
        generator = torch.Generator().manual_seed(seed * 1_000_003 + number)
        with attack.applied(backbone, head, batch) if attack is not None else nullcontext():
            probs, logits = head.predict_batch(backbone, batch, n_samples, generator)
        out["probs"][idx] = probs.double().numpy()
        if return_logits:
            out.setdefault("logits", np.zeros((len(items), *logits.shape[1:])))[idx] = logits.double().numpy()
        for key, part in uncertainty_decomposition(torch.softmax(logits, -1)).items():
            out[key][idx] = part.double().numpy()
        for key, value in criterion_scores(logits, head.stochastic).items():
            scores.setdefault(key, np.zeros(len(items)))[idx] = value
        bar.update(len(idx))
    bar.close()
    if ranks.size > 1:  # a process may have had no batch: it learns the shapes of what it did not compute
        own = {"scores": sorted(scores), "logits": list(out["logits"].shape) if "logits" in out else None}
        every = ranks.all_objects(own)
        shape = next((o["logits"] for o in every if o["logits"] is not None), None)
        if return_logits and shape is not None and "logits" not in out:
            out["logits"] = np.zeros(shape)
        for key in sorted({key for o in every for key in o["scores"]}):
            scores.setdefault(key, np.zeros(len(items)))
    for key in ("total", "aleatoric", "epistemic", "probs", *(("logits",) if "logits" in out else ())):
        out[key] = ranks.gather_rows(out[key])
    order = sorted(scores) if ranks.size > 1 else scores  # every process reduces the keys in the same order
    out["scores"] = {key: ranks.gather_rows(scores[key]) for key in order}
    out["prompts"] = stats
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
    attack: EmbeddingAttack | None = None,
) -> dict:
    """Metrics (cls/, cal/, sel/, unc/), probabilities and OOD criterion scores on ``split`` (or on ``items``),
    of the prompts as given or under ``attack``."""
    split = split or config.eval_split or task.eval_split
    items = task.load(split)[: limit or None] if items is None else items
    start = time.perf_counter()
    pred = predict(
        backbone,
        head,
        task,
        items,
        config.eval_batch_size,
        config.max_length,
        config.seed,
        progress=progress,
        attack=attack,
        desc="evaluating" if attack is None else f"evaluating under {attack.method.value}",
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
