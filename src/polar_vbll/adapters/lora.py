"""LoRA (Hu et al. 2021): ΔW = (alpha / r) · B A, with A Kaiming-uniform and B = 0 (PEFT's default init)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import ADAPTERS, AdapterLinear, AdapterMethod, LowRankConfig
from .capabilities import Capability, GaussianFactor, LinearMap


@dataclass
class LoraConfig(LowRankConfig):
    method = "lora"


class LoraLinear(AdapterLinear):
    """``lora_A`` (r, in), ``lora_B`` (out, r), in fp32 whatever the base dtype."""

    capabilities = frozenset({Capability.LINEAR_MAPS, Capability.GAUSSIAN_FACTOR, Capability.LOW_RANK_DELTA})

    def __init__(self, base_layer: nn.Linear, config: LowRankConfig, **init):
        super().__init__(base_layer, config, **init)
        device = base_layer.weight.device
        self.lora_A = nn.Parameter(torch.empty(config.r, self.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, config.r, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear and PEFT

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.lora_A.dtype)
        return (x @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling

    def low_rank_factors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.lora_B * self.scaling, self.lora_A

    def linear_maps(self) -> list[LinearMap]:
        """A: a = x, g = s·Bᵀ∂y; B: a = A x, g = s·∂y (the update is s·B A x)."""
        s, a_factor, b_factor = self.scaling, self.lora_A, self.lora_B
        return [
            LinearMap("A", a_factor, lambda x, go: (x, s * go @ b_factor)),
            LinearMap("B", b_factor, lambda x, go: (x @ a_factor.T, s * go)),
        ]

    def gaussian_factor(self) -> GaussianFactor:
        """A (r, in) carries BLoB's Gaussian: Δy = s · B A x."""
        return GaussianFactor(self.lora_A, lambda x: x, self.lora_B, self.scaling)


ADAPTERS.register("lora", AdapterMethod(LoraConfig, LoraLinear))
