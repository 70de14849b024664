"""PEFT's LoRA format, both ways: a trained adapter as a PEFT LoRA adapter folder, which
``peft.PeftModel.from_pretrained(base, folder)`` loads onto the original Hugging Face model with the same outputs
(:func:`export_peft`), and a PEFT LoRA folder as the starting point of a LoRA fit (:func:`load_peft_lora`).

Every layer that declares ``low_rank_delta`` computes base(x) + U V x with (U, V) = ``low_rank_factors()`` for the
original base weights: LoRA (U = s B, V = A), PoLAR (U = s X Θ, V = Yᵀ), PiSSA and CorDA (rank 2r: their residual base
folded back, :meth:`~polar_vbll.adapters.residual.ResidualLoraLinear.original_delta_factors`). PEFT's LoRA adds
(α/r) B A x; with α = r, B = U and A = V. ``target_modules`` lists the adapted modules by their full names, so PEFT
adapts exactly those.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from ..atomic import atomic_directory
from ..errors import PolarVBLLError
from ..outputs import check_replaceable
from ..stored import load_tensors, read_json
from .base import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, LowRankConfig, require_capability
from .capabilities import Capability
from .injection import adapter_config, adapter_layers, load_adapter_state

PEFT_PREFIX = "base_model.model."


def export_peft(model: nn.Module, folder: str | Path, base_model: str | None = None) -> Path:
    """Write the adapter of ``model`` (a Hugging Face model carrying adapter layers) as a PEFT LoRA adapter folder
    for the original ``model`` (``base_model``: its name or path, recorded as PEFT records it)."""
    layers = adapter_layers(model)
    if not layers:
        raise PolarVBLLError("PEFT export: the model has no adapter layers")
    method = adapter_config(model).method
    state, ranks = {}, set()
    for name, layer in layers.items():
        require_capability(layer, Capability.LOW_RANK_DELTA, f"PEFT export of '{method}'")
        if layer.merged:
            raise PolarVBLLError(f"PEFT export: {name} is merged into its base weight; unmerge it first")
        u, v = layer.low_rank_factors()
        assert v is not None  # a low_rank_delta layer's factors
        state[f"base_model.model.{name}.lora_A.weight"] = v.detach().float().contiguous()
        state[f"base_model.model.{name}.lora_B.weight"] = u.detach().float().contiguous()
        ranks.add(v.shape[0])
    if len(ranks) != 1:
        raise PolarVBLLError(f"PEFT export: the layers have different ranks {sorted(ranks)}")
    rank = ranks.pop()
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": rank,  # PEFT's scaling α / r = 1: B and A carry the whole update
        "lora_dropout": 0.0,
        "target_modules": sorted(layers),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_dora": False,
        "use_rslora": False,
        "modules_to_save": None,
    }
    check_replaceable(folder, {ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE})
    with atomic_directory(folder) as tmp:
        save_file(state, str(tmp / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt", "exported_from": method})
        (tmp / ADAPTER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return Path(folder)


def is_peft_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a PEFT adapter (its adapter_config.json names a ``peft_type``)."""
    path = Path(folder) / ADAPTER_CONFIG_FILE
    return path.is_file() and "peft_type" in (read_json(path, "adapter config") or {})


def load_peft_lora(model: nn.Module, folder: str | Path) -> None:
    """Load the PEFT LoRA adapter in ``folder`` into ``model``'s injected LoRA layers (same rank and modules): each
    layer's update (α_peft / r) B A is kept exactly, B rescaled to this adapter's α / r."""
    path = Path(folder) / ADAPTER_CONFIG_FILE
    peft = read_json(path, "PEFT adapter config")
    config = adapter_config(model)
    if peft.get("peft_type") != "LORA":
        raise PolarVBLLError(f"{path}: a PEFT {peft.get('peft_type')} adapter; only LORA starts a fit")
    refused = [key for key in ("use_dora", "use_rslora", "fan_in_fan_out", "modules_to_save") if peft.get(key)]
    if refused or peft.get("bias", "none") != "none":
        raise PolarVBLLError(f"{path}: PEFT options {refused or ['bias']} have no counterpart in this package's LoRA")
    if config.method != "lora" or not isinstance(config, LowRankConfig) or peft.get("r") != config.r:
        raise PolarVBLLError(
            f"{path}: a PEFT LoRA of rank {peft.get('r')}; start it with --adapter lora --r {peft.get('r')} "
            f"(this run: {config.method}, rank {getattr(config, 'r', None)})"
        )
    weights = load_tensors(Path(folder) / ADAPTER_WEIGHTS_FILE, "PEFT adapter weights")
    factor = (float(peft.get("lora_alpha", peft["r"])) / peft["r"]) / config.scaling
    state = {}
    for key, value in weights.items():
        name = key.removeprefix(PEFT_PREFIX).removesuffix(".weight").replace(".default.", ".")
        state[name] = value.float() * factor if name.endswith(".lora_B") else value.float()
    load_adapter_state(model, state, str(Path(folder) / ADAPTER_WEIGHTS_FILE))
