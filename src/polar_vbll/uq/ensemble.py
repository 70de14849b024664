"""Deep ensembles (Lakshminarayanan et al. 2017) of adapters: M adapters on one shared frozen base, each with its
own MAP head, trained on the same batches; the predictive averages the members' softmax (M backbone passes)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..adapters.capabilities import Capability
from ..errors import PolarVBLLError
from ..fields import MethodConfig
from ..fields import help_field as _help
from .base import UQ_METHODS, TrainingStep, UQHead, UQMethod
from .point import PointHead


class EnsembleHead(UQHead):
    """M point heads; ``active`` selects the member (set together with the adapters' active member)."""

    stochastic = True

    def __init__(self, init_weight: torch.Tensor, members: int = 3, adapter_weight_decay: float = 1e-5):
        super().__init__()
        if members < 1:
            raise PolarVBLLError(f"ensemble: members must be >= 1, got {members}")
        self.members = nn.ModuleList(PointHead(init_weight, adapter_weight_decay) for _ in range(members))
        self.adapter_weight_decay = adapter_weight_decay
        self.active = 0
        self._model = None

    def attach(self, backbone) -> None:
        from ..adapters import ensemble_size

        if ensemble_size(backbone.model) != len(self.members):
            raise PolarVBLLError(
                f"ensemble: the adapter has {ensemble_size(backbone.model)} members, the head {len(self.members)}"
            )
        object.__setattr__(self, "_model", backbone.model)  # a reference, not a submodule of the head

    def _activate(self, index: int) -> None:
        from ..adapters import set_active_member

        self.active = index
        if self._model is not None:
            set_active_member(self._model, index)

    def training_loss(self, backbone, batch: dict, train_backbone: bool = True) -> TrainingStep:
        """Sum of the members' losses on the same batch (each member's gradient is its own)."""
        total, probs = torch.zeros(()), torch.zeros(())
        for index in range(len(self.members)):
            self._activate(index)
            step = super().training_loss(backbone, batch, train_backbone)
            total = total + step.loss
            probs = probs + torch.softmax(step.point, -1)
        self._activate(0)
        mean = (probs / len(self.members)).log()
        return TrainingStep(total, {"nll_mean": total.item() / len(self.members)}, mean, None)

    def backbone_passes(self) -> int:
        return len(self.members)

    @contextmanager
    def backbone_sample(self, backbone, index: int, generator: torch.Generator | None = None) -> Iterator[None]:
        self._activate(index)
        try:
            yield
        finally:
            self._activate(0)

    def loss(self, features, labels, choice_mask=None):
        return self.members[self.active].loss(features, labels, choice_mask)

    def sample_logits(self, features, n_samples, choice_mask=None, generator=None):
        return self.members[self.active].sample_logits(features, n_samples, choice_mask, generator)

    def point_logits(self, features, choice_mask=None):
        return self.members[self.active].point_logits(features, choice_mask)


@dataclass
class EnsembleConfig(MethodConfig):
    """Options of a deep ensemble."""

    method = "ensemble"
    size: int = _help("adapters (and heads) of the ensemble, on one shared base", 3)

    def __post_init__(self):
        self.require_at_least(1, "size")


UQ_METHODS.register(
    "ensemble",
    UQMethod(
        "deep ensemble: size adapters (one shared base) with their own MAP heads, same batches",
        lambda init_weight, n_train, options, fit: EnsembleHead(init_weight, options.size),
        EnsembleConfig,
        members=lambda options: options.size,
        requires=lambda options: frozenset({Capability.WRAPS_LINEAR, Capability.SHARED_BASE}),
    ),
)
