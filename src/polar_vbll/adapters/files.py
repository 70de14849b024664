"""Adapter folders: ``adapter_config.json`` + ``adapter_model.safetensors``, written atomically, read with one-line
errors."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from ..atomic import atomic_directory
from ..errors import PolarVBLLError
from ..outputs import check_replaceable
from ..stored import load_tensors, read_json, tensor_metadata
from .base import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, ADAPTERS, CONFIG_ATTR, TunerConfig, make_config
from .injection import adapter_state_dict, ensemble_size, inject_adapters, load_adapter_state


def save_adapter(model: nn.Module, folder: str | Path) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (adapter weights only), atomically."""
    config = getattr(model, CONFIG_ATTR, None)
    if config is None:
        raise PolarVBLLError("the model has no adapters to save")
    check_replaceable(folder, {ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE})
    with atomic_directory(folder) as tmp:
        metadata = {"method": config.method, "members": str(ensemble_size(model))}
        save_file(adapter_state_dict(model), str(tmp / ADAPTER_WEIGHTS_FILE), metadata=metadata)
        (tmp / ADAPTER_CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    return Path(folder)


def load_adapter_config(folder: str | Path) -> TunerConfig:
    path = Path(folder) / ADAPTER_CONFIG_FILE
    if not path.is_file():
        raise PolarVBLLError(f"{path}: not found (not an adapter folder)")
    options = read_json(path, "adapter config")
    if not isinstance(options, dict):
        raise PolarVBLLError(f"{path}: expected a JSON object, got {type(options).__name__}")
    method = options.pop("method", None)
    if method is None:
        raise PolarVBLLError(f"{path}: field 'method' missing")
    known = {f.name for f in fields(ADAPTERS.get(method).config)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise PolarVBLLError(f"{path}: unknown field(s) {', '.join(unknown)} for adapter '{method}'")
    return make_config(method, **options)


def load_adapter(model: nn.Module, folder: str | Path) -> TunerConfig:
    """Inject the saved adapter into a freshly loaded base ``model`` and load its weights (exact round trip)."""
    config = load_adapter_config(folder)
    path = Path(folder) / ADAPTER_WEIGHTS_FILE
    members = int(tensor_metadata(path, "adapter weights").get("members", 1))
    inject_adapters(model, config, restore=True, members=members)
    load_adapter_state(model, load_tensors(path, "adapter weights"), str(path))
    return config
