"""PiSSA (Meng et al. 2024): LoRA initialized from the top-r singular triplets of W; the rest stays frozen.

W = U S Vᵀ; A₀ = √(S_r/s) V_rᵀ, B₀ = U_r √(S_r/s) (s = alpha / r), so s·B₀A₀ = U_r S_r V_rᵀ; base ← W − s·B₀A₀.
``niter > 0`` uses randomized SVD (``torch.svd_lowrank`` with that many subspace iterations) instead of the full one,
as PEFT's ``init_lora_weights="pissa_niter_k"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import PolarVBLLError
from ..fields import help_field as _help
from .base import ADAPTERS, AdapterMethod
from .lora import LoraConfig
from .residual import ResidualLoraLinear


@dataclass
class PissaConfig(LoraConfig):
    method = "pissa"
    niter: int = _help("0: full SVD; k > 0: randomized SVD with k subspace iterations (fast on large layers)", 0)

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.niter, int) or self.niter < 0:
            raise PolarVBLLError(f"PissaConfig.niter must be a non-negative integer, got {self.niter!r}")


def split_singular(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, scaling: float):
    """(A₀ (r, in), B₀ (out, r)) with scaling·B₀A₀ = U diag(s) Vh, the singular values split evenly."""
    root = (s / scaling).sqrt()
    return root[:, None] * vh, u * root


class PissaLinear(ResidualLoraLinear):
    config: PissaConfig

    def initial_factors(self, weight: torch.Tensor, init: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if init:
            raise PolarVBLLError(f"PiSSA takes no initialization data, got {sorted(init)}")
        r = self.config.r
        if self.config.niter == 0:
            u, s, vh = torch.linalg.svd(weight, full_matrices=False)
            return split_singular(u[:, :r], s[:r], vh[:r], self.scaling)
        u, s, v = torch.svd_lowrank(weight, q=r, niter=self.config.niter)
        return split_singular(u, s, v.T, self.scaling)


ADAPTERS.register("pissa", AdapterMethod(PissaConfig, PissaLinear))
