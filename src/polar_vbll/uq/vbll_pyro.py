"""The VBLL head as a Pyro program: ``VBLLModel`` (prior + likelihood) and ``VBLLGuide`` (the Gaussian posterior
q(W) = Π_k N(w̄_k, S_k), dense / diagonal / low-rank), both ``PyroModule`` with module-local parameters, so that
``objective="mc"`` trains on Pyro's Monte-Carlo ``Trace_ELBO`` and the closed-form bound reads the same posterior.
"""

from __future__ import annotations

import math
from typing import Literal

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

pyro.settings.set(module_local_params=True)  # parameters live in modules, not in Pyro's global store

Covariance = Literal["dense", "diagonal", "lowrank"]


def data_plate(features: torch.Tensor, n_data: int | None):
    """The batch as a subsample of ``n_data`` examples: Pyro scales its log-likelihood by n_data / B."""
    return pyro.plate(
        "data", n_data or features.shape[0], subsample=torch.arange(features.shape[0], device=features.device)
    )


def noise_site(features: torch.Tensor, noise_scale: torch.Tensor) -> torch.Tensor:
    """Logit noise ε ~ N(0, diag σ²) per example (B, C)."""
    return pyro.sample("noise", dist.Normal(0.0, noise_scale).expand([features.shape[0], len(noise_scale)]).to_event(1))


class VBLLGuide(PyroModule):
    """The variational posterior q(W): mean (C, d) and the covariance factors of ``covariance``."""

    def __init__(self, mean: torch.Tensor, covariance: Covariance, cov_rank: int = 4, init_std: float | None = None):
        super().__init__()
        num_classes, d = mean.shape
        self.covariance = covariance
        self.mean = nn.Parameter(mean.clone().float())
        # log of the Cholesky diagonal (dense) or of the standard deviations (diagonal, lowrank); vbll's 1/d default
        log_std = math.log(init_std) if init_std is not None else -math.log(d)
        self.log_diag = nn.Parameter(1e-3 * torch.randn(num_classes, d) + log_std)
        if covariance == "dense":
            self.offdiag = nn.Parameter(1e-3 * torch.randn(num_classes, d, d) / d)
        elif covariance == "lowrank":
            self.offdiag = nn.Parameter(1e-3 * torch.randn(num_classes, d, cov_rank) / d)

    def scale_tril(self) -> torch.Tensor:
        """L_k (C, d, d) with S_k = L_k L_kᵀ (dense only)."""
        return torch.tril(self.offdiag, diagonal=-1) + torch.diag_embed(self.log_diag.exp())

    def distribution(self) -> dist.TorchDistribution:
        if self.covariance == "dense":
            return dist.MultivariateNormal(self.mean, scale_tril=self.scale_tril()).to_event(1)
        if self.covariance == "diagonal":
            return dist.Normal(self.mean, self.log_diag.exp()).to_event(2)
        return dist.LowRankMultivariateNormal(self.mean, self.offdiag, (2 * self.log_diag).exp()).to_event(1)

    def quad_form(self, features: torch.Tensor) -> torch.Tensor:
        """φᵀ S_k φ for every example and class: (B, d) -> (B, C)."""
        if self.covariance == "dense":
            return (features @ self.scale_tril()).pow(2).sum(-1).T  # ‖L_kᵀφ‖² = φᵀ L_k L_kᵀ φ
        diag = features.pow(2) @ (2 * self.log_diag).exp().T
        if self.covariance == "diagonal":
            return diag
        return diag + torch.einsum("bd,cdr->bcr", features, self.offdiag).pow(2).sum(-1)

    def trace_and_logdet(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Σ_k tr(S_k) and Σ_k log|S_k|."""
        if self.covariance == "dense":
            return self.scale_tril().pow(2).sum(), 2 * self.log_diag.sum()
        var = (2 * self.log_diag).exp()
        if self.covariance == "diagonal":
            return var.sum(), 2 * self.log_diag.sum()
        factor = self.offdiag
        gram = factor.transpose(-1, -2) @ (factor / var[..., None])  # matrix determinant lemma
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        return var.sum() + factor.pow(2).sum(), 2 * self.log_diag.sum() + torch.logdet(gram + eye).sum()

    def forward(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        n_data: int | None = None,
        noise_scale: torch.Tensor | None = None,
        choice_mask: torch.Tensor | None = None,
    ):
        weight = pyro.sample("W", self.distribution())
        if noise_scale is not None:  # the noise is not inferred: the guide repeats the model's noise site
            with data_plate(features, n_data):
                noise_site(features, noise_scale)
        return weight


class VBLLModel(PyroModule):
    """Prior N(m, s₀ I) on W and the softmax likelihood of the (noisy) logits, scaled to the data set size."""

    prior_var: torch.Tensor

    def __init__(self, prior_mean: torch.Tensor, prior_var: float):
        super().__init__()
        self.register_buffer("prior_mean", prior_mean.clone())
        # a buffer: the exact head phase may set it by empirical Bayes, and it is saved with the head
        self.register_buffer("prior_var", torch.tensor(float(prior_var)))

    def forward(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        n_data: int | None = None,
        noise_scale: torch.Tensor | None = None,
        choice_mask: torch.Tensor | None = None,
    ):
        weight = pyro.sample("W", dist.Normal(self.prior_mean, self.prior_var.sqrt()).to_event(2))
        logits = features @ weight.transpose(-1, -2)
        with data_plate(features, n_data):
            if noise_scale is not None:
                logits = logits + noise_site(features, noise_scale)
            if choice_mask is not None:
                logits = logits.masked_fill(~choice_mask.bool(), float("-inf"))
            pyro.sample("y", dist.Categorical(logits=logits), obs=labels)
        return logits
