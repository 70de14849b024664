"""LISA (Pan et al. 2024): layerwise importance sampling — full-parameter training of a few sampled layers.

The embeddings and the final norm are always trained (the answer head is the uncertainty head's); every
``interval`` steps ``layers`` of the decoder layers are drawn (seeded, so a resumed run draws the same) to be
unfrozen and the others are frozen. Parameters that leave the active set lose their optimizer state (LMFlow's
callback keeps it, so Adam moments of a layer frozen for hundreds of steps would be reused stale): the optimizer
only ever holds state for active parameters. Memory grows with the embeddings plus ``layers`` full layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import PolarVBLLError
from ..fields import help_field as _help
from .base import ADAPTERS, AdapterMethod, ModelTuner, TunerConfig


@dataclass
class LisaConfig(TunerConfig):
    method = "lisa"
    layers: int = _help("γ: decoder layers unfrozen at a time", 2)
    interval: int = _help("K: steps between draws of the active layers", 10)
    train_embeddings: bool = _help("always train the input embeddings (and the final norm)", True)
    seed: int = _help("seed of the layer draws", 0)

    def __post_init__(self):
        for name in ("layers", "interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise PolarVBLLError(f"LisaConfig.{name} must be a positive integer, got {value!r}")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks (the longest ``nn.ModuleList`` of the model)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise PolarVBLLError(f"LISA: {type(model).__name__} has no list of decoder layers")
    return max(lists, key=len)


class LisaTuner(ModelTuner):
    config: LisaConfig

    # Any: a Hugging Face causal LM (get_input_embeddings, get_decoder are its own methods)
    def __init__(self, model: Any, config: LisaConfig):
        super().__init__(model, config)
        self.layers = decoder_layers(model)
        if config.layers > len(self.layers):
            raise PolarVBLLError(
                f"LisaConfig.layers={config.layers} exceeds the {len(self.layers)} decoder layers of "
                f"{type(model).__name__}"
            )
        in_layers = {id(p) for p in self.layers.parameters()}
        always = []
        if config.train_embeddings:
            always += list(model.get_input_embeddings().parameters())
            decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
            norm = getattr(decoder, "norm", None)
            always += list(norm.parameters()) if isinstance(norm, nn.Module) else []
        self.always = [p for p in always if id(p) not in in_layers]
        for p in self.always:
            p.requires_grad_(True)
        self.active: list[int] | None = None
        self.touched: set[int] = set()

    def draw(self, step: int) -> list[int]:
        """The active layers during ``step`` (0-based): a seeded draw per interval."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step // self.config.interval)
        return sorted(torch.randperm(len(self.layers), generator=generator)[: self.config.layers].tolist())

    def on_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        if self.active is not None and step % self.config.interval != 0:
            return
        if self.active is None:  # first step, or resumed mid-interval: replay the earlier draws
            for past in range(0, step, self.config.interval):
                self.touched.update(self.draw(past))
        new = self.draw(step)
        for index in set(self.active or []) - set(new):
            for p in self.layers[index].parameters():
                p.requires_grad_(False)
                p.grad = None
                optimizer.state.pop(p, None)
        for index in new:
            self.layers[index].requires_grad_(True)
        self.active = new
        self.touched.update(new)

    def parameters(self) -> list[nn.Parameter]:
        return self.always + list(self.layers.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        keep = {id(p) for p in self.always}
        for index in self.touched:
            keep.update(id(p) for p in self.layers[index].parameters())
        return {name: p for name, p in self.model.named_parameters() if id(p) in keep}

    def load_state(self, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
        super().load_state(state, source)
        loaded = {id(p) for name, p in self.model.named_parameters() if name in state}
        self.touched.update(
            i for i, layer in enumerate(self.layers) if any(id(p) in loaded for p in layer.parameters())
        )


ADAPTERS.register("lisa", AdapterMethod(LisaConfig, tuner=LisaTuner))
