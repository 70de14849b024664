"""The adapter interface shared by every parameter-efficient method of the toolkit.

An adapter method is a config dataclass (:class:`AdapterConfig` subclass) plus a layer class
(:class:`AdapterLinear` subclass) that wraps one ``nn.Linear``: ``y = base(x) + Δ(x)``. Registering both in
:data:`ADAPTERS` is all a new method needs; injection, merging, saving and loading are shared here.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import nn

from ..errors import PolarVBLLError
from ..fields import MethodConfig
from ..fields import help_field as _help
from ..registry import Registry
from .capabilities import CAPABILITY_HELP, Capability, GaussianFactor, LinearMap

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"


@dataclass
class TunerConfig(MethodConfig):
    """What every fine-tuning method's config has: its registered ``method`` name, a dict form and help texts."""

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
    dropout: float | None = _help(
        "dropout on the adapter input (0 = none; unset: the uncertainty method's, MC dropout 0.1, else 0)", None
    )

    def __post_init__(self):
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
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
    #: whether the layers share state beyond themselves (iLoRA's one gate), so members cannot share one base
    keeps_model_state: ClassVar[bool] = False
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
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
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

    def on_step(self, step: int, total: int) -> None:  # noqa: B027 (optional hook)
        """Called before training step ``step`` (0-based) of ``total`` (EMTAL's router fading)."""

    def auxiliary_loss(self) -> torch.Tensor | None:
        """A term the method adds to the training loss, from the last forward pass (iLoRA's load balancing);
        ``None`` for none."""
        return None

    @classmethod
    def prepare(cls, model: nn.Module, config: AdapterConfig, inputs) -> dict:
        """Initialization data computed from the model's inputs (``needs_data``): ``inputs`` is a
        :class:`~polar_vbll.engine.prepare.TrainingInputs`; the result is passed to :meth:`plan` as ``**data``."""
        return {}


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
        shares = not (self.layer.alters_base or self.layer.keeps_model_state)
        shared = {Capability.SHARED_BASE} if shares else set()
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
