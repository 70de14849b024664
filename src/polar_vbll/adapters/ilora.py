"""iLoRA (Kong et al. 2024, "Customizing Language Models with Instance-wise LoRA for Sequential Recommendation"):
LoRA split into K experts mixed by a gate computed from each instance.

With experts of rank r/K (so that the parameter count matches LoRA of rank r), A = [A_1; …; A_K] (r, in) and
B = [B_1 … B_K] (out, r), the update for an instance x is

    ΔW(x) = s · Σ_k g_k(x) B_k A_k,      g(x) = softmax(R e(x) / τ)   (optionally kept to its top-k entries)

where e(x) (d,) is a sequence representation of the prompt read once per forward pass from the *frozen* backbone
(adapters bypassed): the mean over the prompt's tokens of the residual stream after ``gate_layer`` decoder layers
(0: the token embeddings, no extra pass; no final norm). The paper takes e(x) from a sequential recommender's
user embedding; here the LM itself supplies it. One router R (K, d) serves every adapted layer, as in the official
code, which passes one gate vector to all its MoE-LoRA layers. With K = 1 the gate is 1 and iLoRA is LoRA exactly.

An optional load-balancing term, ``load_balance`` · (K Σ_k ḡ_k² − 1) with ḡ the batch-mean gate (0 when the
experts are used equally, K − 1 when one takes all), joins the training loss through
:func:`~polar_vbll.adapters.injection.adapter_auxiliary_loss`.

The update depends on the input, so it cannot be merged into the base weight; the router lives in the first adapted
layer (saved there), the other layers hold a reference, so an ensemble of members on one base is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import PolarVBLLError
from ..fields import help_field as _help
from .base import ADAPTERS, AdapterConfig, AdapterLinear, AdapterMethod, LowRankConfig
from .capabilities import Capability, LinearMap
from .lora import LoraLinear


@dataclass
class IloraConfig(LowRankConfig):
    method = "ilora"

    experts: int = _help("K experts of rank r / K each (r must be a multiple of K); K = 1 is LoRA", 4)
    gate_layer: int | None = _help(
        "decoder layers the gate's sequence representation passes (0: token embeddings, no extra pass; "
        "unset: half the model's depth, a frozen no-grad pass through those layers)",
        None,
    )
    gate_temperature: float = _help("τ of the gate's softmax (lower: sharper mixtures)", 1.0)
    top_k: int | None = _help("keep each instance's k largest gate entries, renormalized (unset: all K)", None)
    load_balance: float = _help("weight of the load-balancing term K Σ ḡ_k² − 1 in the training loss (0: off)", 0.0)

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.experts, int) or self.experts < 1 or self.r % self.experts:
            raise PolarVBLLError(f"IloraConfig.experts must be a positive divisor of r={self.r}, got {self.experts!r}")
        if self.gate_layer is not None and self.gate_layer < 0:
            raise PolarVBLLError(f"IloraConfig.gate_layer must be >= 0, got {self.gate_layer}")
        if not self.gate_temperature > 0:
            raise PolarVBLLError(f"IloraConfig.gate_temperature must be > 0, got {self.gate_temperature}")
        if self.top_k is not None and not 1 <= self.top_k <= self.experts:
            raise PolarVBLLError(f"IloraConfig.top_k must lie in [1, experts={self.experts}], got {self.top_k}")
        if self.load_balance < 0:
            raise PolarVBLLError(f"IloraConfig.load_balance must be >= 0, got {self.load_balance}")


class _GateReady(Exception):
    """Raised by the hook on the gate layer to stop the representation pass there."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


def _decoder_layers(decoder: nn.Module, depth: int) -> nn.ModuleList:
    """The decoder's list of ``depth`` transformer blocks (``layers`` for Llama, Qwen2, Mistral; ``h`` for GPT-2)."""
    for child in decoder.children():
        if isinstance(child, nn.ModuleList) and len(child) == depth:
            return child
    raise PolarVBLLError(f"iLoRA: {type(decoder).__name__} has no list of {depth} decoder layers to read a gate from")


class InstanceGate(nn.Module):
    """The router R (K, d) and the gate of the batch in flight, computed by a pre-hook on the decoder.

    ``gates`` (B, K) holds g(x) for the rows of the current forward pass; ``representing`` is True while the frozen
    backbone computes e(x), when every iLoRA layer returns its base output alone.
    """

    _embeddings: nn.Module
    _stop_at: nn.Module | None

    def __init__(self, model: nn.Module, config: IloraConfig):
        super().__init__()
        settings: Any = model.config
        depth = int(settings.num_hidden_layers)
        self.gate_layer = depth // 2 if config.gate_layer is None else config.gate_layer
        if self.gate_layer > depth:
            raise PolarVBLLError(f"IloraConfig.gate_layer={self.gate_layer} exceeds the model's {depth} layers")
        self.experts, self.temperature, self.top_k = config.experts, config.gate_temperature, config.top_k
        with torch.random.fork_rng(devices=[]):  # the zero init below; the layers draw what LoRA's would
            self.router = nn.Linear(settings.hidden_size, config.experts)
        nn.init.zeros_(self.router.weight)  # every instance starts from the uniform mixture
        nn.init.zeros_(self.router.bias)
        self.representing = False
        self.gates: torch.Tensor | None = None
        get_decoder = getattr(model, "get_decoder", None)
        decoder: Any = get_decoder() if callable(get_decoder) else model
        stop_at = _decoder_layers(decoder, depth)[self.gate_layer - 1] if self.gate_layer else None
        # the backbone's modules, held without registering them (they are not the gate's to save)
        object.__setattr__(self, "_embeddings", decoder.get_input_embeddings())
        object.__setattr__(self, "_stop_at", stop_at)
        decoder.register_forward_pre_hook(self._before_decoder, with_kwargs=True)

    def representation(self, decoder: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        """e(x) (B, d) in fp32: the masked token mean of the frozen backbone's hidden state at the gate layer."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise PolarVBLLError("iLoRA's gate needs input_ids (it reads the prompt's representation from them)")
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        with torch.no_grad():
            if self._stop_at is None:
                hidden = self._embeddings(ids)
            else:
                handle = self._stop_at.register_forward_hook(self._stop)
                self.representing = True
                try:
                    decoder(*args, **kwargs)
                    raise PolarVBLLError("iLoRA: the decoder returned before reaching the gate layer")
                except _GateReady as ready:
                    hidden = ready.hidden
                finally:
                    self.representing = False
                    handle.remove()
        weights = mask.to(torch.float32).unsqueeze(-1)
        return (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    @staticmethod
    def _stop(module: nn.Module, inputs, output) -> None:
        raise _GateReady(output[0] if isinstance(output, tuple) else output)

    def _before_decoder(self, decoder: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.representing:
            return
        self.gates = self(self.representation(decoder, args, kwargs))

    def forward(self, representation: torch.Tensor) -> torch.Tensor:
        """g (B, K) on the simplex from e(x) (B, d)."""
        with torch.autocast(representation.device.type, enabled=False):
            logits = self.router(representation.float()) / self.temperature
        if self.top_k is not None and self.top_k < self.experts:
            kept = logits.topk(self.top_k, dim=-1).indices
            logits = logits.masked_fill(~torch.zeros_like(logits, dtype=torch.bool).scatter(-1, kept, True), -math.inf)
        return logits.softmax(-1)

    def balance_loss(self) -> torch.Tensor:
        """K Σ_k ḡ_k² − 1 of the current batch: 0 at equal use, K − 1 when one expert takes every instance."""
        if self.gates is None:
            raise PolarVBLLError("iLoRA: no gate computed yet")
        mean = self.gates.mean(0)
        return self.experts * (mean**2).sum() - 1.0


class IloraLinear(LoraLinear):
    """LoRA's ``lora_A`` (r, in) and ``lora_B`` (out, r), drawn as LoRA's, read as K experts of r / K rows / columns
    each."""

    # the gate sits between A and B: linear maps (K-FAC) but no input-independent Gaussian factor (BLoB)
    capabilities = frozenset({Capability.LINEAR_MAPS})
    gaussian_factor = AdapterLinear.gaussian_factor
    keeps_model_state = True
    instance_gate: InstanceGate

    def __init__(self, base_layer: nn.Linear, config: IloraConfig, *, gate: InstanceGate, owner: bool, **init):
        super().__init__(base_layer, config, **init)
        self.load_balance = config.load_balance
        if owner:
            self.gate = gate.to(base_layer.weight.device)  # saved with this layer
        object.__setattr__(self, "instance_gate", gate)  # every layer reads it, only the owner holds it
        self.owner = owner

    @classmethod
    def plan(cls, model: nn.Module, config: AdapterConfig, names: list[str], restore: bool, **data) -> dict[str, dict]:
        """One gate for the model, owned (and saved) by the first adapted layer."""
        assert isinstance(config, IloraConfig)
        options = super().plan(model, config, names, restore, **data)
        gate = InstanceGate(model, config)
        return {name: {"gate": gate, "owner": index == 0} for index, name in enumerate(options)}

    def rank_gates(self, x: torch.Tensor) -> torch.Tensor:
        """The gate of each row, repeated over its expert's r / K ranks and shaped to broadcast over x's middle
        dimensions: (B, 1, …, r)."""
        gates = self.instance_gate.gates
        if gates is None or gates.shape[0] != x.shape[0]:
            raise PolarVBLLError(
                "iLoRA: no gate for this batch; call the model (its decoder computes the gate), not the layer alone"
            )
        per_rank = gates.repeat_interleave(self.lora_A.shape[0] // gates.shape[1], dim=-1)
        return per_rank.reshape(per_rank.shape[0], *([1] * (x.dim() - 2)), per_rank.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.instance_gate.representing:
            return self.base_layer(x)
        return super().forward(x)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.lora_A.dtype)
        return ((x @ self.lora_A.T) * self.rank_gates(x)) @ self.lora_B.T * self.scaling

    def delta_weight(self) -> torch.Tensor:
        raise PolarVBLLError("iLoRA's ΔW depends on each input's gate: it has no single weight to merge or export")

    def merge(self) -> None:
        self.delta_weight()

    def linear_maps(self) -> list[LinearMap]:
        """A: a = x, g = s·(Bᵀ∂y) ⊙ g(x); B: a = (A x) ⊙ g(x), g = s·∂y (the update is s·B (g(x) ⊙ A x))."""
        s, a_factor, b_factor = self.scaling, self.lora_A, self.lora_B
        return [
            LinearMap("A", a_factor, lambda x, go: (x, s * (go @ b_factor) * self.rank_gates(x))),
            LinearMap("B", b_factor, lambda x, go: ((x @ a_factor.T) * self.rank_gates(x), s * go)),
        ]

    def auxiliary_loss(self) -> torch.Tensor | None:
        """The load-balancing term, once per model (from the gate's owner)."""
        if not self.owner or not self.load_balance:
            return None
        return self.load_balance * self.instance_gate.balance_loss()


ADAPTERS.register("ilora", AdapterMethod(IloraConfig, IloraLinear))
