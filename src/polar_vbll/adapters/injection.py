"""Putting adapters into a model and reading them back out: injection (with ensembles of members on one base),
the adapted layers, their state, merging."""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import PolarVBLLError
from .base import ADAPTERS, CONFIG_ATTR, MEMBERS_ATTR, TUNER_ATTR, AdapterConfig, AdapterLinear, ModelTuner, TunerConfig
from .capabilities import CAPABILITY_HELP, Capability


class AdapterEnsemble(nn.Module):
    """M adapters of one method on one shared (frozen) base layer; ``active`` picks the member ``forward`` uses."""

    def __init__(self, members: list[AdapterLinear]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.active = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.members[self.active](x)


def set_active_member(model: nn.Module, index: int) -> None:
    """Route every :class:`AdapterEnsemble` of ``model`` through member ``index``."""
    for module in model.modules():
        if isinstance(module, AdapterEnsemble):
            if not 0 <= index < len(module.members):
                raise PolarVBLLError(f"ensemble member {index} does not exist (M = {len(module.members)})")
            module.active = index


def ensemble_size(model: nn.Module) -> int:
    """M of the model's adapter ensembles (1 without an ensemble)."""
    return getattr(model, MEMBERS_ATTR, 1)


def _matches(name: str, targets: list[str] | str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def target_names(model: nn.Module, targets: list[str] | str) -> list[str]:
    """Names of the modules ``targets`` (name suffixes or one regex) selects, in model order."""
    return [name for name, _ in model.named_modules() if name and _matches(name, targets)]


def inject_adapters(
    model: nn.Module,
    config: TunerConfig,
    *,
    restore: bool = False,
    members: int = 1,
    member_seeds: list[int] | None = None,
    **data,
) -> list[str]:
    """Freeze ``model`` and apply the method: wrap every target ``nn.Linear`` with the method's adapter layer (or
    attach its model tuner); return the names of the adapted modules.

    ``members=M > 1`` gives every target M independent adapters on its one shared base (a deep ensemble without M
    copies of the model; see :func:`set_active_member`); ``member_seeds`` seeds each member's initialization.

    ``restore=True`` skips data-dependent initialization (the adapter will be loaded from a file); ``data`` is
    initialization data some methods need (CorDA: ``covariances``). Raises :class:`PolarVBLLError` for a target
    that matches nothing, a non-Linear target, or a rank above min(in, out).
    """
    method = ADAPTERS.get(config.method)
    if getattr(model, CONFIG_ATTR, None) is not None:
        raise PolarVBLLError(f"the model already has a '{getattr(model, CONFIG_ATTR).method}' adapter")
    for param in model.parameters():
        param.requires_grad_(False)
    if members < 1 or (member_seeds is not None and len(member_seeds) != members):
        raise PolarVBLLError(f"members must be >= 1 with one seed each, got {members} and {member_seeds}")
    if members > 1 and Capability.SHARED_BASE not in method.capabilities:
        needs = CAPABILITY_HELP[Capability.SHARED_BASE]
        raise PolarVBLLError(f"an ensemble needs an adapter that {needs}; '{config.method}' does not")
    if method.tuner is not None:
        tuner = method.tuner(model, config)
        setattr(model, TUNER_ATTR, tuner)
        setattr(model, CONFIG_ATTR, config)
        return []
    layer_class = method.layer
    assert layer_class is not None and isinstance(config, AdapterConfig)  # a method has a tuner or a layer
    named = dict(model.named_modules())
    chosen = target_names(model, config.target_modules)
    if not chosen:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in named.items() if isinstance(m, nn.Linear)})
        raise PolarVBLLError(
            f"target_modules {config.target_modules!r} match no module of "
            f"{type(model).__name__}; its Linear modules are named: {', '.join(linear)}"
        )
    for name in chosen:
        module = named[name]
        if isinstance(module, AdapterLinear):
            raise PolarVBLLError(f"{name} already has an adapter")
        if not isinstance(module, nn.Linear):
            raise PolarVBLLError(f"target {name} is {type(module).__name__}, not nn.Linear")
        r = getattr(config, "r", None)
        if r is not None and r > min(module.in_features, module.out_features):
            raise PolarVBLLError(
                f"r={r} exceeds min(in, out)={min(module.in_features, module.out_features)} "
                f"of {name} ({module.in_features} -> {module.out_features})"
            )
    plan = layer_class.plan(model, config, chosen, restore, **data)
    for index, (name, options) in enumerate(plan.items()):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if members == 1 and member_seeds is None:
            setattr(parent, child, layer_class(named[name], config, **options))
            continue
        layers = []
        for member in range(members):
            if member_seeds is None:  # members draw one after another from the global stream
                layers.append(layer_class(named[name], config, **options))
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(member_seeds[member] * 1_000_003 + index)
                layers.append(layer_class(named[name], config, **options))
        setattr(parent, child, AdapterEnsemble(layers))
    setattr(model, CONFIG_ATTR, config)
    setattr(model, MEMBERS_ATTR, members)
    return list(plan)


def adapter_config(model: nn.Module) -> TunerConfig:
    config = getattr(model, CONFIG_ATTR, None)
    if config is None:
        raise PolarVBLLError("the model has no adapter")
    return config


def model_tuner(model: nn.Module) -> ModelTuner | None:
    return getattr(model, TUNER_ATTR, None)


def adapter_layers(model: nn.Module) -> dict[str, AdapterLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLinear)}


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer of the adapter must hold (for LISA: every layer it may unfreeze)."""
    tuner = model_tuner(model)
    return tuner.parameters() if tuner is not None else [p for p in model.parameters() if p.requires_grad]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter parameters and buffers only (the frozen base weights are excluded)."""
    tuner = model_tuner(model)
    if tuner is not None:
        return {k: v.detach().contiguous() for k, v in tuner.state_dict().items()}
    state = {}
    for name, layer in adapter_layers(model).items():
        for key, value in layer.state_dict().items():
            if not key.startswith("base_layer."):
                state[f"{name}.{key}"] = value.detach().contiguous()
    return state


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
    """Load tensors written by :func:`adapter_state_dict` into a model with the same adapter injected."""
    tuner = model_tuner(model)
    if tuner is not None:
        tuner.load_state(state, source)
        return
    expected = adapter_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise PolarVBLLError(
            f"{source}: adapter weights do not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    wrong = [k for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        shapes = f"{tuple(state[wrong[0]].shape)}, expected {tuple(expected[wrong[0]].shape)}"
        raise PolarVBLLError(f"{source}: adapter tensor {wrong[0]} has shape {shapes} (another rank or model?)")
    for name, layer in adapter_layers(model).items():
        prefix = name + "."
        layer.load_adapter_state({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


def adapters_on_step(model: nn.Module, step: int, total: int) -> None:
    """Tell every adapter layer that training step ``step`` (0-based) of ``total`` begins."""
    for layer in adapter_layers(model).values():
        layer.on_step(step, total)


def adapter_auxiliary_loss(model: nn.Module) -> torch.Tensor | None:
    """The sum of the adapter layers' training-loss terms from the last forward pass (``None`` when none has one)."""
    terms = [t for layer in adapter_layers(model).values() if (t := layer.auxiliary_loss()) is not None]
    return torch.stack(terms).sum() if terms else None


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters); for LISA the parameters active now."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def merge_adapters(model: nn.Module) -> None:
    if ensemble_size(model) > 1:
        raise PolarVBLLError("the members of an adapter ensemble share one base weight and cannot be merged into it")
    for layer in adapter_layers(model).values():
        layer.merge()


def unmerge_adapters(model: nn.Module) -> None:
    for layer in adapter_layers(model).values():
        layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every adapter into its base weight and put the base ``nn.Linear`` back in its place: the model has the
    base architecture, parameter count and forward cost again (for deployment; the adapter cannot be unmerged)."""
    merge_adapters(model)
    for name, layer in adapter_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.base_layer)
    for attr in (CONFIG_ATTR, MEMBERS_ATTR):
        if hasattr(model, attr):
            delattr(model, attr)
    return model
