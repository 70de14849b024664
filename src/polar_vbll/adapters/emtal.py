"""EMTAL's MoEfied LoRA with router fading (Zhong et al. 2024, "Efficient Multi-Task Asynchronous Learner"), for
the gated FFN of causal LMs: down(act(gate(x)) ⊙ up(x)).

**MoEfication.** The I intermediate channels of each FFN are split into E experts of I/E channels by balanced
k-means over each channel's weights [W_gate[c, :], W_up[c, :], W_down[:, c]] (the paper clusters ViT's W_up columns
with their bias and W_downᵀ; a channel's gate and up rows are its "key", its down column its "value").
**LoRA per expert.** Each expert e gets its own rank-r update of its slices: rows C_e of gate_proj and up_proj,
columns C_e of down_proj: ΔW_gate[C_e, :] = s B_e A_e, ΔW_down[:, C_e] = s B'_e A'_e, with s = alpha / r.
**Router.** Per FFN, ω(x) = E · softmax(x W_r / τ) (E,) for each token x entering the FFN (already normalized by
the block's RMSNorm), scaling expert e's intermediate channels: down'((act(gate'(x)) ⊙ up'(x)) ⊙ ω_{e(c)}(x)).
W_r starts at 0, so ω = 1 and the adapted model starts as the base model.
**Router fading.** Over the last ``1 − fade_start`` of training the router is annealed to the constant 1:
ω ← α ω + (1 − α), α falling linearly from 1 to 0 at the last step (the trainer calls :meth:`on_step`). With α = 0
the FFN is a plain FFN with weights W + ΔW, so ``merge`` folds the experts' updates into the original weights and
:func:`~polar_vbll.adapters.injection.merge_and_unload` returns the base architecture: no inference overhead.

Quality retaining (the paper's multi-task regulariser) belongs to multi-task fits, not to the adapter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import PolarVBLLError
from ..fields import help_field as _help
from .base import ADAPTERS, AdapterConfig, AdapterLinear, AdapterMethod, LowRankConfig

# the gated FFN's projections and which side of each the experts split (rows: output channels, cols: input ones)
FFN_SIDES = {"gate_proj": "rows", "up_proj": "rows", "down_proj": "cols"}


@dataclass
class EmtalConfig(LowRankConfig):
    method = "emtal"
    target_modules: list[str] = _help(
        "the FFN projections to MoEfy: up_proj and down_proj, and gate_proj where the FFN is gated",
        default_factory=lambda: ["gate_proj", "up_proj", "down_proj"],
    )
    r: int = _help("rank of each expert's update of each projection", 2)
    alpha: float = _help("scale numerator: each expert's update is multiplied by alpha / r", 4.0)
    experts: int = _help("E experts per FFN (the intermediate size must be a multiple of E)", 4)
    router_temperature: float = _help("τ of the router's softmax", 1.0)
    fade_start: float = _help("fraction of training after which the router fades linearly to the constant 1", 0.8)
    kmeans_iterations: int = _help("balanced k-means iterations of the MoEfication", 10)
    seed: int = _help("seed of the k-means initialization", 0)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.target_modules, str) or not {"up_proj", "down_proj"} <= set(self.target_modules):
            raise PolarVBLLError("EmtalConfig.target_modules must list up_proj and down_proj (and gate_proj if gated)")
        unknown = sorted(set(self.target_modules) - set(FFN_SIDES))
        if unknown:
            raise PolarVBLLError(f"EmtalConfig.target_modules: {', '.join(unknown)} is not an FFN projection")
        if not isinstance(self.experts, int) or self.experts < 1:
            raise PolarVBLLError(f"EmtalConfig.experts must be a positive integer, got {self.experts!r}")
        if not self.router_temperature > 0:
            raise PolarVBLLError(f"EmtalConfig.router_temperature must be > 0, got {self.router_temperature}")
        if not 0.0 <= self.fade_start <= 1.0:
            raise PolarVBLLError(f"EmtalConfig.fade_start must lie in [0, 1], got {self.fade_start}")


def balanced_kmeans(points: torch.Tensor, clusters: int, iterations: int, seed: int) -> torch.Tensor:
    """Assign N points (N, d) to ``clusters`` clusters of exactly N / clusters points each; returns their indices
    (clusters, N / clusters), each row sorted. k-means++ seeding, then Lloyd iterations whose assignment step is
    greedy under the size constraint (pairs taken in order of distance, a point to its nearest non-full cluster)."""
    n = points.shape[0]
    if n % clusters:
        raise PolarVBLLError(f"EMTAL: {n} channels do not split into {clusters} equal experts")
    size = n // clusters
    points = points.double()
    generator = torch.Generator().manual_seed(seed)
    centers = points[torch.randint(n, (1,), generator=generator)]
    while centers.shape[0] < clusters:  # k-means++: the next center with probability ∝ squared distance
        weights = torch.cdist(points, centers).min(1).values.square()
        centers = torch.cat([centers, points[torch.multinomial(weights / weights.sum(), 1, generator=generator)]])
    assignment = torch.zeros(n, dtype=torch.long)
    for _ in range(max(iterations, 1)):
        distances = torch.cdist(points, centers)  # (N, K)
        order = distances.flatten().argsort(stable=True)
        assignment.fill_(-1)
        counts = [0] * clusters
        for flat in order.tolist():
            point, cluster = divmod(flat, clusters)
            if assignment[point] < 0 and counts[cluster] < size:
                assignment[point] = cluster
                counts[cluster] += 1
        centers = torch.stack([points[assignment == k].mean(0) for k in range(clusters)])
    return torch.stack([torch.nonzero(assignment == k).flatten() for k in range(clusters)])


class ExpertRouter(nn.Module):
    """The router W_r (E, d) of one FFN, the expert weights of the tokens in flight and the fading α."""

    alpha: torch.Tensor

    def __init__(self, hidden: int, experts: int, temperature: float, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(experts, hidden, device=device))
        self.temperature = temperature
        self.register_buffer("alpha", torch.ones((), device=device))  # saved: a loaded model fades as it was
        self.weights: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> None:
        """ω(x) = E · softmax(x W_rᵀ / τ) per token, faded: α ω + (1 − α); nothing to compute once α = 0."""
        if float(self.alpha) == 0.0:
            self.weights = None
            return
        logits = x.float() @ self.weight.T / self.temperature
        experts = self.weight.shape[0]
        self.weights = self.alpha * experts * logits.softmax(-1) + (1.0 - self.alpha)

    def channel_scale(self, channel_expert: torch.Tensor) -> torch.Tensor | None:
        """(…, I) the weight of each intermediate channel's expert, for the tokens routed last (None: all ones)."""
        return None if self.weights is None else self.weights[..., channel_expert]


class EmtalLinear(AdapterLinear):
    """One FFN projection with E experts' rank-r updates: ``lora_A`` (E, r, in_e), ``lora_B`` (E, out_e, r) and the
    channel indices of each expert, ``channels`` (E, I/E). gate/up (rows): in_e = d, out_e = I/E; down (cols):
    in_e = I/E, out_e = d. The router lives in the FFN's first row-side projection and scales down_proj's input."""

    keeps_model_state = True
    router: ExpertRouter
    channels: torch.Tensor
    channel_expert: torch.Tensor

    def __init__(
        self,
        base_layer: nn.Linear,
        config: EmtalConfig,
        *,
        side: str,
        channels: torch.Tensor,
        owner: bool,
        router_module: ExpertRouter,
        **init,
    ):
        super().__init__(base_layer, config, **init)
        if owner:
            self.router = router_module  # saved with this layer
        else:
            object.__setattr__(self, "router", router_module)  # read, not held
        experts, per_expert = channels.shape
        device = base_layer.weight.device
        self.side = side
        self.register_buffer("channels", channels.to(device).clone())  # its own copy: saved per layer
        self.register_buffer("channel_expert", self.experts_of_channels(), persistent=False)
        in_e, out_e = (self.in_features, per_expert) if side == "rows" else (per_expert, self.out_features)
        self.lora_A = nn.Parameter(torch.empty(experts, config.r, in_e, device=device))
        self.lora_B = nn.Parameter(torch.zeros(experts, out_e, config.r, device=device))
        bound = 1.0 / math.sqrt(in_e)  # nn.Linear's (and LoRA's) Kaiming-uniform bound, per expert
        nn.init.uniform_(self.lora_A, -bound, bound)
        self.owner = owner
        self.fade_start = config.fade_start

    @classmethod
    def plan(cls, model: nn.Module, config: AdapterConfig, names: list[str], restore: bool, **data) -> dict[str, dict]:
        """Per FFN: the balanced k-means experts of its channels (identity placeholder when restoring: the saved
        indices are loaded over it) and one router, held by its first row-side projection."""
        assert isinstance(config, EmtalConfig)
        super().plan(model, config, names, restore, **data)
        blocks: dict[str, dict[str, str]] = {}
        for name in names:
            parent, _, child = name.rpartition(".")
            blocks.setdefault(parent, {})[child] = name
        options: dict[str, dict] = {}
        for parent, members in blocks.items():
            if not {"up_proj", "down_proj"} <= set(members):
                raise PolarVBLLError(f"EMTAL: {parent} needs up_proj and down_proj among the targets")
            linear: dict[str, Any] = {k: model.get_submodule(v) for k, v in members.items()}
            channels_total = linear["down_proj"].in_features
            if channels_total % config.experts:
                raise PolarVBLLError(
                    f"EMTAL: {parent} has {channels_total} channels, not a multiple of experts={config.experts}"
                )
            if restore:
                channels = torch.arange(channels_total).reshape(config.experts, -1)
            else:
                with torch.no_grad():
                    keys = [linear[k].weight.float() for k in ("gate_proj", "up_proj") if k in linear]
                    points = torch.cat([*keys, linear["down_proj"].weight.float().T], dim=1).cpu()
                channels = balanced_kmeans(points, config.experts, config.kmeans_iterations, config.seed)
            router = ExpertRouter(
                linear["up_proj"].in_features,
                config.experts,
                config.router_temperature,
                device=linear["up_proj"].weight.device,
            )
            owner = "gate_proj" if "gate_proj" in members else "up_proj"
            for child, name in members.items():
                owns = child == owner
                options[name] = {"side": FFN_SIDES[child], "channels": channels, "owner": owns, "router_module": router}
        return {name: options[name] for name in names}

    def experts_of_channels(self) -> torch.Tensor:
        """(I,) the expert of each intermediate channel, from ``channels``."""
        experts, per_expert = self.channels.shape
        expert_of = torch.empty(experts * per_expert, dtype=torch.long, device=self.channels.device)
        expert_of[self.channels.flatten()] = torch.arange(experts, device=self.channels.device).repeat_interleave(
            per_expert
        )
        return expert_of

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        super().load_adapter_state(state)
        self.channel_expert = self.experts_of_channels()  # the saved experts, not the placeholder's

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.lora_A.dtype)
        if self.side == "rows":  # expert e writes its channels: (…, E, I/E) scattered to (…, I)
            per_expert = torch.einsum("...d,erd,ecr->...ec", x, self.lora_A, self.lora_B)
            out = per_expert.new_zeros(*x.shape[:-1], self.out_features)
            out[..., self.channels.flatten()] = per_expert.flatten(-2)
            return out * self.scaling
        gathered = x[..., self.channels]  # (…, E, I/E): each expert reads its channels
        return torch.einsum("...ec,erc,edr->...d", gathered, self.lora_A, self.lora_B) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        if self.owner:
            self.router.route(x)
        if self.side == "cols":
            scale = self.router.channel_scale(self.channel_expert)
            if scale is not None:
                x = (x.float() * scale).to(x.dtype)
        return super().forward(x)

    def delta_weight(self) -> torch.Tensor:
        weight = torch.zeros(self.out_features, self.in_features, device=self.lora_A.device)
        blocks = torch.einsum("eor,eri->eoi", self.lora_B, self.lora_A) * self.scaling
        if self.side == "rows":
            weight[self.channels.flatten()] = blocks.flatten(0, 1)
        else:
            weight[:, self.channels.flatten()] = blocks.permute(1, 0, 2).flatten(1)
        return weight

    @torch.no_grad()
    def merge(self) -> None:
        alpha = float(self.router.alpha)
        if alpha != 0.0:
            raise PolarVBLLError(
                f"EMTAL merges after its router has faded (alpha = 0); this one is at alpha = {alpha:g}"
            )
        super().merge()

    def on_step(self, step: int, total: int) -> None:
        """Router fading: α = 1 until ``fade_start`` of the ``total`` steps, then linearly to 0 at the last step."""
        if not self.owner:
            return
        start = math.floor(self.fade_start * total)
        alpha = 1.0 if step < start else max(0.0, 1.0 - (step - start + 1) / max(total - start, 1))
        self.router.alpha.fill_(alpha)

    def low_rank_factors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.delta_weight(), None


ADAPTERS.register("emtal", AdapterMethod(EmtalConfig, EmtalLinear))
