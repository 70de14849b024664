"""AMT's test-time step: score each pool member on a target task's K-shot support set, merge the best into one plain
LoRA adapter (:mod:`.merging`), and write it as an adapter folder that ``fit --adapter-init`` starts from.

The support set is the one ``fit --train-shots K --seed S`` trains on (the same seeded episode of the training
split), so the merge and the few-shot fit see the same examples and nothing else of the task.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..adapters import LoraConfig, inject_adapters, load_adapter_state
from ..adapters.residual import write_lora
from ..atomic import atomic_write_json
from ..config import FitConfig
from ..data import encoded_batches, get_task
from ..engine.attack import embedding_offset
from ..engine.build import training_items
from ..errors import PolarVBLLError
from ..models import load_backbone
from ..models.precision import resolved_name
from ..outputs import OutputKind, claim, prepare_output
from .merging import member_score, merged_factors, routing_weights
from .pool import load_pool

MERGE_FILE = "amt.json"


@dataclass(frozen=True)
class MergeOptions:
    """How members are scored and merged: ``top_k`` members kept, routing sharpness ``beta``, the score's
    intra/inter balance ``gamma``, the relative radius of the support's perturbed view ``view_radius``; ``candidates``:
    the members that may be chosen (default all; ``(0,)`` turns the pool's first member alone into a plain LoRA)."""

    top_k: int = 2
    beta: float = 10.0
    gamma: float = 0.5
    view_radius: float = 0.05
    candidates: tuple[int, ...] | None = None


def adapt(pool_dir: str | Path, task: str, out: str | Path, shots: int, seed: int = 0, options=MergeOptions()):
    """Score and merge the pool in ``pool_dir`` on ``shots`` support examples per class of ``task``; write the
    merged plain LoRA adapter (``out/adapter``) and the scores and weights (``out/amt.json``); returns that record."""
    pool = load_pool(pool_dir)
    config = pool.config
    out = prepare_output(out, OutputKind.ADAPTER)
    spec = get_task(task)
    fit_config = FitConfig.from_dict(  # the support fit --train-shots trains on (no calibration examples held out)
        {"model": config.model, "task": task, "train_shots": shots, "seed": seed, "calibration_holdout": False}
    )
    support, _ = training_items(spec, fit_config)
    backbone = load_backbone(config.model)
    backbone.set_precision(resolved_name(config.precision))
    inject_adapters(backbone.model, config.adapter)
    backbone.eval()
    batch = next(encoded_batches(backbone.tokenizer, spec, support, config.max_length, 10**6))[1]
    labels = batch["labels"]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        embeddings = backbone.model.get_input_embeddings()(batch["input_ids"]).float()
        direction = torch.nn.functional.normalize(torch.randn(embeddings.shape, generator=generator), dim=-1)
        view = options.view_radius * embeddings.norm(dim=-1, keepdim=True) * direction
        view = view * batch["attention_mask"][..., None]
        scores = []
        for member in pool.members:
            load_adapter_state(backbone.model, member)
            clean = backbone.features(batch["input_ids"], batch["attention_mask"])
            with embedding_offset(backbone, view):
                viewed = backbone.features(batch["input_ids"], batch["attention_mask"])
            scores.append(member_score(clean, viewed, labels, options.gamma))
    eligible = list(options.candidates) if options.candidates is not None else list(range(len(scores)))
    if not eligible or not set(eligible) <= set(range(len(scores))):
        raise PolarVBLLError(f"candidates {eligible}: the pool has members 0..{len(scores) - 1}")
    ranked = routing_weights([scores[k] for k in eligible], options.beta, options.top_k)
    weights = {eligible[k]: w for k, w in ranked.items()}
    chosen = list(weights)
    rank = (len(chosen) + 1) * config.r
    scaling = config.alpha / config.r
    lora = LoraConfig(r=rank, alpha=scaling * rank, target_modules=list(config.target_modules), dropout=0.0)
    state = {}
    for key in (k for k in pool.members[0] if k.endswith(".lora_A")):
        name = key.removesuffix(".lora_A")
        members = [(pool.members[k][f"{name}.lora_B"], pool.members[k][f"{name}.lora_A"]) for k in chosen]
        initial = (pool.members[0][f"{name}.init_B"], pool.members[0][f"{name}.init_A"])
        b, a = merged_factors(members, initial, [weights[k] for k in chosen])
        state[f"{name}.lora_B"], state[f"{name}.lora_A"] = b.contiguous(), a.contiguous()
    claim(out, "adapter", MERGE_FILE)
    write_lora(out / "adapter", lora, state, {"merged_from": "amt"})
    record = {
        "pool": str(pool_dir),
        "task": spec.name,
        "shots": shots,
        "seed": seed,
        "support": len(support),
        "scores": scores,
        "weights": {str(k): w for k, w in weights.items()},
        "levels": [{"epsilon": e, "gamma": g} for e, g in zip(config.epsilons, config.gammas, strict=True)],
        "options": asdict(options),
        "adapter": lora.to_dict(),
        "fit": (
            f"polar-vbll fit --task {task} --train-shots {shots} --seed {seed} --model {config.model} --adapter lora "
            f"--r {rank} --alpha {scaling * rank} --target-modules {' '.join(config.target_modules)} "
            f"--adapter-init {out / 'adapter'}"
        ),
    }
    atomic_write_json(out / MERGE_FILE, record)
    return record
