"""Variational Bayesian last layer for classification (Harrison et al. 2024), written with Pyro.

Features φ ∈ R^d, classes C. Posterior q(W) = Π_k N(w̄_k, S_k) with S_k dense (Cholesky L_k), diagonal, or
low-rank + diagonal; prior p(w_k) = N(m_k, s₀ I), s₀ = prior_scale · 2 / d, with m_k the initial (pretrained)
row (default) or 0 (vbll's choice). Optional logit noise ε ~ N(0, diag σ²) with a Wishart (Gamma) prior on its
precision, point-estimated as in the ``vbll`` package.

Logits are Gaussian: z_k ~ N(w̄_kᵀφ, v_k), v_k = φᵀ S_k φ + σ_k². The training objective is the closed-form
Jensen bound of the ELBO (no sampling):

    ℓ(φ, y) = w̄_yᵀφ − log Σ_k exp(w̄_kᵀφ + ½ v_k)  ≤  E_q[log softmax(z)_y]
    loss = −[ mean_batch ℓ + λ (wishart − KL(q ‖ p)) ],  λ = 1 / N_train,
    KL = ½ Σ_k [ ‖w̄_k − m_k‖² / s₀ + tr(S_k) / s₀ + d log s₀ − log|S_k| − d ].

The same model is also a Pyro program (``VBLLModel`` prior + likelihood, ``VBLLGuide`` posterior, both
``PyroModule`` with module-local parameters), so ``objective="mc"`` trains on Pyro's Monte-Carlo ``Trace_ELBO``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import pyro
import torch
from torch import nn

from ..errors import PolarVBLLError
from ..models.backbone import mask_choices
from .base import UQ_METHODS, UQHead, UQMethod
from .vbll_config import VBLLConfig
from .vbll_pyro import VBLLGuide, VBLLModel


@dataclass
class VBLLOutput:
    """What the head returns for a batch: Gaussian logits, its loss function and its predictive (vbll-style)."""

    logit_mean: torch.Tensor  # (B, C)
    logit_var: torch.Tensor  # (B, C), φᵀ S_k φ + σ_k²
    train_loss_fn: Callable[[torch.Tensor], torch.Tensor]
    choice_mask: torch.Tensor | None = None
    noise_var: torch.Tensor | None = None  # (C,) the logit noise σ² inside logit_var

    def _standard_normal(self, n_samples: int, generator: torch.Generator | None) -> torch.Tensor:
        shape = (self.logit_mean.shape[0], n_samples, self.logit_mean.shape[1])
        return torch.randn(shape, generator=generator, dtype=self.logit_mean.dtype, device=self.logit_mean.device)

    def sample_logits(self, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, S, C) samples of the noisy logits z = Wφ + ε; masked classes are -inf."""
        return self.logit_mean[:, None] + self._standard_normal(n_samples, generator) * self.logit_var.sqrt()[:, None]

    def weight_logit_samples(self, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, S, C) logits whose softmax is p(y | x, W_s) for S posterior draws W_s of the weights alone.

        The logit noise ε is part of the likelihood (aleatoric): it is marginalized in closed form by the probit
        approximation E_ε softmax(u + ε) ≈ softmax(u / √(1 + π σ² / 8)), so that the spread of these samples, and
        the mutual information computed from them, is the weights' (epistemic) alone.
        """
        noise = self.noise_var if self.noise_var is not None else torch.zeros_like(self.logit_mean[0])
        weight_std = (self.logit_var - noise).clamp_min(0.0).sqrt()
        draws = self.logit_mean[:, None] + self._standard_normal(n_samples, generator) * weight_std[:, None]
        return draws / torch.sqrt(1 + math.pi * noise / 8)

    def predictive(
        self, method: Literal["mc", "probit"] = "mc", n_samples: int = 1000, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """p(y | x) (B, C): mean softmax of ``n_samples`` logit samples, or softmax(μ / √(1 + π v / 8))."""
        if method == "probit":
            return torch.softmax(self.logit_mean / torch.sqrt(1 + math.pi * self.logit_var / 8), -1)
        return torch.softmax(self.sample_logits(n_samples, generator), -1).mean(1)


class VBLLHead(UQHead):
    """Variational Bayesian last layer over backbone features; ``forward(φ)`` returns a :class:`VBLLOutput`.

    ``init_weight`` (C, d) initializes the posterior mean (the trimmed LM-head rows of the label tokens, so the
    untrained head reproduces the zero-shot model up to its small initial variance).
    """

    stochastic = True

    def __init__(self, init_weight: torch.Tensor, n_train: int, config: VBLLConfig | None = None):
        super().__init__()
        self.config = config = config or VBLLConfig()
        if n_train < 1:
            raise PolarVBLLError(f"n_train must be >= 1, got {n_train}")
        self.num_classes, self.in_features = init_weight.shape
        self.n_train = n_train
        self.regularization_weight = 1.0 / n_train
        prior_var = config.prior_scale * 2.0 / self.in_features
        init_std = prior_var**0.5 if config.cov_init == "prior" else None
        self.guide = VBLLGuide(init_weight.detach(), config.covariance, config.cov_rank, init_std)
        # Centering the prior on the pretrained rows (default) makes the KL pull towards the zero-shot head rather
        # than towards 0 (for SmolLM2's label rows the mean part of a zero-centered KL is ~3·10³ nats).
        prior_mean = init_weight.detach().float() if config.prior_mean == "init" else torch.zeros_like(init_weight)
        self.model = VBLLModel(prior_mean.float(), prior_var)
        # one value for all classes (vbll draws randn − 1 per class), so that the untrained head ranks classes as
        # the zero-shot model does
        self.noise_log_std = nn.Parameter(torch.full((self.num_classes,), -1.0)) if config.logit_noise else None
        self.noise_dof = (config.dof + self.num_classes + 1.0) / 2.0

    def _check(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        if features.dim() != 2 or features.shape[1] != self.in_features:
            raise PolarVBLLError(f"features: expected shape (B, {self.in_features}), got {tuple(features.shape)}")
        if not torch.isfinite(features).all():
            raise PolarVBLLError(f"features: {int((~torch.isfinite(features)).sum())} NaN or infinite values")
        if labels is not None and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise PolarVBLLError(
                f"labels: values must lie in [0, {self.num_classes - 1}], "
                f"got min {int(labels.min())} max {int(labels.max())}"
            )

    @property
    def prior_var(self) -> float:
        """s₀, the prior variance of every weight (``prior_scale`` · 2 / d, or set by empirical Bayes)."""
        return float(self.model.prior_var)

    def set_prior_var(self, value: float) -> None:
        self.model.prior_var.fill_(value)

    def state_defaults(self) -> dict[str, torch.Tensor]:
        # heads saved before the prior variance was a buffer had prior_scale's
        default = torch.tensor(self.config.prior_scale * 2.0 / self.in_features)
        return {**super().state_defaults(), "model.prior_var": default}

    @property
    def solve_every(self) -> int | None:
        return self.config.solve_every if self.config.head_phase == "exact" else None

    @property
    def solve_buffer(self) -> int:
        return self.config.solve_buffer

    @property
    def solve_on_step_features(self) -> bool:
        return self.config.solve_features == "steps"

    def solve(
        self, features: torch.Tensor, labels: torch.Tensor, choice_mask: torch.Tensor | None, n_total: int
    ) -> dict[str, float]:
        """The exact head phase on cached ``features`` (M, d) standing for ``n_total`` examples
        (:func:`polar_vbll.uq.vbll_solve.solve_head`). Returns the ELBO per example before and after, and s₀."""
        from .vbll_solve import solve_head

        self._check(features, labels)
        return solve_head(self, features.float(), labels, choice_mask, n_total)

    def noise_var(self) -> torch.Tensor:
        if self.noise_log_std is None:
            return torch.zeros(self.num_classes, device=self.guide.mean.device)
        return (2 * self.noise_log_std).exp()

    def kl_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The two parts of KL(q ‖ p): the mean's, ½ Σ_k ‖w̄_k − m_k‖² / s₀, and the covariance's,
        ½ Σ_k [tr(S_k) / s₀ + d log s₀ − log|S_k| − d] (0 when S_k = s₀ I)."""
        trace, logdet = self.guide.trace_and_logdet()
        s0, d, c = self.model.prior_var, self.in_features, self.num_classes
        shift = (self.guide.mean - self.model.prior_mean).pow(2).sum()
        return 0.5 * shift / s0, 0.5 * (trace / s0 + c * d * torch.log(s0) - logdet - c * d)

    def kl_divergence(self) -> torch.Tensor:
        """KL(q(W) ‖ p(W)), exact (constants included)."""
        mean_part, covariance_part = self.kl_terms()
        return mean_part + covariance_part

    def wishart_term(self) -> torch.Tensor:
        """log-density (up to a constant) of the Wishart prior on the noise precision; 0 without noise."""
        if self.noise_log_std is None:
            return torch.zeros((), device=self.guide.mean.device)
        precision = (-2 * self.noise_log_std).exp()
        return self.noise_dof * (-2 * self.noise_log_std).sum() - 0.5 * self.config.wishart_scale * precision.sum()

    def logit_moments(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (B, C) and variance (B, C) of the Gaussian logits."""
        features = features.float()
        return features @ self.guide.mean.T, self.guide.quad_form(features) + self.noise_var()

    def jensen_bound(
        self, features: torch.Tensor, labels: torch.Tensor, choice_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """ℓ(φ, y) per example (B,)."""
        mean, var = self.logit_moments(features)
        pre = mean + 0.5 * var
        if choice_mask is not None:
            pre = pre.masked_fill(~choice_mask.bool(), float("-inf"))
        return mean.gather(1, labels[:, None]).squeeze(1) - torch.logsumexp(pre, -1)

    def jensen_loss(
        self, features: torch.Tensor, labels: torch.Tensor, choice_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """−[mean ℓ + λ (wishart − KL)], the negative ELBO per training example."""
        elbo = self.jensen_bound(features, labels, choice_mask).mean()
        return -(elbo + self.regularization_weight * (self.wishart_term() - self.kl_divergence()))

    def mc_loss(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        choice_mask: torch.Tensor | None = None,
        num_particles: int | None = None,
    ) -> torch.Tensor:
        """Pyro's Monte-Carlo negative ELBO divided by N_train, minus λ · wishart (comparable to ``jensen_loss``)."""
        elbo = pyro.infer.Trace_ELBO(num_particles=num_particles or self.config.num_particles)
        loss_module = elbo(self.model, self.guide)
        noise = self.noise_var().sqrt() if self.noise_log_std is not None else None
        loss = loss_module(features.float(), labels, self.n_train, noise, choice_mask)
        return loss / self.n_train - self.regularization_weight * self.wishart_term()

    def forward(self, features: torch.Tensor, choice_mask: torch.Tensor | None = None) -> VBLLOutput:
        self._check(features)
        mean, var = self.logit_moments(features)
        if choice_mask is not None:
            mean = mean.masked_fill(~choice_mask.bool(), float("-inf"))
            var = var.masked_fill(~choice_mask.bool(), 0.0)

        def loss_fn(labels: torch.Tensor) -> torch.Tensor:
            self._check(features, labels)
            if self.config.objective == "mc":
                return self.mc_loss(features, labels, choice_mask)
            return self.jensen_loss(features, labels, choice_mask)

        return VBLLOutput(mean, var, loss_fn, choice_mask, self.noise_var())

    @torch.no_grad()
    def laplace_(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        choice_mask: torch.Tensor | None = None,
        n_total: int | None = None,
    ) -> None:
        """Post-hoc last-layer Laplace: replace each S_k by the inverse Hessian of the negative log posterior at
        the trained mean, H_k = (N / M) Σ_i p_ik (1 − p_ik) φ_i φ_iᵀ + I / s₀, over M examples standing for N.

        H_k is the k-th diagonal block of the softmax likelihood's Hessian (exact for a linear head; the
        cross-class blocks are dropped, as the posterior factorizes over classes). Dense or diagonal only.
        """
        if self.config.covariance == "lowrank":
            raise PolarVBLLError("post-hoc Laplace needs covariance 'dense' or 'diagonal', not 'lowrank'")
        self._check(features, labels)
        features = features.float()
        probs = torch.softmax(mask_choices(features @ self.guide.mean.T, choice_mask), -1)  # (M, C)
        weights = probs * (1 - probs) * ((n_total or features.shape[0]) / features.shape[0])
        eye = torch.eye(self.in_features, device=features.device)
        hessian = torch.einsum("mc,md,me->cde", weights, features, features) + eye / self.prior_var
        covariance = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
        if self.config.covariance == "dense":
            chol = torch.linalg.cholesky(covariance)
            self.guide.log_diag.copy_(torch.diagonal(chol, dim1=-2, dim2=-1).log())
            self.guide.offdiag.copy_(chol)
        else:
            self.guide.log_diag.copy_(0.5 * torch.diagonal(covariance, dim1=-2, dim2=-1).log())

    def loss(self, features, labels, choice_mask=None):
        loss = self.forward(features, choice_mask).train_loss_fn(labels)
        mean_part, covariance_part = self.kl_terms()
        return loss, {
            "kl": (mean_part + covariance_part).item(),
            "kl_mean": mean_part.item(),
            "kl_cov": covariance_part.item(),
            "noise_var": self.noise_var().mean().item(),
        }

    def sample_logits(self, features, n_samples, choice_mask=None, generator=None):
        """Logits of the weight draws, the logit noise marginalized (see ``VBLLOutput.weight_logit_samples``): the
        samples' spread, and so the epistemic part and the sample-based OOD criteria, is the weights' alone."""
        return self.forward(features, choice_mask).weight_logit_samples(n_samples, generator)

    def point_logits(self, features, choice_mask=None):
        return self.forward(features, choice_mask).logit_mean

    def predict_probs(self, features, choice_mask=None, generator=None):
        return self.forward(features, choice_mask).predictive(self.config.predictive, self.config.n_samples, generator)


UQ_METHODS.register(
    "vbll",
    UQMethod(
        "variational Bayesian last layer (Pyro): Gaussian posterior over the answer-head rows",
        lambda init_weight, n_train, options, fit: VBLLHead(init_weight, n_train, options),
        VBLLConfig,
        alternates=True,
        multi_task=True,
        supports=("temperature", "last_layer_laplace"),
        refinements={"laplace": {"post_hoc": "last_layer_laplace"}},
    ),
)
