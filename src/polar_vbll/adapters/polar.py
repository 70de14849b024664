"""PoLAR (Lion et al. 2025): ΔW = (alpha / r) · X Θ Yᵀ with X ∈ St(out, r), Y ∈ St(in, r) and Θ ∈ R^{r×r}.

X and Y have orthonormal columns and live on Stiefel manifolds (``geoopt.ManifoldParameter``, tall orientation);
an optimizer from :mod:`polar_vbll.optim` keeps them there (geoopt's Riemannian Adam, or the landing field).
Init: X, Y orthonormal, Θ = 0, so ΔW = 0. The factors stay fp32 whatever the base dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import geoopt
import torch
from torch import nn

from ..errors import PolarVBLLError
from ..fields import help_field as _help
from .base import ADAPTERS, AdapterLinear, AdapterMethod, LowRankConfig
from .capabilities import Capability, GaussianFactor, LinearMap

STIEFEL = geoopt.Stiefel(canonical=False)  # Euclidean metric, QR retraction on the tall (n, r) factor


@dataclass
class PolarConfig(LowRankConfig):
    method = "polar"
    theta: Literal["full", "diagonal"] = _help("Θ as a full r×r matrix or a diagonal (r values)", "full")

    def __post_init__(self):
        super().__post_init__()
        if self.theta not in ("full", "diagonal"):
            raise PolarVBLLError(f"PolarConfig.theta must be 'full' or 'diagonal', got {self.theta!r}")


class PolarLinear(AdapterLinear):
    """``polar_X`` (out, r) and ``polar_Y`` (in, r) on Stiefel manifolds; ``polar_theta`` (r, r) or (r,)."""

    capabilities = frozenset({Capability.LINEAR_MAPS, Capability.GAUSSIAN_FACTOR, Capability.LOW_RANK_DELTA})

    def __init__(self, base_layer: nn.Linear, config: PolarConfig, **init):
        super().__init__(base_layer, config, **init)
        device, r = base_layer.weight.device, config.r
        x = torch.empty(self.out_features, r, device=device)
        y = torch.empty(self.in_features, r, device=device)
        nn.init.orthogonal_(x)
        nn.init.orthogonal_(y)
        self.polar_X = geoopt.ManifoldParameter(x, manifold=STIEFEL)
        self.polar_Y = geoopt.ManifoldParameter(y, manifold=STIEFEL)
        shape = (r, r) if config.theta == "full" else (r,)
        self.polar_theta = nn.Parameter(torch.zeros(shape, device=device))

    def theta_matrix(self) -> torch.Tensor:
        return self.polar_theta if self.polar_theta.dim() == 2 else torch.diag(self.polar_theta)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.polar_X.dtype)
        return (x @ self.polar_Y @ self.theta_matrix().T @ self.polar_X.T) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.polar_X @ self.theta_matrix() @ self.polar_Y.T) * self.scaling

    def low_rank_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.polar_X @ self.theta_matrix() * self.scaling, self.polar_Y.T

    def linear_maps(self) -> list[LinearMap]:
        """Θ alone (X, Y stay point estimates on their manifolds): a = Yᵀx, g = s·Xᵀ∂y."""
        if self.polar_theta.dim() != 2:
            raise PolarVBLLError("PoLAR's linear maps need theta='full' (a diagonal Θ is not a linear map here)")
        s, x_factor, y_factor = self.scaling, self.polar_X, self.polar_Y
        return [LinearMap("theta", self.polar_theta, lambda x, go: (x @ y_factor, s * go @ x_factor))]

    def gaussian_factor(self) -> GaussianFactor:
        """Θ carries the Gaussian (an additive Gaussian on X or Y would leave the manifold): Δy = s · X Θ Yᵀ x."""
        return GaussianFactor(self.polar_theta, lambda x: x @ self.polar_Y, self.polar_X, self.scaling)


ADAPTERS.register("polar", AdapterMethod(PolarConfig, PolarLinear, default_optimizer="geoopt", riemannian=True))
