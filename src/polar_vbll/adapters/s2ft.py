"""S2FT (Yang et al. 2024): structured sparse fine-tuning of a few attention heads and FFN channels per block.

A head couples q/k/v rows and o_proj input columns; an FFN channel couples gate/up rows and the down_proj input
column. Per block, S2FT selects ``head_ratio`` of the heads and ``channel_ratio`` of the channels and permutes the
coupled matrices consistently — the model's function is unchanged — so that the selected parts are the *first*
rows/columns of each matrix: one dense block per target, trained as ΔW on that block (zero at init).
``merge()`` fuses the block into the permuted weight for deployment, ``unmerge()`` takes it out again.

With grouped-query attention a head must stay with its key/value group, so heads are permuted group by group:
selection takes whole groups in (random or weight-norm) order and then heads within the last group, which keeps the
selected heads contiguous. k/v rows of the groups that hold a selected head are trainable.
Unlike the paper's code, which trains the selected weights in place, the block is a separate ΔW; gradients and Adam
updates are the same, weight decay (MAP) acts on ΔW instead of on the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..errors import PolarVBLLError
from ..fields import help_field as _help
from .base import ADAPTERS, AdapterConfig, AdapterLinear, AdapterMethod
from .capabilities import Capability, LinearMap

ATTENTION = {"q_proj": "rows", "k_proj": "rows", "v_proj": "rows", "o_proj": "cols"}
FFN = {"gate_proj": "rows", "up_proj": "rows", "down_proj": "cols"}


@dataclass
class S2FTConfig(AdapterConfig):
    method = "s2ft"
    target_modules: list[str] = _help(
        "coupled matrices whose selected block is trained: q_proj, k_proj, v_proj, o_proj (heads), gate_proj, "
        "up_proj, down_proj (FFN channels)",
        default_factory=lambda: ["o_proj", "down_proj"],
    )
    head_ratio: float = _help("fraction of attention heads selected per block (at least one)", 0.1)
    channel_ratio: float = _help("fraction of FFN channels selected per block (at least one)", 0.01)
    selection: Literal["random", "weight_norm"] = _help(
        "how heads/channels are chosen: seeded random, or largest output-projection column norm", "random"
    )
    seed: int = _help("seed of the random selection", 0)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.target_modules, str):
            raise PolarVBLLError("S2FTConfig.target_modules must be a list of projection names, not a regex")
        unknown = [t for t in self.target_modules if t not in ATTENTION and t not in FFN]
        if unknown:
            raise PolarVBLLError(
                f"S2FTConfig.target_modules: {', '.join(unknown)} has no coupled partner in S2FT's structure; "
                f"choose from {', '.join([*ATTENTION, *FFN])}"
            )
        self._check_ratio("head_ratio")
        self._check_ratio("channel_ratio")
        if self.selection not in ("random", "weight_norm"):
            raise PolarVBLLError(f"S2FTConfig.selection must be 'random' or 'weight_norm', got {self.selection!r}")


def _unit_permutation(units: int, size: int, order: torch.Tensor) -> torch.Tensor:
    """Index permutation of ``units`` contiguous slices of ``size`` rows each, in ``order``."""
    return (order[:, None] * size + torch.arange(size)).reshape(-1)


# Any: a Hugging Face attention / MLP module, whose attributes (config, head_dim, o_proj, ...) are the architecture's
def _attention_plan(attn: Any, config: S2FTConfig, generator, restore: bool):
    heads, kv_heads = attn.config.num_attention_heads, attn.config.num_key_value_heads
    dim, group = attn.head_dim, heads // kv_heads
    chosen = min(heads, max(1, round(config.head_ratio * heads)))
    chosen_groups = math.ceil(chosen / group)
    sizes = {
        "q_proj": chosen * dim,
        "o_proj": chosen * dim,
        "k_proj": chosen_groups * dim,
        "v_proj": chosen_groups * dim,
    }
    if restore:
        return sizes, {}
    if config.selection == "random":
        group_order = torch.randperm(kv_heads, generator=generator)
        within = [torch.randperm(group, generator=generator) for _ in range(kv_heads)]
    else:
        head_norm = (
            attn.o_proj.weight.detach().float().reshape(-1, heads, dim).norm(dim=(0, 2)).reshape(kv_heads, group)
        )
        group_order = head_norm.sum(1).argsort(descending=True)
        within = [head_norm[g].argsort(descending=True) for g in range(kv_heads)]
    head_order = torch.cat([g * group + within[g] for g in group_order.tolist()])
    head_perm = _unit_permutation(heads, dim, head_order)
    kv_perm = _unit_permutation(kv_heads, dim, group_order)
    return sizes, {"q_proj": head_perm, "o_proj": head_perm, "k_proj": kv_perm, "v_proj": kv_perm}


def _ffn_plan(mlp: Any, config: S2FTConfig, generator, restore: bool):
    channels = mlp.down_proj.in_features
    chosen = min(channels, max(1, round(config.channel_ratio * channels)))
    sizes = dict.fromkeys(FFN, chosen)
    if restore:
        return sizes, {}
    if config.selection == "random":
        order = torch.randperm(channels, generator=generator)
    else:
        order = mlp.down_proj.weight.detach().float().norm(dim=0).argsort(descending=True)
    return sizes, dict.fromkeys(FFN, order)


class S2FTLinear(AdapterLinear):
    """A coupled matrix of an S2FT block: base weight permuted along ``axis`` by the buffer ``s2ft_perm``; a
    trainable ``s2ft_delta`` on the first ``trainable`` rows (out: k×in) or columns (cols: out×k), or none."""

    alters_base = True
    capabilities = frozenset({Capability.LINEAR_MAPS})
    s2ft_perm: torch.Tensor
    s2ft_delta: nn.Parameter | None

    def __init__(self, base_layer: nn.Linear, config: S2FTConfig, axis: str, trainable: int, perm=None):
        super().__init__(base_layer, config)
        self.axis = axis
        length = self.out_features if axis == "rows" else self.in_features
        self.register_buffer("s2ft_perm", torch.arange(length))
        shape = (trainable, self.in_features) if axis == "rows" else (self.out_features, trainable)
        self.s2ft_delta = nn.Parameter(torch.zeros(shape, device=base_layer.weight.device)) if trainable else None
        if perm is not None:
            self._permute_base(perm)

    @torch.no_grad()
    def _permute_base(self, perm: torch.Tensor) -> None:
        """Re-permute the base from its current order (``s2ft_perm`` of the original) to ``perm`` of the original."""
        current = self.s2ft_perm
        step = current.argsort()[perm]  # new[i] = original[perm[i]] = current[inverse(current)[perm[i]]]
        weight = self.base_layer.weight
        if self.axis == "rows":
            weight.copy_(weight[step])
            if self.base_layer.bias is not None:
                self.base_layer.bias.copy_(self.base_layer.bias[step])
        else:
            weight.copy_(weight[:, step])
        self.s2ft_perm.copy_(perm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.s2ft_delta is None:
            return self.base_layer(x)
        return super().forward(x)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.s2ft_delta
        assert delta is not None  # forward() skips the delta of a partner without a trained block
        if self.axis == "cols":
            return x[..., : delta.shape[1]].to(delta.dtype) @ delta.T
        part = x.to(delta.dtype) @ delta.T
        return nn.functional.pad(part, (0, self.out_features - delta.shape[0]))

    def delta_weight(self) -> torch.Tensor:
        weight = torch.zeros(self.out_features, self.in_features, device=self.base_layer.weight.device)
        if self.s2ft_delta is not None:
            k = self.s2ft_delta.shape[0 if self.axis == "rows" else 1]
            if self.axis == "rows":
                weight[:k] = self.s2ft_delta
            else:
                weight[:, :k] = self.s2ft_delta
        return weight

    def linear_maps(self) -> list[LinearMap]:
        """The trained block (none for a coupled partner without one): rows: a = x, g = ∂y[:k]; cols: a = x[:k]."""
        if self.s2ft_delta is None:
            return []
        k = self.s2ft_delta.shape[1 if self.axis == "cols" else 0]
        if self.axis == "cols":
            return [LinearMap("delta", self.s2ft_delta, lambda x, go: (x[..., :k], go))]
        return [LinearMap("delta", self.s2ft_delta, lambda x, go: (x, go[..., :k]))]

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        if "s2ft_perm" in state:
            self._permute_base(state["s2ft_perm"])
        super().load_adapter_state({k: v for k, v in state.items() if k != "s2ft_perm"})

    @classmethod
    def plan(cls, model, config: AdapterConfig, names, restore, **data):
        super().plan(model, config, names, restore, **data)
        assert isinstance(config, S2FTConfig)
        blocks: dict[tuple[str, bool], nn.Module] = {}
        for name in names:
            parent, _, child = name.rpartition(".")
            partners = ATTENTION if child in ATTENTION else FFN
            module = model.get_submodule(parent)
            missing = [p for p in partners if not isinstance(getattr(module, p, None), nn.Linear)]
            if missing:
                raise PolarVBLLError(
                    f"S2FT target {name} has no coupled partner {', '.join(missing)} in {type(module).__name__}"
                )
            blocks.setdefault((parent, partners is ATTENTION), module)
        options = {}
        for index, ((parent, is_attention), module) in enumerate(sorted(blocks.items(), key=lambda kv: kv[0])):
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + index)
            make = _attention_plan if is_attention else _ffn_plan
            sizes, perms = make(module, config, generator, restore)
            for child, axis in (ATTENTION if is_attention else FFN).items():
                name = f"{parent}.{child}"
                options[name] = {
                    "axis": axis,
                    "trainable": sizes[child] if name in names else 0,
                    "perm": perms.get(child),
                }
        return options


ADAPTERS.register("s2ft", AdapterMethod(S2FTConfig, S2FTLinear))
