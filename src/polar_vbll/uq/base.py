"""The uncertainty-method contract: a head over backbone features with its loss and its logit samples.

``sample_logits(features, n_samples) -> (B, S, C)``: head-only methods (VBLL, MAP, MLE) need one backbone pass
for all S samples. ``loss(features, labels, choice_mask) -> (loss, logs)`` is what training minimizes.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import nn

from ..registry import Registry


class UQHead(nn.Module, abc.ABC):
    """A trainable head producing class logits, possibly random, from features (B, d)."""

    #: weight decay on the adapter that the method implies (MAP: 1e-5)
    adapter_weight_decay: float = 0.0
    #: whether its logit samples differ (enables sample-based OOD criteria such as mutual information)
    stochastic: bool = False

    @abc.abstractmethod
    def loss(
        self, features: torch.Tensor, labels: torch.Tensor, choice_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss (scalar) and named terms to log."""

    @abc.abstractmethod
    def sample_logits(
        self,
        features: torch.Tensor,
        n_samples: int,
        choice_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B, S, C) logits; masked classes are -inf."""

    def point_logits(self, features: torch.Tensor, choice_mask: torch.Tensor | None = None) -> torch.Tensor:
        """A deterministic summary of the logits (B, C), e.g. for running accuracy."""
        return self.sample_logits(features, 1, choice_mask)[:, 0]

    def predict_probs(
        self, features: torch.Tensor, choice_mask: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The predictive p(y | x) (B, C)."""
        return torch.softmax(self.sample_logits(features, 1, choice_mask, generator), -1).mean(1)


@dataclass(frozen=True)
class UQMethod:
    description: str
    build: object  # callable(init_weight (C, d), n_train, **options) -> UQHead


UQ_METHODS: Registry[UQMethod] = Registry("uncertainty method")


def uncertainty_decomposition(prob_samples: torch.Tensor, eps: float = 1e-12) -> dict[str, torch.Tensor]:
    """Entropy decomposition of samples p_s (B, S, C): total H[mean p] = aleatoric E_s H[p_s] + epistemic (MI)."""

    def entropy(p):
        return -(p * (p.clamp_min(eps)).log()).sum(-1)

    total = entropy(prob_samples.mean(1))
    aleatoric = entropy(prob_samples).mean(1)
    return {"total": total, "aleatoric": aleatoric, "epistemic": (total - aleatoric).clamp_min(0.0)}
