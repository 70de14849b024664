"""DoRA (Liu et al. 2024): W' = m · (W + ΔW) / ‖W + ΔW‖, row norms, ΔW = (alpha / r) · B A as in LoRA.

As in the paper (Sec. 4.3) and PEFT, the norm is treated as a constant in the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import ADAPTERS, AdapterLinear, AdapterMethod, LowRankConfig
from .lora import LoraLinear


@dataclass
class DoraConfig(LowRankConfig):
    method = "dora"


class DoraLinear(LoraLinear):
    """LoRA factors plus ``magnitude`` (out,), initialized to the row norms of the base weight."""

    # the column normalization makes ΔW nonlinear in A and B: no linear maps, no linear Gaussian factor
    capabilities = frozenset()
    linear_maps = AdapterLinear.linear_maps
    gaussian_factor = AdapterLinear.gaussian_factor

    def __init__(self, base_layer: nn.Linear, config: LowRankConfig, **init):
        super().__init__(base_layer, config, **init)
        self.magnitude = nn.Parameter(base_layer.weight.detach().float().norm(dim=1))

    def _direction_norm(self) -> torch.Tensor:
        """‖W + ΔW‖ per output row (out,), detached."""
        with torch.no_grad():
            return (self.base_layer.weight.float() + super().delta_weight()).norm(dim=1)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        # y' = scale ⊙ (W x + ΔW x) with scale = m / ‖W + ΔW‖, so y' − W x = (scale − 1) W x + scale ΔW x
        scale = self.magnitude / self._direction_norm()
        base = nn.functional.linear(x, self.base_layer.weight).to(scale.dtype)
        return (scale - 1) * base + scale * super().delta(x)

    def delta_weight(self) -> torch.Tensor:
        if self.merged:
            raise RuntimeError("DoRA's ΔW is defined on the unmerged base weight: call unmerge() first")
        weight = self.base_layer.weight.float()
        lora = super().delta_weight()
        scale = self.magnitude / (weight + lora).norm(dim=1)
        return scale[:, None] * (weight + lora) - weight

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            weight = self.base_layer.weight
            self._merged_norm = self._direction_norm()  # needed to invert the merge exactly
            scale = self.magnitude / self._merged_norm
            weight.copy_((scale[:, None] * (weight.float() + super().delta_weight())).to(weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            weight = self.base_layer.weight
            scale = self.magnitude / self._merged_norm
            weight.copy_((weight.float() / scale[:, None] - super().delta_weight()).to(weight.dtype))
            self.merged = False

    def low_rank_factors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.delta_weight(), None


ADAPTERS.register("dora", AdapterMethod(DoraConfig, DoraLinear))
