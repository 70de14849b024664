"""AMT's LoRA pool: one PiSSA-initialized LoRA per robustness level, each meta-tuned on episodes of the source tasks
under an input attack of radius ε and a weight perturbation of size γ (:mod:`.perturbation`).

An episode (:mod:`polar_vbll.data.episodes`) of a source task gives class prototypes p_c, the mean support
features (no gradient), and a prototype classifier of the query, logits_c(f) = scale · cos(f, p_c), as the
official code's ProtoNet. The loss of an episode (TRADES, as the official code):

    L = CE(logits(f(x)), y) + β · KL(softmax logits(f(x)) ‖ softmax logits(f(x + δ_x))),

δ_x the query's PGD attack of radius ε on the input embeddings (:mod:`polar_vbll.engine.attack`); with γ > 0 the
gradient of L is taken at the adapter weights w + δ_w, δ_w = γ ‖w‖ g/‖g‖ along the gradient g of L at w. Every
member sees the same episodes (one generator per pool). Folder: ``pool.json`` and ``members/<k>/`` (an adapter
folder each, written atomically; a rerun skips finished members).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from ..adapters import PissaConfig, adapter_parameters, adapter_state_dict, inject_adapters, load_adapter_state
from ..adapters.files import save_adapter
from ..atomic import atomic_write_json
from ..data import encoded_batches, get_task
from ..data.episodes import Episode, sample_episode
from ..engine.attack import AttackMethod, EmbeddingAttack, embedding_offset
from ..engine.quality import masked_kl
from ..errors import PolarVBLLError
from ..fields import check_types
from ..fields import help_field as _help
from ..models import Backbone, load_backbone
from ..models.precision import resolved_name
from ..outputs import OutputKind, claim, prepare_output
from ..stored import load_tensors, read_json
from .perturbation import perturbed, relative_perturbation

POOL_FILE = "pool.json"


@dataclass
class PoolConfig:
    """A LoRA pool: the model, source tasks, robustness levels and the meta-tuning recipe."""

    model: str = _help("embedded model name, Hugging Face id or local folder", "smollm2-135m")
    sources: list[str] = _help("source tasks to meta-tune on", default_factory=lambda: ["sst2", "boolq", "obqa"])
    epsilons: list[float] = _help("input attack radius ε of each member (relative to token embedding norms)",
                                  default_factory=lambda: [0.0, 0.02, 0.05])  # fmt: skip
    gammas: list[float] = _help("weight perturbation γ of each member (share of each factor's norm)",
                                default_factory=lambda: [0.0, 0.005, 0.01])  # fmt: skip
    r: int = _help("rank of every member (PiSSA-initialized LoRA)", 8)
    alpha: float = _help("scale numerator: s = alpha / r", 16.0)
    target_modules: list[str] = _help("Linear modules to adapt", default_factory=lambda: ["q_proj", "v_proj"])
    steps: int = _help("episodes each member is meta-tuned on", 100)
    shots: int = _help("support examples per class in an episode", 4)
    queries: int = _help("query examples per class in an episode", 4)
    lr: float = _help("Adam learning rate of the members", 1e-4)
    beta: float = _help("β: weight of the robust KL term", 1.0)
    attack_steps: int = _help("PGD steps of the input attack", 3)
    scale: float = _help("scale of the prototype classifier's cosine logits", 10.0)
    max_length: int = _help("token budget per prompt", 256)
    precision: Literal["fp32", "bf16", "auto"] = _help("compute precision (auto: bf16 where the CPU has it)", "auto")
    seed: int = _help("seed of the episodes", 0)

    def __post_init__(self):
        check_types(self)
        if not self.sources or len(self.epsilons) != len(self.gammas) or not self.epsilons:
            raise PolarVBLLError("PoolConfig: one or more sources, and as many epsilons as gammas (one per member)")
        if min(self.epsilons + self.gammas) < 0:
            raise PolarVBLLError(f"PoolConfig: epsilons and gammas must be >= 0, got {self.epsilons}, {self.gammas}")
        for name in ("r", "steps", "shots", "attack_steps", "max_length"):
            if getattr(self, name) < 1:
                raise PolarVBLLError(f"PoolConfig.{name}: must be >= 1, got {getattr(self, name)}")

    @property
    def adapter(self) -> PissaConfig:
        return PissaConfig(r=self.r, alpha=self.alpha, target_modules=list(self.target_modules))


@dataclass
class Pool:
    """A trained pool: its config, each member's adapter state and the meta-tuning log."""

    folder: Path
    config: PoolConfig
    members: list[dict[str, torch.Tensor]] = field(default_factory=list)
    log: list[dict] = field(default_factory=list)


def prototype_logits(support: torch.Tensor, labels: torch.Tensor, n_classes: int, scale: float):
    """logits(f, choice_mask) = scale · cos(f, p_c) with p_c the mean ``support`` feature of class c (−∞ for a class
    the support lacks, as for a choice the question lacks)."""
    present = torch.zeros(n_classes, dtype=torch.bool)
    present[labels.unique()] = True
    prototypes = torch.stack([support[labels == c].mean(0) if present[c] else support[0] for c in range(n_classes)])
    normalized = torch.nn.functional.normalize(prototypes, dim=-1)

    def logits(features: torch.Tensor, choice_mask: torch.Tensor) -> torch.Tensor:
        cos = torch.nn.functional.normalize(features.float(), dim=-1) @ normalized.T
        return (scale * cos).masked_fill(~(choice_mask & present), float("-inf"))

    return logits


def episode_loss(backbone: Backbone, episode: Episode, task, config: PoolConfig, epsilon: float):
    """(L of the module docstring, query accuracy) for one episode; the attack (ε > 0) is drawn inside."""
    support = next(encoded_batches(backbone.tokenizer, task, episode.support, config.max_length, 10**6))[1]
    query = next(encoded_batches(backbone.tokenizer, task, episode.query, config.max_length, 10**6))[1]
    with torch.no_grad():
        features = backbone.features(support["input_ids"], support["attention_mask"])
    logits = prototype_logits(features, support["labels"], task.num_classes, config.scale)
    clean = logits(backbone.features(query["input_ids"], query["attention_mask"]), query["choice_mask"])
    loss = torch.nn.functional.cross_entropy(clean, query["labels"])
    if epsilon > 0:
        delta = EmbeddingAttack(AttackMethod.PGD, epsilon, config.attack_steps).perturbation(backbone, logits, query)
        with embedding_offset(backbone, delta):
            attacked = logits(backbone.features(query["input_ids"], query["attention_mask"]), query["choice_mask"])
        loss = loss + config.beta * masked_kl(clean, attacked, query["choice_mask"]).mean()
    accuracy = float((clean.argmax(-1) == query["labels"]).float().mean())
    return loss, accuracy


def build_pool(config: PoolConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True) -> Pool:
    """Meta-tune every member of ``config`` into the pool folder ``out`` (finished members of an earlier run of the
    same config are kept)."""
    out = Path(out)
    recorded = read_json(out / POOL_FILE, "AMT pool") if (out / POOL_FILE).is_file() else None
    same = recorded is not None and recorded["config"] == asdict(config)
    if not same:
        prepare_output(out, OutputKind.POOL, overwrite=overwrite)
        claim(out, POOL_FILE, "members")
        atomic_write_json(out / POOL_FILE, {"config": asdict(config), "members": []})
    backbone = load_backbone(config.model)
    backbone.set_precision(resolved_name(config.precision))
    inject_adapters(backbone.model, config.adapter)
    initial = {k: v.clone() for k, v in adapter_state_dict(backbone.model).items()}
    tasks = [get_task(name, None, registered_first=True) for name in config.sources]
    items = [task.load("train") for task in tasks]
    log = read_json(out / POOL_FILE, "AMT pool")["members"]
    for k, (epsilon, gamma) in enumerate(zip(config.epsilons, config.gammas, strict=True)):
        folder = out / "members" / str(k)
        if k < len(log) and (folder / "adapter_model.safetensors").is_file():
            continue
        load_adapter_state(backbone.model, initial)
        params = adapter_parameters(backbone.model)
        optimizer = torch.optim.Adam(params, lr=config.lr)
        generator = torch.Generator().manual_seed(config.seed)  # every member sees the same episodes
        start, accuracies = time.perf_counter(), []
        for step in tqdm(range(config.steps), desc=f"member {k} (ε {epsilon}, γ {gamma})", disable=not progress):
            t = step % len(tasks)
            episode = sample_episode(items[t], config.shots, config.queries, generator, tasks[t].name)
            backbone.train()
            loss, accuracy = episode_loss(backbone, episode, tasks[t], config, epsilon)
            if gamma > 0:  # the gradient at w + δ_w (the same episode and attack draw)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                with perturbed(params, relative_perturbation(params, list(grads), gamma)):
                    loss, _ = episode_loss(backbone, episode, tasks[t], config, epsilon)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            accuracies.append(accuracy)
        save_adapter(backbone.model, folder)
        tail = accuracies[-max(1, len(accuracies) // 5) :]
        log = log[:k] + [{"epsilon": epsilon, "gamma": gamma, "train_s": time.perf_counter() - start,
                           "query_acc_last_fifth": sum(tail) / len(tail)}]  # fmt: skip
        atomic_write_json(out / POOL_FILE, {"config": asdict(config), "members": log})
    return load_pool(out)


def load_pool(folder: str | Path) -> Pool:
    """A pool folder written by :func:`build_pool`: its config and every member's adapter state."""
    folder = Path(folder)
    data = read_json(folder / POOL_FILE, "AMT pool")
    config = PoolConfig(**data["config"])
    if len(data["members"]) != len(config.epsilons):
        raise PolarVBLLError(f"{folder}: {len(data['members'])} of {len(config.epsilons)} members trained; rerun")
    members = [
        load_tensors(folder / "members" / str(k) / "adapter_model.safetensors", "pool member")
        for k in range(len(config.epsilons))
    ]
    return Pool(folder, config, members, data["members"])
