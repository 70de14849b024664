"""Point-estimate heads: MLE (no weight decay) and MAP (weight decay 1e-5 on the adapter)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..fields import MethodConfig
from ..models.backbone import mask_choices
from .base import UQ_METHODS, UQHead, UQMethod


class PointHead(UQHead):
    """A deterministic linear head trained with cross-entropy; S samples are S copies of the same logits."""

    def __init__(
        self, init_weight: torch.Tensor, adapter_weight_decay: float = 0.0, init_bias: torch.Tensor | None = None
    ):
        super().__init__()
        self.linear = nn.Linear(init_weight.shape[1], init_weight.shape[0], bias=init_bias is not None)
        with torch.no_grad():
            self.linear.weight.copy_(init_weight)
            if init_bias is not None:  # an LM head with a bias (the zero-shot head of such a model)
                self.linear.bias.copy_(init_bias)
        self.adapter_weight_decay = adapter_weight_decay

    def logits(self, features: torch.Tensor, choice_mask: torch.Tensor | None = None) -> torch.Tensor:
        return mask_choices(self.linear(features.float()), choice_mask)

    def loss(self, features, labels, choice_mask=None):
        loss = nn.functional.cross_entropy(self.logits(features, choice_mask), labels)
        return loss, {"nll": loss.item()}

    def sample_logits(self, features, n_samples, choice_mask=None, generator=None):
        return self.logits(features, choice_mask)[:, None].expand(-1, n_samples, -1)


@dataclass
class MleConfig(MethodConfig):
    """Maximum likelihood has no options of its own."""

    method = "mle"


@dataclass
class MapConfig(MethodConfig):
    """MAP has no options of its own (the adapter's weight decay is ``FitConfig.weight_decay``)."""

    method = "map"


UQ_METHODS.register(
    "mle",
    UQMethod(
        "maximum likelihood: cross-entropy, no weight decay",
        lambda init_weight, n_train, options, fit: PointHead(init_weight, 0.0),
        MleConfig,
        multi_task=True,
    ),
)
UQ_METHODS.register(
    "map",
    UQMethod(
        "MAP: cross-entropy with weight decay 1e-5 on the adapter",
        lambda init_weight, n_train, options, fit: PointHead(init_weight, 1e-5),
        MapConfig,
        multi_task=True,
        refinements={"laplace": {"uq": "laplace"}, "temperature": {"uq": "temperature"}, "tfb": {"uq": "tfb"}},
    ),
)
