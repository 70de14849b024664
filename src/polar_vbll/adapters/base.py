"""The adapter interface shared by every parameter-efficient method of the toolkit.

An adapter method is a config dataclass (:class:`AdapterConfig` subclass) plus a layer class
(:class:`AdapterLinear` subclass) that wraps one ``nn.Linear``: ``y = base(x) + Δ(x)``. Registering both in
:data:`ADAPTERS` is all a new method needs; injection, merging, saving and loading are shared here.
"""

from __future__ import annotations

import abc
import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import save_file
from torch import nn

from ..atomic import atomic_directory
from ..errors import PolarVBLLError
from ..fields import help_field as _help
from ..outputs import check_replaceable
from ..registry import Registry
from ..stored import load_tensors, read_json, tensor_metadata
from .capabilities import CAPABILITY_HELP, Capability, GaussianFactor, LinearMap

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"


@dataclass
class TunerConfig:
    """What every fine-tuning method's config has: its registered ``method`` name, a dict form and help texts."""

    method: ClassVar[str] = ""

    def to_dict(self) -> dict:
        return {"method": self.method, **asdict(self)}

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    def _check_ratio(self, name: str) -> None:
        value = getattr(self, name)
        if not 0.0 < value <= 1.0:
            raise PolarVBLLError(f"{type(self).__name__}.{name} must lie in (0, 1], got {value}")


@dataclass
class AdapterConfig(TunerConfig):
    """Options of every method that wraps ``nn.Linear`` modules. Subclasses add their own fields and set ``method``."""

    target_modules: list[str] | str = _help(
        "Linear modules to adapt: a list of name suffixes (e.g. q_proj) or one regex matched against full names",
        default_factory=lambda: ["q_proj", "v_proj"],
    )
    dropout: float = _help("dropout on the adapter input (0 = none)", 0.0)

    def __post_init__(self):
        if not 0.0 <= self.dropout < 1.0:
            raise PolarVBLLError(f"{type(self).__name__}.dropout must lie in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if not self.target_modules:
            raise PolarVBLLError(f"{type(self).__name__}.target_modules is empty")


@dataclass
class LowRankConfig(AdapterConfig):
    """Low-rank updates ΔW = (alpha / r) · (rank-r product)."""

    r: int = _help("rank of the update ΔW", 8)
    alpha: float = _help("scale numerator: ΔW is multiplied by alpha / r", 16.0)

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.r, int) or self.r < 1:
            raise PolarVBLLError(f"{type(self).__name__}.r must be a positive integer, got {self.r!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


class AdapterLinear(nn.Module, abc.ABC):
    """Wraps ``base_layer`` (frozen) and adds ``delta(x)``; subclasses define the update.

    ``merge()`` folds ΔW into the base weight (then ``forward`` is the base alone); ``unmerge()`` takes it out.
    Methods that change the base weight at initialization (PiSSA, CorDA: a residual; S2FT: a permutation) keep
    what they did in persistent buffers and override :meth:`load_adapter_state`, so that a saved adapter loaded onto
    a fresh base restores the same base weight.
    """

    #: whether initialization changes the base weight (then several members cannot share one base)
    alters_base: ClassVar[bool] = False
    #: what the layer offers uncertainty methods beyond wrapping a Linear (:mod:`.capabilities`)
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    #: whether initialization needs the model's inputs on training data (:meth:`prepare`, e.g. CorDA's covariances)
    needs_data: ClassVar[bool] = False
    base_layer: nn.Linear
    dropout: nn.Module

    def __init__(self, base_layer: nn.Linear, config: AdapterConfig, **init):
        super().__init__()
        if init:
            raise PolarVBLLError(f"{type(self).__name__} got unexpected options {sorted(init)}")
        self.base_layer = base_layer
        self.config = config
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.scaling = getattr(config, "scaling", 1.0)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.merged = False

    @classmethod
    def plan(cls, model: nn.Module, config: AdapterConfig, names: list[str], restore: bool, **data) -> dict[str, dict]:
        """Options of each layer's constructor, by module name (which may add modules to ``names``).

        ``restore=True``: the layers will be loaded from a saved adapter, so skip data-dependent initialization.
        ``data``: what :func:`inject_adapters` was given (e.g. ``covariances`` for CorDA).
        """
        if data:
            raise PolarVBLLError(f"adapter '{config.method}' takes no initialization data, got {sorted(data)}")
        return {name: {} for name in names}

    @abc.abstractmethod
    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """ΔW x for inputs x (..., in) -> (..., out), without the base output."""

    @abc.abstractmethod
    def delta_weight(self) -> torch.Tensor:
        """ΔW (out, in) in fp32, as merged into the base weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        return out + self.delta(self.dropout(x)).to(out.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            weight = self.base_layer.weight
            weight.copy_((weight.float() + self.delta_weight()).to(weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            weight = self.base_layer.weight
            weight.copy_((weight.float() - self.delta_weight()).to(weight.dtype))
            self.merged = False

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load this layer's saved adapter tensors (keys relative to the layer, base weights excluded)."""
        if self.merged:
            raise PolarVBLLError("unmerge the adapter before loading adapter weights into it")
        self.load_state_dict(state, strict=False)

    def low_rank_factors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(U (out, k), V (k, in)) with ΔW = U V, for cheap diagnostics; ``(ΔW, None)`` when not low-rank."""
        return self.delta_weight(), None

    def linear_maps(self) -> list[LinearMap]:
        """The maps y = W a with trained weight W inside this layer (capability ``linear_maps``)."""
        raise PolarVBLLError(f"{type(self).__name__} declares no {Capability.LINEAR_MAPS.value}")

    def gaussian_factor(self) -> GaussianFactor:
        """The factor that carries a Gaussian posterior (capability ``gaussian_factor``)."""
        raise PolarVBLLError(f"{type(self).__name__} declares no {Capability.GAUSSIAN_FACTOR.value}")

    @classmethod
    def prepare(cls, model: nn.Module, config: AdapterConfig, inputs) -> dict:
        """Initialization data computed from the model's inputs (``needs_data``): ``inputs`` is a
        :class:`~polar_vbll.engine.prepare.TrainingInputs`; the result is passed to :meth:`plan` as ``**data``."""
        return {}


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


class ModelTuner(abc.ABC):
    """A method that trains parameters the model already has (LISA) instead of wrapping Linear modules.

    Lives on the model as ``model.polar_vbll_tuner``; the trainer calls :meth:`on_step` before every step.
    """

    def __init__(self, model: nn.Module, config: TunerConfig):
        self.model = model
        self.config = config

    @abc.abstractmethod
    def parameters(self) -> list[nn.Parameter]:
        """Every parameter the method may ever train (the optimizer's parameter list)."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trained tensors, by the model's parameter names."""

    def load_state(self, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
        params = dict(self.model.named_parameters())
        unknown = sorted(set(state) - set(params))
        if unknown:
            raise PolarVBLLError(f"{source}: tensors {unknown[:3]} are not parameters of this model")
        with torch.no_grad():
            for name, value in state.items():
                if params[name].shape != value.shape:
                    raise PolarVBLLError(
                        f"{source}: {name} has shape {tuple(value.shape)}, the model's {tuple(params[name].shape)}"
                    )
                params[name].copy_(value)

    def on_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:  # noqa: B027 (optional hook)
        """Called before optimizer step ``step`` (0-based)."""


@dataclass(frozen=True)
class AdapterMethod:
    """A registered method: its config class and either a Linear wrapper (``layer``) or a model tuner.

    ``riemannian``: its factors live on manifolds, so a Euclidean optimizer (adamw) is refused;
    ``default_optimizer`` is used when none is asked for.
    """

    config: type[TunerConfig]
    layer: type[AdapterLinear] | None = None
    tuner: type[ModelTuner] | None = None
    default_optimizer: str = "adamw"
    riemannian: bool = False

    @property
    def capabilities(self) -> frozenset[Capability]:
        """What the method offers uncertainty methods (:mod:`.capabilities`)."""
        if self.layer is None:
            return frozenset()
        shared = {Capability.SHARED_BASE} if not self.layer.alters_base else set()
        return frozenset({Capability.WRAPS_LINEAR, *shared, *self.layer.capabilities})


def require_capability(layer: AdapterLinear, capability: Capability, who: str) -> None:
    """Refuse, with one line, an adapter layer that does not declare ``capability``, which ``who`` needs."""
    if capability not in layer.capabilities:
        raise PolarVBLLError(
            f"{who} needs an adapter with {capability.value} ({CAPABILITY_HELP[capability]}); "
            f"{type(layer).__name__} does not declare it"
        )


def check_capabilities(method: str, required: frozenset[Capability], who: str) -> None:
    """Refuse, with one line, an adapter ``method`` that lacks a capability ``who`` (an uncertainty method) needs."""
    missing = sorted(required - ADAPTERS.get(method).capabilities)
    if missing:
        needs = ", ".join(f"{c.value} ({CAPABILITY_HELP[c]})" for c in missing)
        raise PolarVBLLError(f"{who} needs an adapter with {needs}; '{method}' does not declare it")


ADAPTERS: Registry[AdapterMethod] = Registry("adapter")
TUNER_ATTR = "polar_vbll_tuner"
MEMBERS_ATTR = "polar_vbll_members"
CONFIG_ATTR = "polar_vbll_adapter_config"


def make_config(method: str, **options) -> TunerConfig:
    """``make_config("polar", r=8)``: the config class of a registered method, validated."""
    config_cls = ADAPTERS.get(method).config
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise PolarVBLLError(f"adapter '{method}' has no option(s) {', '.join(unknown)}; it has {', '.join(known)}")
    return config_cls(**options)


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
        raise PolarVBLLError(
            f"an ensemble needs adapters that leave the base weight unchanged; '{config.method}' does not"
        )
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
