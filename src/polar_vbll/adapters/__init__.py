"""Parameter-efficient adapters behind one interface: inject, merge/unmerge, save/load, diagnostics.

A method is a config dataclass plus a layer class, registered in :data:`ADAPTERS` (one file, one line).
"""

from . import dora, lora, polar  # noqa: F401  (registers the methods)
from .base import (
    ADAPTERS,
    AdapterConfig,
    AdapterLinear,
    adapter_layers,
    adapter_state_dict,
    count_trainable,
    inject_adapters,
    load_adapter,
    load_adapter_config,
    make_config,
    merge_adapters,
    save_adapter,
    unmerge_adapters,
)
from .diagnostics import adapter_diagnostics, orthogonality_error, stable_rank
from .dora import DoraConfig, DoraLinear
from .lora import LoraConfig, LoraLinear
from .polar import PolarConfig, PolarLinear

__all__ = [
    "ADAPTERS",
    "AdapterConfig",
    "AdapterLinear",
    "DoraConfig",
    "DoraLinear",
    "LoraConfig",
    "LoraLinear",
    "PolarConfig",
    "PolarLinear",
    "adapter_diagnostics",
    "adapter_layers",
    "adapter_state_dict",
    "count_trainable",
    "inject_adapters",
    "load_adapter",
    "load_adapter_config",
    "make_config",
    "merge_adapters",
    "orthogonality_error",
    "save_adapter",
    "stable_rank",
    "unmerge_adapters",
]
