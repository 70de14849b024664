"""MC dropout (Gal & Ghahramani 2016): dropout on the adapter input, kept on at prediction; S backbone passes."""

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
from .base import UQ_METHODS, UQMethod
from .point import PointHead


class MCDropoutHead(PointHead):
    """A MAP head whose predictions average ``samples`` backbone passes with the adapters' dropout active."""

    stochastic = True

    def __init__(self, init_weight: torch.Tensor, samples: int = 10, adapter_weight_decay: float = 1e-5):
        super().__init__(init_weight, adapter_weight_decay)
        if samples < 1:
            raise PolarVBLLError(f"mc_dropout: samples must be >= 1, got {samples}")
        self.samples = samples
        self._dropouts: list[nn.Module] = []

    def attach(self, backbone) -> None:
        from ..adapters import adapter_layers

        layers = adapter_layers(backbone.model).values()
        if not layers:
            raise PolarVBLLError("mc_dropout needs an adapter that wraps Linear layers")
        self._dropouts = [layer.dropout for layer in layers if isinstance(layer.dropout, nn.Dropout)]

    def backbone_passes(self) -> int:
        return self.samples

    @contextmanager
    def backbone_sample(self, backbone, index: int, generator: torch.Generator | None = None) -> Iterator[None]:
        seed = int(torch.randint(2**62, (1,), generator=generator)) if generator is not None else index
        modes = [d.training for d in self._dropouts]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for dropout in self._dropouts:
                dropout.train()
            try:
                yield
            finally:
                for dropout, mode in zip(self._dropouts, modes, strict=True):
                    dropout.train(mode)


@dataclass
class MCDropoutConfig(MethodConfig):
    """Options of MC dropout (the dropout rate is the adapter's ``dropout``, 0.1 unless given)."""

    method = "mc_dropout"
    samples: int = _help("backbone passes per prediction, each with its own dropout mask", 10)

    def __post_init__(self):
        self.require_at_least(1, "samples")


UQ_METHODS.register(
    "mc_dropout",
    UQMethod(
        "MC dropout: dropout 0.1 on the adapter input, kept on at prediction (samples backbone passes)",
        lambda init_weight, n_train, options, fit: MCDropoutHead(init_weight, options.samples),
        MCDropoutConfig,
        adapter_dropout=0.1,
        requires=lambda options: frozenset({Capability.WRAPS_LINEAR}),
    ),
)
