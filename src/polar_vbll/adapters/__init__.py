"""Parameter-efficient adapters behind one interface: inject, merge/unmerge, save/load, diagnostics.

A method is a config dataclass plus a layer class, registered in :data:`ADAPTERS` (one file, one line).
"""

from . import corda, dora, emtal, ilora, lisa, lora, pissa, polar, s2ft  # noqa: F401  (registers the methods)
from .base import ADAPTERS, AdapterConfig, AdapterLinear, LowRankConfig, ModelTuner, TunerConfig, make_config
from .corda import CordaConfig, CordaLinear, cached_covariances, collect_covariances
from .diagnostics import adapter_diagnostics, orthogonality_error, stable_rank
from .dora import DoraConfig, DoraLinear
from .emtal import EmtalConfig, EmtalLinear, balanced_kmeans
from .files import load_adapter, load_adapter_config, save_adapter
from .ilora import IloraConfig, IloraLinear, InstanceGate
from .injection import (
    AdapterEnsemble,
    adapter_auxiliary_loss,
    adapter_config,
    adapter_layers,
    adapter_parameters,
    adapter_state_dict,
    adapters_on_step,
    count_trainable,
    ensemble_size,
    inject_adapters,
    load_adapter_state,
    merge_adapters,
    merge_and_unload,
    model_tuner,
    set_active_member,
    unmerge_adapters,
)
from .lisa import LisaConfig, LisaTuner
from .lora import LoraConfig, LoraLinear
from .peft_format import export_peft
from .pissa import PissaConfig, PissaLinear
from .polar import PolarConfig, PolarLinear
from .residual import ResidualLoraLinear, export_lora
from .s2ft import S2FTConfig, S2FTLinear

__all__ = [
    "ADAPTERS",
    "AdapterConfig",
    "AdapterEnsemble",
    "AdapterLinear",
    "CordaConfig",
    "CordaLinear",
    "DoraConfig",
    "DoraLinear",
    "EmtalConfig",
    "EmtalLinear",
    "IloraConfig",
    "IloraLinear",
    "InstanceGate",
    "LisaConfig",
    "LisaTuner",
    "LoraConfig",
    "LoraLinear",
    "LowRankConfig",
    "ModelTuner",
    "PissaConfig",
    "PissaLinear",
    "PolarConfig",
    "PolarLinear",
    "ResidualLoraLinear",
    "S2FTConfig",
    "S2FTLinear",
    "TunerConfig",
    "adapter_auxiliary_loss",
    "adapter_config",
    "adapter_diagnostics",
    "adapter_layers",
    "adapter_parameters",
    "adapter_state_dict",
    "adapters_on_step",
    "balanced_kmeans",
    "cached_covariances",
    "collect_covariances",
    "count_trainable",
    "ensemble_size",
    "export_lora",
    "export_peft",
    "inject_adapters",
    "load_adapter",
    "load_adapter_config",
    "load_adapter_state",
    "make_config",
    "merge_adapters",
    "merge_and_unload",
    "model_tuner",
    "orthogonality_error",
    "save_adapter",
    "set_active_member",
    "stable_rank",
    "unmerge_adapters",
]
