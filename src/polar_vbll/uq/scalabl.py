"""ScalaBL (Samplawski et al., UAI 2025): variational inference in an r-dimensional subspace of the adapter.

The adapter's Gaussian factor M (LoRA's A, r × in; PoLAR's Θ) is written M = diag(s) V̂ with V̂ its rows scaled to
unit length and s_i = ‖M_i‖ their norms. Only s is random: q(s) = N(s, diag σ²) with r learned standard deviations
σ per layer (``scalabl_log_sigma``, about a thousand extra parameters for the whole model), prior p(s) = N(0, I).
A draw s + σ ⊙ ε adds out_factor · diag(σ ⊙ ε) V̂ · P x · scaling to the layer's output; each example draws its own ε
(r numbers, shared by its tokens: one weight sample per sequence), so no flipout is needed.

KL(q ‖ p) = Σ_i [−log σ_i + (σ_i² + s_i²) / 2 − ½], in closed form; training minimizes NLL + π_t KL with BLoB's
per-epoch reweighting π_t (as the official code trains its variational wrappers), noise on during training.
Prediction: the mean softmax over ``samples`` backbone passes.

Differences from the official code (SRI-CSL/BayesAdapt): there the factor is diag(exp(log_s)) Vh with Vh free, so the
scale of s is not identified (Vh can absorb it) and the KL it reports is KL(p ‖ q); here V̂ has unit rows, which makes
s the rows' norms (the prior then acts as a weight decay on them), and the KL is the ELBO's KL(q ‖ p).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from ..adapters.capabilities import Capability
from ..fields import MethodConfig
from ..fields import help_field as _help
from .base import UQ_METHODS, UQMethod
from .blob import EPS, BlobHead, gaussian_factor_layers


def row_norms_and_directions(mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s (r,), V̂) of M = diag(s) V̂: the rows' norms and the rows scaled to unit length (for a diagonal M of r
    values, |m| and sign(m))."""
    if mean.dim() == 1:
        return mean.abs(), torch.sign(mean)
    norms = mean.norm(dim=1)
    return norms, mean / norms.clamp_min(1e-12)[:, None]


def posterior_std(layer: nn.Module) -> torch.Tensor:
    """σ (r,) of the layer's ScalaBL posterior (``scalabl_log_sigma`` is the parameter ScalaBLHead adds to it)."""
    return cast(torch.Tensor, layer.scalabl_log_sigma).exp()


def subspace_noise(layer, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """out_factor · diag(σ ⊙ ε) V̂ · P x · scaling for inputs x (B, ..., in), one ε ~ N(0, I_r) per example."""
    factor = layer.gaussian_factor()
    sigma = posterior_std(layer)
    _, directions = row_norms_and_directions(factor.mean)
    projected = factor.project_in(layer.dropout(x).to(sigma.dtype))  # (B, ..., k)
    coordinates = projected * directions if directions.dim() == 1 else projected @ directions.T  # (B, ..., r)
    shape = (x.shape[0], *([1] * (x.dim() - 2)), sigma.shape[0])
    eps = torch.randn(shape, generator=generator, dtype=sigma.dtype)
    return (coordinates * sigma * eps) @ factor.out_factor.T * factor.scaling


def kl_to_standard_normal(mean: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, σ²) ‖ N(0, 1)) summed over entries, in float64."""
    var = sigma.double() ** 2
    return (-0.5 * var.log() + (var + mean.double() ** 2) / 2 - 0.5).sum()


class ScalaBLHead(BlobHead):
    """A point head whose adapter layers carry ScalaBL's r standard deviations (``scalabl_log_sigma``); BLoB's
    training loss (NLL + reweighted KL) and prediction passes, with ScalaBL's posterior."""

    def attach(self, backbone) -> None:
        layers = gaussian_factor_layers(backbone, "scalabl")
        for layer in layers:
            if not hasattr(layer, "scalabl_log_sigma"):
                rows = layer.gaussian_factor().mean.shape[0]
                sigma = torch.empty(rows).uniform_(EPS / math.sqrt(2), EPS)  # the official initialization
                layer.scalabl_log_sigma = nn.Parameter(sigma.log())
                layer.register_forward_hook(self._hook)
        self._layers = layers

    def _hook(self, layer, args, output):
        if not (self._sampling or layer.training) or layer.merged:
            return output
        return output + subspace_noise(layer, args[0], self._generator).to(output.dtype)

    def kl_divergence(self) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for layer in self._layers:
            norms, _ = row_norms_and_directions(layer.gaussian_factor().mean)
            total = total + kl_to_standard_normal(norms, posterior_std(layer))
        return total


@dataclass
class ScalaBLConfig(MethodConfig):
    """Options of ScalaBL."""

    method = "scalabl"
    samples: int = _help("backbone passes per prediction (0 = the posterior mean only)", 10)

    def __post_init__(self):
        self.require_at_least(0, "samples")


UQ_METHODS.register(
    "scalabl",
    UQMethod(
        "ScalaBL: Gaussian posterior on the r row norms of the adapter's A (PoLAR: Θ), r standard deviations per "
        "layer, KL to N(0, I) with BLoB's reweighting, samples passes",
        lambda init_weight, n_train, options, fit: ScalaBLHead(
            init_weight, n_train, fit.global_batch_size or fit.batch_size, options.samples
        ),
        ScalaBLConfig,
        requires=lambda options: frozenset({Capability.GAUSSIAN_FACTOR}),
    ),
)
