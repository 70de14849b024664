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
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import atomic_directory
from ..errors import PolarVBLLError
from ..fields import help_field as _help
from ..registry import Registry

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"


@dataclass
class AdapterConfig:
    """Options every adapter shares. Subclasses add their own fields and set ``method``."""

    method: ClassVar[str] = ""
    r: int = _help("rank of the update ΔW", 8)
    alpha: float = _help("scale numerator: ΔW is multiplied by alpha / r", 16.0)
    target_modules: list[str] | str = _help(
        "Linear modules to adapt: a list of name suffixes (e.g. q_proj) or one regex matched against full names",
        default_factory=lambda: ["q_proj", "v_proj"],
    )
    dropout: float = _help("dropout on the adapter input (0 = none)", 0.0)

    def __post_init__(self):
        if not isinstance(self.r, int) or self.r < 1:
            raise PolarVBLLError(f"{type(self).__name__}.r must be a positive integer, got {self.r!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise PolarVBLLError(f"{type(self).__name__}.dropout must lie in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if not self.target_modules:
            raise PolarVBLLError(f"{type(self).__name__}.target_modules is empty")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict:
        return {"method": self.method, **asdict(self)}

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


class AdapterLinear(nn.Module, abc.ABC):
    """Wraps ``base_layer`` (frozen) and adds ``delta(x)``; subclasses define the update.

    ``merge()`` folds ΔW into the base weight (then ``forward`` is the base alone); ``unmerge()`` takes it out.
    """

    def __init__(self, base_layer: nn.Linear, config: AdapterConfig):
        super().__init__()
        self.base_layer = base_layer
        self.config = config
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.scaling = config.scaling
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.merged = False

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

    def low_rank_factors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(U (out, k), V (k, in)) with ΔW = U V, for cheap diagnostics; ``(ΔW, None)`` when not low-rank."""
        return self.delta_weight(), None


@dataclass(frozen=True)
class AdapterMethod:
    config: type[AdapterConfig]
    layer: type[AdapterLinear]


ADAPTERS: Registry[AdapterMethod] = Registry("adapter")


def make_config(method: str, **options) -> AdapterConfig:
    """``make_config("polar", r=8)``: the config class of a registered method, validated."""
    return ADAPTERS.get(method).config(**options)


def _matches(name: str, targets: list[str] | str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def inject_adapters(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Freeze ``model`` and wrap every target ``nn.Linear`` with the method's adapter layer; return their names.

    Raises :class:`PolarVBLLError` for a target that matches nothing, a non-Linear target, or a rank above
    min(in, out).
    """
    layer_cls = ADAPTERS.get(config.method).layer
    for param in model.parameters():
        param.requires_grad_(False)
    named = dict(model.named_modules())
    chosen = [name for name in named if name and _matches(name, config.target_modules)]
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
        if config.r > min(module.in_features, module.out_features):
            raise PolarVBLLError(
                f"r={config.r} exceeds min(in, out)={min(module.in_features, module.out_features)} "
                f"of {name} ({module.in_features} -> {module.out_features})"
            )
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer_cls(named[name], config))
    return chosen


def adapter_layers(model: nn.Module) -> dict[str, AdapterLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLinear)}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter parameters and buffers only (the frozen base weights are excluded)."""
    state = {}
    for name, layer in adapter_layers(model).items():
        for key, value in layer.state_dict().items():
            if not key.startswith("base_layer."):
                state[f"{name}.{key}"] = value.detach().contiguous()
    return state


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def merge_adapters(model: nn.Module) -> None:
    for layer in adapter_layers(model).values():
        layer.merge()


def unmerge_adapters(model: nn.Module) -> None:
    for layer in adapter_layers(model).values():
        layer.unmerge()


def save_adapter(model: nn.Module, folder: str | Path) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (adapter weights only), atomically."""
    layers = adapter_layers(model)
    if not layers:
        raise PolarVBLLError("the model has no adapters to save")
    config = next(iter(layers.values())).config
    with atomic_directory(folder) as tmp:
        save_file(adapter_state_dict(model), str(tmp / ADAPTER_WEIGHTS_FILE), metadata={"method": config.method})
        (tmp / ADAPTER_CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    return Path(folder)


def load_adapter_config(folder: str | Path) -> AdapterConfig:
    path = Path(folder) / ADAPTER_CONFIG_FILE
    try:
        options = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolarVBLLError(f"{path}: not found (not an adapter folder)") from None
    except json.JSONDecodeError as exc:
        raise PolarVBLLError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    method = options.pop("method", None)
    if method is None:
        raise PolarVBLLError(f"{path}: field 'method' missing")
    known = {f.name for f in fields(ADAPTERS.get(method).config)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise PolarVBLLError(f"{path}: unknown field(s) {', '.join(unknown)} for adapter '{method}'")
    return make_config(method, **options)


def load_adapter(model: nn.Module, folder: str | Path) -> AdapterConfig:
    """Inject the saved adapter into a freshly loaded base ``model`` and load its weights (exact round trip)."""
    config = load_adapter_config(folder)
    inject_adapters(model, config)
    state = load_file(str(Path(folder) / ADAPTER_WEIGHTS_FILE))
    expected = adapter_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise PolarVBLLError(
            f"{folder}: adapter weights do not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, layer in adapter_layers(model).items():
        prefix = name + "."
        layer.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, strict=False)
    return config
