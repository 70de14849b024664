"""LoRA whose initial factors come from the base weight (PiSSA, CorDA), with the initial product moved out of it.

At initialization ``B₀ A₀`` is taken from W and the frozen base becomes the residual ``W_res = W − s·B₀A₀``, so the
model's function is unchanged. ``B₀, A₀`` stay in persistent buffers: a saved adapter loaded onto the *original*
weights rebuilds the same residual, and :func:`export_lora` turns a trained adapter into a plain LoRA update on the
original weights, ``s·(BA − B₀A₀) = s·[B, −B₀][A; A₀]`` (rank 2r).
"""

from __future__ import annotations

import abc
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..atomic import atomic_directory
from ..errors import PolarVBLLError
from ..outputs import check_replaceable
from .base import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, LowRankConfig
from .injection import adapter_config, adapter_layers
from .lora import LoraConfig, LoraLinear


class ResidualLoraLinear(LoraLinear):
    """``lora_A``/``lora_B`` initialized by :meth:`initial_factors`; ``init_A`` (r, in), ``init_B`` (out, r) buffers."""

    alters_base = True
    init_A: torch.Tensor
    init_B: torch.Tensor

    def __init__(self, base_layer: nn.Linear, config: LowRankConfig, restore: bool = False, **init: torch.Tensor):
        super().__init__(base_layer, config)
        self.register_buffer("init_A", torch.zeros_like(self.lora_A))
        self.register_buffer("init_B", torch.zeros_like(self.lora_B))
        if not restore:
            with torch.no_grad():
                a, b = self.initial_factors(base_layer.weight.detach().float(), init)
                self.lora_A.copy_(a)
                self.lora_B.copy_(b)
                self.init_A.copy_(a)
                self.init_B.copy_(b)
                self._shift_base(-1.0)

    @abc.abstractmethod
    def initial_factors(self, weight: torch.Tensor, init: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(A₀ (r, in), B₀ (out, r)) from the fp32 base weight (out, in) and the layer's planned data ``init``."""

    @torch.no_grad()
    def _shift_base(self, sign: float) -> None:
        weight = self.base_layer.weight
        weight.copy_((weight.float() + sign * self.scaling * (self.init_B @ self.init_A)).to(weight.dtype))

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        same = all(torch.equal(getattr(self, k), state[k]) for k in ("init_A", "init_B") if k in state)
        if not same:
            self._shift_base(+1.0)  # back to the original weight, then to the residual of the loaded B₀A₀
        super().load_adapter_state(state)
        if not same:
            self._shift_base(-1.0)

    def original_delta_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U (out, 2r), V (2r, in)) with U V = the update relative to the original weight, scaling included."""
        u = torch.cat([self.lora_B, -self.init_B], dim=1) * self.scaling
        return u, torch.cat([self.lora_A, self.init_A], dim=0)

    def low_rank_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.original_delta_factors()


@torch.no_grad()
def export_lora(model: nn.Module, folder: str | Path) -> Path:
    """Write the trained PiSSA/CorDA adapter of ``model`` as a plain LoRA adapter (rank 2r) for the original
    weights: ``load_adapter(original_model, folder)`` then gives the same outputs as ``model``."""
    config = adapter_config(model)
    layers = adapter_layers(model)
    if not layers or not all(isinstance(layer, ResidualLoraLinear) for layer in layers.values()):
        raise PolarVBLLError(f"export_lora converts PiSSA/CorDA adapters; this model has '{config.method}'")
    assert isinstance(config, LowRankConfig)  # every ResidualLoraLinear has one
    rank = 2 * config.r
    lora = LoraConfig(r=rank, alpha=config.scaling * rank, target_modules=config.target_modules, dropout=config.dropout)
    state = {}
    for name, layer in layers.items():
        assert isinstance(layer, ResidualLoraLinear)
        u, v = layer.original_delta_factors()
        state[f"{name}.lora_B"] = (u / lora.scaling).contiguous()
        state[f"{name}.lora_A"] = v.contiguous()
    return write_lora(folder, lora, state, {"exported_from": config.method})


def write_lora(folder: str | Path, config: LoraConfig, state: dict[str, torch.Tensor], metadata: dict) -> Path:
    """A plain LoRA adapter folder (``config``, tensors ``<layer>.lora_A/B``), written atomically; ``metadata``
    records where it came from."""
    check_replaceable(folder, {ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE})
    with atomic_directory(folder) as tmp:
        save_file(state, str(tmp / ADAPTER_WEIGHTS_FILE), metadata={"method": "lora", **metadata})
        (tmp / ADAPTER_CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    return Path(folder)
