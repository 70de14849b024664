"""BLoB (Wang et al. 2024): Bayesian low-rank adaptation by backpropagation.

A Gaussian posterior q(A) = N(M, σ²) on the adapter's A factor only (σ = ρ², ρ trained, init U(ε/√2, ε) with
ε = 0.05), B stays a point estimate; the prior is N(0, β²) with β = 0.2 and the KL is in closed form. Sampling uses
flipout: with per-token random signs r (in) and s (r), the noise added to the adapter output is
s ⊙ ((x ⊙ r)(σ ⊙ E)ᵀ) Bᵀ · scaling for one E ~ N(0, I) per forward, so each example sees A + (σ ⊙ E) ⊙ s rᵀ — an
exact draw from q — with noise that is decorrelated across the batch. Loss per step i (1-based within an epoch of
M batches): NLL + π_i KL with π_i = 2^i / (2^(M+1) − 1) (the paper's reweighting; Σ_i π_i ≈ 1 per epoch).
Unlike the official code, which steps the KL with a separate SGD optimizer, both terms share the adapter optimizer.

PoLAR-BLoB puts the posterior on Θ (r×r) instead: X and Y live on Stiefel manifolds, where an additive Gaussian
would leave the manifold, while Θ is PoLAR's unconstrained (Euclidean) part and carries the update's scale.
Prediction: ``blob_samples`` backbone passes with sampling on (default 10), or the posterior mean with 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from ..adapters.capabilities import Capability
from ..errors import PolarVBLLError
from ..fields import MethodConfig
from ..fields import help_field as _help
from .base import UQ_METHODS, TrainingStep, UQMethod
from .point import PointHead

if TYPE_CHECKING:
    from ..adapters.base import AdapterLinear

EPS, BETA = 0.05, 0.2


def flipout(
    x: torch.Tensor, noise: torch.Tensor, out_factor: torch.Tensor, scaling: float, generator=None
) -> torch.Tensor:
    """((x ⊙ r) noiseᵀ ⊙ s) out_factorᵀ · scaling for factor inputs x (..., k), one noise draw (r, k) and random
    signs r (..., k), s (..., r) per token: each token sees the noise ⊙ s rᵀ, an exact draw of a zero-mean Gaussian
    with independent entries, decorrelated across the batch (flipout)."""
    r_sign = torch.randint(0, 2, x.shape, generator=generator, dtype=x.dtype) * 2 - 1
    s_sign = torch.randint(0, 2, (*x.shape[:-1], noise.shape[0]), generator=generator, dtype=x.dtype) * 2 - 1
    return (((x * r_sign) @ noise.T) * s_sign) @ out_factor.T * scaling


def flipout_noise(layer, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The flipout noise term of the adapter output for inputs x (..., in) -> (..., out), through the layer's
    declared Gaussian factor M: out_factor · ((P x ⊙ r)(σ ⊙ E)ᵀ ⊙ s) · scaling, P x the factor's input."""
    factor = layer.gaussian_factor()
    sigma = posterior_std(layer)
    x = factor.project_in(layer.dropout(x).to(sigma.dtype))
    eps = torch.randn(sigma.shape, generator=generator, dtype=sigma.dtype)
    noise = sigma * eps if sigma.dim() == 2 else torch.diag(sigma * eps)
    return flipout(x, noise, factor.out_factor, factor.scaling, generator)


def gaussian_factor_layers(backbone, method: str) -> list:
    """The backbone's adapter layers, each declaring a Gaussian factor, else a one-line error naming ``method``."""
    from ..adapters import adapter_layers
    from ..adapters.base import require_capability

    layers = list(adapter_layers(backbone.model).values())
    if not layers:
        raise PolarVBLLError(f"{method} needs an adapter that wraps Linear layers")
    for layer in layers:
        require_capability(layer, Capability.GAUSSIAN_FACTOR, method)
    return layers


def posterior_std(layer: nn.Module) -> torch.Tensor:
    """σ = ρ² of the Gaussian factor of an adapter layer (``blob_rho`` is the parameter BlobHead adds to it)."""
    return cast(torch.Tensor, layer.blob_rho) ** 2


def kl_to_prior(mean: torch.Tensor, sigma: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """KL(N(mean, σ²) ‖ N(0, β²)) summed over entries."""
    var = sigma.double() ** 2
    return (math.log(beta) - 0.5 * var.log() + (var + mean.double() ** 2) / (2 * beta**2) - 0.5).sum()


class BlobHead(PointHead):
    """A point head (no weight decay: the prior is the KL) whose adapter layers carry BLoB's ``blob_rho``."""

    stochastic = True
    blob_step: torch.Tensor

    def __init__(self, init_weight: torch.Tensor, n_train: int, batch_size: int, samples: int = 10):
        super().__init__(init_weight, 0.0)
        if samples < 0:
            raise PolarVBLLError(f"blob: samples must be >= 0 (0 = posterior mean), got {samples}")
        self.samples = samples
        self.batches_per_epoch = max(1, math.ceil(n_train / batch_size))
        self.register_buffer("blob_step", torch.zeros((), dtype=torch.long))
        self._layers: list[AdapterLinear] = []
        self._sampling = False
        self._generator: torch.Generator | None = None

    def attach(self, backbone) -> None:
        layers = gaussian_factor_layers(backbone, "blob")
        for layer in layers:
            mean = layer.gaussian_factor().mean
            if not hasattr(layer, "blob_rho"):
                rho = torch.empty_like(mean).uniform_(EPS / math.sqrt(2), EPS)
                layer.blob_rho = nn.Parameter(rho)
                layer.register_forward_hook(self._hook)
        self._layers = layers

    def _hook(self, layer, args, output):
        if not (self._sampling or layer.training) or layer.merged:
            return output
        return output + flipout_noise(layer, args[0], self._generator).to(output.dtype)

    def kl_divergence(self) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)  # 0 + the first term is exact: as Python's sum() did
        for layer in self._layers:
            total = total + kl_to_prior(layer.gaussian_factor().mean, posterior_std(layer))
        return total

    def kl_weight(self, step: int) -> float:
        """π_i = 2^i / (2^(M+1) − 1), i = 1..M the position of ``step`` (0-based) in its epoch."""
        m = self.batches_per_epoch
        i = step % m + 1
        return math.exp(i * math.log(2) - math.log(2 ** (m + 1) - 1)) if m < 1000 else 2.0 ** (i - m - 1)

    def training_loss(self, backbone, batch: dict, train_backbone: bool = True) -> TrainingStep:
        step = super().training_loss(backbone, batch, train_backbone)
        weight = self.kl_weight(int(self.blob_step))
        kl = self.kl_divergence()
        return step._replace(
            loss=step.loss + weight * kl.float(), terms={**step.terms, "kl": kl.item(), "kl_weight": weight}
        )

    def on_optimizer_step(self) -> None:
        self.blob_step += 1  # the KL weight's position in the epoch, per step whatever its forward passes

    def backbone_passes(self) -> int:
        return max(1, self.samples)

    @contextmanager
    def backbone_sample(self, backbone, index: int, generator: torch.Generator | None = None) -> Iterator[None]:
        self._sampling, self._generator = self.samples > 0, generator
        try:
            yield
        finally:
            self._sampling, self._generator = False, None


@dataclass
class BlobConfig(MethodConfig):
    """Options of BLoB."""

    method = "blob"
    samples: int = _help("backbone passes per prediction (0 = the posterior mean only)", 10)

    def __post_init__(self):
        self.require_at_least(0, "samples")


UQ_METHODS.register(
    "blob",
    UQMethod(
        "BLoB: Gaussian posterior on the adapter's A (PoLAR: Θ) with flipout, KL to N(0, 0.2²), samples passes",
        lambda init_weight, n_train, options, fit: BlobHead(
            init_weight, n_train, fit.global_batch_size or fit.batch_size, options.samples
        ),
        BlobConfig,
        requires=lambda options: frozenset({Capability.GAUSSIAN_FACTOR}),
    ),
)
