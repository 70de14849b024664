"""``FitConfig``: every option of a fine-tuning run, with help text, validation and JSON/TOML loading."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from .adapters.base import ADAPTERS, check_capabilities, make_config
from .data.encoding import DEFAULT_MAX_LENGTH
from .errors import PolarVBLLError
from .fields import ConfigFieldError, check_types, from_mapping
from .fields import help_field as _help
from .uq import UQ_METHODS, VBLLConfig


@dataclass
class FitConfig:
    """A fine-tuning run: backbone + adapter + uncertainty head on one task."""

    model: str = _help("embedded model name, Hugging Face id or local folder", "smollm2-135m")
    task: str = _help("task name (polar-vbll data list) or path to a JSONL file/folder", "sst2")
    template: str | None = _help("prompt template (default: the task's)", None)
    adapter: str = _help("adapter method: polar, lora, dora, pissa, corda, s2ft, lisa", "polar")
    uq: str = _help("uncertainty method: vbll, map, mle, mc_dropout, ensemble, laplace, blob, temperature", "vbll")
    optimizer: Literal["geoopt", "landing", "adamw"] | None = _help(
        "adapter optimizer (default: geoopt for polar, adamw otherwise)", None
    )
    r: int = _help("adapter rank", 8)
    alpha: float = _help("adapter scale numerator (ΔW × alpha / r)", 16.0)
    target_modules: list[str] | None = _help(
        "Linear modules that get adapters (default: the method's; q_proj v_proj for low-rank methods)", None
    )
    theta: Literal["full", "diagonal"] = _help("PoLAR's Θ: full r×r or diagonal", "full")
    pissa_niter: int = _help("PiSSA: 0 = full SVD, k > 0 = randomized SVD with k subspace iterations", 0)
    corda_mode: Literal["ipm", "kpm"] = _help("CorDA: ipm trains the top-r components of W·C, kpm the bottom-r", "ipm")
    corda_samples: int = _help("CorDA: training examples whose layer inputs form the covariance C", 256)
    corda_task: str | None = _help("CorDA: task whose inputs form C (default: the training task)", None)
    s2ft_head_ratio: float = _help("S2FT: fraction of attention heads trained per block", 0.1)
    s2ft_channel_ratio: float = _help("S2FT: fraction of FFN channels trained per block", 0.01)
    s2ft_selection: Literal["random", "weight_norm"] = _help(
        "S2FT: random (seeded) or largest-norm selection", "random"
    )
    lisa_layers: int = _help("LISA: decoder layers unfrozen at a time (γ)", 2)
    lisa_interval: int = _help("LISA: steps between draws of the active layers (K)", 10)
    lisa_train_embeddings: bool = _help("LISA: always train the input embeddings and final norm", True)
    landing_lambda: float = _help("pull-back weight λ of the landing optimizer", 1.0)
    steps: int = _help("optimizer steps (each consumes one batch)", 200)
    batch_size: int = _help("examples per step", 16)
    max_length: int = _help("token budget per prompt; longer prompts lose their start", DEFAULT_MAX_LENGTH)
    lr_adapter: float = _help("peak learning rate of the adapter", 1e-3)
    lr_head: float = _help("peak learning rate of the head", 1e-3)
    weight_decay: float | None = _help("adapter weight decay (default: the method's, MAP 1e-5)", None)
    warmup_ratio: float = _help("fraction of steps with linear warm-up, then linear decay to 0", 0.06)
    lr_restarts: list[int] = _help(
        "steps at which the learning-rate schedule starts a new cycle (warm-up, then decay to 0 at the next restart "
        "or the end); `fit --resume RUN --steps N` adds the old end when it extends a finished run",
        default_factory=list,
    )
    grad_clip: float = _help("clip the gradient norm of the updated parameters (0 = off)", 1.0)
    alternate: bool | None = _help("alternate head and adapter steps (default: yes for vbll, joint otherwise)", None)
    head_steps: int = _help("head-only steps per alternating cycle (adapter fixed; no backbone backward)", 1)
    adapter_steps: int = _help("adapter steps per alternating cycle (head fixed)", 1)
    seed: int = _help("seed of initialization, data order and sampling", 0)
    train_limit: int | None = _help("use only the first N training examples", None)
    eval_split: str | None = _help("split for the final report (default: the task's evaluation split)", None)
    eval_limit: int | None = _help("evaluate only the first N examples", None)
    eval_batch_size: int = _help("examples per evaluation batch", 32)
    checkpoint_every: int = _help("write a resumable checkpoint every K steps (0 = only at the end)", 50)
    log_every: int = _help("compute adapter diagnostics every K steps", 25)
    laplace: bool = _help("after training, refine the VBLL covariance by a last-layer Laplace approximation", False)
    laplace_samples: int = _help("training examples (seeded random subset) for a Laplace Hessian (VBLL or LA)", 512)
    dropout: float | None = _help("adapter input dropout (default: the method's, 0.1 for mc_dropout, else 0)", None)
    mc_samples: int = _help("backbone passes per prediction of MC dropout", 10)
    ensemble_size: int = _help("adapters (and heads) of a deep ensemble, on one shared base", 3)
    blob_samples: int = _help("BLoB: backbone passes per prediction (0 = the posterior mean only)", 10)
    la_subset: Literal["adapter", "last_layer"] = _help(
        "Laplace-LoRA: K-FAC over the adapter and head weights, or the head only", "adapter"
    )
    temperature_scaling: bool | None = _help(
        "after training, fit a temperature on held-out training examples (default: on for uq=temperature)", None
    )
    calibration_size: int = _help("training examples held out of training for the temperature (when fitted)", 256)
    calibration_holdout: bool | None = _help(
        "hold calibration_size training examples out of training (default: with temperature scaling); set it on "
        "every run of a comparison so all train on the same data and any run can be refined by a temperature later",
        None,
    )
    vbll: VBLLConfig = _help("options of the VBLL head", default_factory=VBLLConfig)

    def __post_init__(self):
        if isinstance(self.vbll, dict):
            self.vbll = from_mapping(VBLLConfig, self.vbll, "FitConfig.vbll")
        check_types(self)
        method = UQ_METHODS.get(self.uq)
        if self.temperature_scaling is None:
            self.temperature_scaling = method.post_hoc_temperature
        if self.calibration_holdout is None:
            self.calibration_holdout = self.temperature_scaling
        if self.temperature_scaling and not self.calibration_holdout:
            raise PolarVBLLError("FitConfig.temperature_scaling needs calibration_holdout (held-out examples for T)")
        if self.dropout is None:
            self.dropout = method.adapter_dropout
        for name in ("mc_samples", "calibration_size", "ensemble_size"):
            if getattr(self, name) < 1:
                raise ConfigFieldError("FitConfig", name, f"must be >= 1, got {getattr(self, name)}")
        if self.blob_samples < 0:
            raise ConfigFieldError("FitConfig", "blob_samples", f"must be >= 0, got {self.blob_samples}")
        adapter = ADAPTERS.get(self.adapter)
        if self.optimizer is None:
            self.optimizer = adapter.default_optimizer
        if adapter.riemannian and self.optimizer == "adamw":
            raise PolarVBLLError(
                f"FitConfig.optimizer: {self.adapter} needs geoopt or landing (adamw ignores the manifold)"
            )
        check_capabilities(self.adapter, method.requires(self), f"uq '{self.uq}'")
        if self.alternate is None:
            self.alternate = method.alternates
        for name in ("steps", "batch_size", "max_length", "eval_batch_size", "r", "laplace_samples"):
            if getattr(self, name) < 1:
                raise ConfigFieldError("FitConfig", name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("train_limit", "eval_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigFieldError(
                    "FitConfig", name, f"must be >= 1 (leave it unset for all), got {getattr(self, name)}"
                )
        for name in ("lr_adapter", "lr_head", "alpha"):
            if not getattr(self, name) > 0:
                raise ConfigFieldError("FitConfig", name, f"must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip", "checkpoint_every", "log_every", "landing_lambda"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigFieldError("FitConfig", name, f"must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigFieldError("FitConfig", "dropout", f"must lie in [0, 1), got {self.dropout}")
        if self.lr_restarts != sorted(set(self.lr_restarts)) or not all(0 < s < self.steps for s in self.lr_restarts):
            raise ConfigFieldError(
                "FitConfig",
                "lr_restarts",
                f"must be increasing steps in (0, steps={self.steps}), got {self.lr_restarts}",
            )
        if self.alternate and (
            self.head_steps < 0 or self.adapter_steps < 0 or self.head_steps + self.adapter_steps < 1
        ):
            raise PolarVBLLError("FitConfig.head_steps and adapter_steps must be >= 0 with a positive sum")
        if self.laplace and not method.last_layer_laplace:
            raise PolarVBLLError(
                f"FitConfig.laplace refines the VBLL head's posterior; uq {self.uq!r} has none (MAP: --uq laplace)"
            )
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigFieldError("FitConfig", "warmup_ratio", f"must lie in [0, 1), got {self.warmup_ratio}")
        make_config(self.adapter, **self.adapter_options())  # validates the adapter's options now

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def post_hoc(self) -> list[str]:
        """The post-hoc steps this run runs after training, in order (:data:`polar_vbll.posthoc.POST_HOC`)."""
        steps = ["last_layer_laplace"] * self.laplace
        steps += ["laplace_lora"] * UQ_METHODS.get(self.uq).post_hoc_laplace
        return steps + ["temperature"] * bool(self.temperature_scaling)

    def adapter_options(self) -> dict[str, Any]:
        """Options of the adapter's config: shared fields (r, alpha, ...) by name, the method's own from
        ``<method>_<field>``, the seed from ``seed``; unset ``target_modules`` keeps the method's default."""
        own = {f.name for f in fields(self)}
        options = {}
        for f in fields(ADAPTERS.get(self.adapter).config):
            for source in (f.name, f"{self.adapter}_{f.name}"):  # dropout: set from the uq method when unset
                if source in own and getattr(self, source) is not None:
                    options[f.name] = getattr(self, source)
                    break
        return options

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    def resumed(self, **changes) -> FitConfig:
        """This run's config with ``changes`` that a resume may make (:data:`RESUME_OPTIONS`); more ``steps``
        extend a finished run by a new learning-rate cycle that starts at its old end (see ``lr_restarts``)."""
        fixed = sorted(name for name, value in changes.items() if value is not None and name not in RESUME_OPTIONS)
        if fixed:
            flags = ", ".join("--" + name.replace("_", "-") for name in fixed)
            allowed = ", ".join("--" + name.replace("_", "-") for name in RESUME_OPTIONS)
            raise PolarVBLLError(
                f"{flags}: cannot change when resuming (the run's config.json fixes it); allowed: {allowed}"
            )
        changes = {k: v for k, v in changes.items() if v is not None}
        if changes.get("steps", self.steps) != self.steps:
            if changes["steps"] < self.steps:
                raise ConfigFieldError(
                    "FitConfig",
                    "steps",
                    f"{changes['steps']} is fewer than the run's {self.steps}; give more to extend",
                )
            changes["lr_restarts"] = [*self.lr_restarts, self.steps]
        return FitConfig(**{**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, data, source: str | Path | None = None) -> FitConfig:
        """A config from a mapping read from the file ``source``; errors name the file and the field's line."""
        try:
            return from_mapping(cls, data, "FitConfig")
        except PolarVBLLError as exc:
            if source is None:
                raise
            line = ""
            if isinstance(exc, ConfigFieldError) and Path(source).is_file():
                line = _line_of(Path(source).read_text(encoding="utf-8-sig"), exc.field)
            raise PolarVBLLError(f"{source}{line}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> FitConfig:
        """Read a ``.json`` or ``.toml`` file; ``overrides`` (e.g. command-line flags) win over it."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise PolarVBLLError(f"{path}: config file not found") from None
        except (UnicodeDecodeError, IsADirectoryError):
            raise PolarVBLLError(f"{path}: not a UTF-8 text file") from None
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolarVBLLError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
        except tomllib.TOMLDecodeError as exc:
            raise PolarVBLLError(f"{path}: malformed TOML ({exc})") from None
        if not isinstance(data, dict):
            raise PolarVBLLError(f"{path}: expected a JSON object of options, got {type(data).__name__}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data, path)


# what `fit --resume` may change: how long to train (extending a finished run) and how it logs and evaluates
RESUME_OPTIONS = ("steps", "checkpoint_every", "log_every", "eval_split", "eval_limit", "eval_batch_size")


def _line_of(text: str, name: str) -> str:
    """``:N`` for the line of ``text`` that sets ``name`` (a TOML key or a JSON key), or ``""``."""
    key = name.rsplit(".", 1)[-1]
    pattern = re.compile(rf'^\s*(?:{re.escape(key)}\s*=|.*"{re.escape(key)}"\s*:)')
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.search(line):
            return f":{number}"
    return ""
