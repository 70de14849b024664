"""``FitConfig``: every option of a fine-tuning run, with help text, validation and JSON/TOML loading."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from .adapters.base import ADAPTERS, check_capabilities
from .adapters.polar import PolarConfig
from .config_methods import check_ranges, line_of, method_config, post_hoc_steps
from .data.encoding import DEFAULT_MAX_LENGTH
from .errors import PolarVBLLError
from .fields import ConfigFieldError, MethodConfig, check_types, from_mapping
from .fields import help_field as _help
from .flat_options import nest_flat_options
from .uq import UQ_METHODS, VBLLConfig


@dataclass
class FitConfig:
    """A fine-tuning run: backbone + adapter + uncertainty head on one task.

    ``adapter`` and ``uq`` hold the chosen methods' own options (a :class:`~polar_vbll.fields.MethodConfig` each:
    ``PolarConfig(r=8)``, ``VBLLConfig(prior_scale=1.0)``); a name (``"lora"``) or a table
    (``{"method": "lora", "r": 4}``) is turned into one. Flat spellings (``r=4``, ``mc_samples=20``) are accepted
    by :meth:`from_dict` (see :mod:`polar_vbll.flat_options`).
    """

    model: str = _help("embedded model name, Hugging Face id or local folder", "smollm2-135m")
    task: str | list[str] = _help(
        "task name (polar-vbll data list) or path to a JSONL file/folder; several tasks train one adapter with a head "
        "per task (multi-task fit)",
        "sst2",
    )
    task_sampling: Literal["balanced", "proportional", "temperature"] = _help(
        "multi-task fit: each step's task, in shares that are equal (balanced), proportional to the tasks' training "
        "examples n, or proportional to n^(1/task_temperature)",
        "balanced",
    )
    task_temperature: float = _help("multi-task fit with task_sampling temperature: shares ∝ n^(1/T)", 2.0)
    quality_retaining: float | None = _help(
        "EMTAL's quality retaining: weight λ of a pull of each training example's logits towards its best earlier "
        "ones, KL(best ‖ current) (default: 1 for adapter emtal on several tasks, else 0 = off)",
        None,
    )
    template: str | None = _help("prompt template (default: the task's)", None)
    adapter: MethodConfig = _help(
        "adapter method (polar, lora, dora, pissa, corda, s2ft, lisa, ilora, emtal) and its options",
        default_factory=PolarConfig,
    )
    uq: MethodConfig = _help(
        "uncertainty method (vbll, map, mle, mc_dropout, ensemble, laplace, blob, scalabl, tfb, temperature) and its "
        "options",
        default_factory=VBLLConfig,
    )
    post_hoc: list[str] | None = _help(
        "post-hoc steps after training, in order: last_layer_laplace (VBLL), laplace_lora, temperature "
        "(default: the uncertainty method's own, e.g. temperature for uq=temperature)",
        None,
    )
    optimizer: Literal["geoopt", "landing", "adamw"] | None = _help(
        "adapter optimizer (default: geoopt for polar, adamw otherwise)", None
    )
    landing_lambda: float = _help("pull-back weight λ of the landing optimizer", 1.0)
    steps: int = _help("optimizer steps (each consumes one batch)", 200)
    batch_size: int = _help(
        "examples per forward pass per process; a step takes batch_size × processes × grad_accum", 16
    )
    grad_accum: int = _help("micro-batches per process and step (a resume on other processes adapts it)", 1)
    global_batch_size: int | None = _help(
        "examples per step (default batch_size × processes × grad_accum, recorded; given, grad_accum follows)", None
    )
    gradient_checkpointing: bool = _help(
        "recompute activations in the backward pass (less memory, more compute)", False
    )
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
    alternate: bool | None = _help(
        "alternate head and adapter steps (default: yes for vbll's stochastic head phase, joint otherwise; with an "
        "exact head phase every step is an adapter step)",
        None,
    )
    head_steps: int = _help("head-only steps per alternating cycle (adapter fixed; no backbone backward)", 1)
    adapter_steps: int = _help("adapter steps per alternating cycle (head fixed)", 1)
    seed: int = _help("seed of initialization, data order and sampling", 0)
    precision: Literal["fp32", "bf16", "auto"] = _help(
        "compute precision of the backbone's forward and backward passes: bf16 autocast keeps adapters, head, "
        "optimizer states and curvature in fp32; auto = bf16 where the device has native bf16 (a run records which)",
        "fp32",
    )
    base_dtype: Literal["fp32", "bf16"] | None = _help(
        "storage dtype of the frozen base Linear weights (default: bf16 under bf16 compute, as autocast would cast "
        "them to it on every pass, except for adapters that train base weights such as LISA; else as loaded)",
        None,
    )
    train_limit: int | None = _help("use only the first N training examples", None)
    train_shots: int | None = _help(
        "few-shot: train on K seeded training examples of each class (the support of an episode)", None
    )
    adapter_init: str | None = _help(
        "start the adapter from this adapter folder (adapter_config.json + adapter_model.safetensors) instead of "
        "its own initialization (its config must be the run's adapter; the report's zero-shot figures are then "
        "the starting adapter's)",
        None,
    )
    eval_split: str | None = _help("split for the final report (default: the task's evaluation split)", None)
    eval_limit: int | None = _help("evaluate only the first N examples", None)
    eval_batch_size: int = _help("examples per evaluation batch", 32)
    zero_shot: bool = _help(
        "score the model before fine-tuning on the same evaluation examples, reported beside the fine-tune (with a "
        "warning when the fine-tune ends below its accuracy or above its NLL)",
        True,
    )
    checkpoint_every: int = _help("write a resumable checkpoint every K steps (0 = only at the end)", 50)
    log_every: int = _help("compute adapter diagnostics every K steps", 25)
    laplace_samples: int = _help("training examples (seeded random subset) for a Laplace Hessian (VBLL or LA)", 512)
    calibration_size: int = _help("training examples held out of training for the temperature (when fitted)", 256)
    calibration_holdout: bool | None = _help(
        "hold calibration_size training examples out of training (default: with temperature scaling); set it on "
        "every run of a comparison so all train on the same data and any run can be refined by a temperature later",
        None,
    )

    def __post_init__(self):
        self.uq = method_config(UQ_METHODS, self.uq, "uq", self)
        self.adapter = method_config(ADAPTERS, self.adapter, "adapter", self)
        check_types(self)
        method = UQ_METHODS.get(self.uq.method)
        self._check_tasks(method.multi_task)
        adapter = ADAPTERS.get(self.adapter.method)
        self.post_hoc = post_hoc_steps(self.post_hoc, method.post_hoc, self.uq.method)
        foreign = [step for step in self.post_hoc if step not in (*method.post_hoc, *method.supports)]
        if foreign:
            raise ConfigFieldError(
                "FitConfig",
                "post_hoc",
                f"uq {self.uq.method!r} takes the post-hoc steps {', '.join((*method.post_hoc, *method.supports))}, "
                f"not {', '.join(foreign)} (last_layer_laplace refines VBLL's posterior; MAP + Laplace is uq laplace)",
            )
        if self.calibration_holdout is None:
            self.calibration_holdout = "temperature" in self.post_hoc
        if "temperature" in self.post_hoc and not self.calibration_holdout:
            raise PolarVBLLError("FitConfig.post_hoc: temperature needs calibration_holdout (held-out examples for T)")
        if getattr(self.adapter, "dropout", 0.0) is None:  # unset: the uncertainty method's
            self.adapter = replace(self.adapter, dropout=method.adapter_dropout)
        if method.adapter_dropout > 0 and getattr(self.adapter, "dropout", None) == 0:
            raise ConfigFieldError("FitConfig", "adapter.dropout", f"uq {self.uq.method!r} needs dropout > 0, got 0")
        if self.optimizer is None:
            self.optimizer = adapter.default_optimizer
        if adapter.riemannian and self.optimizer == "adamw":
            raise PolarVBLLError(
                f"FitConfig.optimizer: {self.adapter.method} needs geoopt or landing (adamw ignores the manifold)"
            )
        check_capabilities(self.adapter.method, method.requires(self.uq), f"uq '{self.uq.method}'")
        if self.base_dtype == "bf16":
            if self.precision == "fp32":
                raise ConfigFieldError("FitConfig", "base_dtype", "bf16 needs precision bf16 (or auto), got fp32")
            if adapter.layer is None:
                trains = f"{self.adapter.method} trains the base's own"
                raise ConfigFieldError("FitConfig", "base_dtype", f"bf16 stores frozen weights; {trains}")
        if self.alternate is None:
            self.alternate = method.alternates
        check_ranges(self)

    @property
    def task_names(self) -> list[str]:
        """The tasks the run trains on: one, or several for a multi-task fit."""
        return [self.task] if isinstance(self.task, str) else list(self.task)

    @property
    def single_task(self) -> str:
        """The task of a single-task config (a multi-task fit's task alone: :meth:`for_task`)."""
        if not isinstance(self.task, str):
            raise PolarVBLLError(f"FitConfig.task: {', '.join(self.task)} are several tasks; pick one (for_task)")
        return self.task

    def for_task(self, name: str) -> FitConfig:
        """The config of one task of a multi-task fit, as a single-task run on the same weights records it."""
        return replace(self, task=name)

    def _check_tasks(self, per_task_heads: bool) -> None:
        tasks = self.task_names
        if self.quality_retaining is not None and not (self.quality_retaining == 0 or per_task_heads):
            raise ConfigFieldError(
                "FitConfig", "quality_retaining", f"needs a head over features, not uq {self.uq.method!r}"
            )
        if len(tasks) == 1:
            self.task = tasks[0]  # a list of one is the single-task run
            self.quality_retaining = self.quality_retaining or 0.0
            return
        if not tasks or len(set(tasks)) != len(tasks):
            raise ConfigFieldError("FitConfig", "task", f"expected one or more distinct tasks, got {tasks}")
        if not per_task_heads:
            able = ", ".join(name for name in UQ_METHODS if UQ_METHODS.get(name).multi_task)
            raise ConfigFieldError(
                "FitConfig", "task", f"uq {self.uq.method!r} acts on the shared adapter, so it cannot have one head "
                f"per task; a multi-task fit takes {able} (refine a task's folder afterwards)"
            )  # fmt: skip
        if self.template is not None:
            raise ConfigFieldError("FitConfig", "template", "one template for several tasks; leave it unset")
        if self.quality_retaining is None:
            self.quality_retaining = 1.0 if self.adapter.method == "emtal" else 0.0
        if not self.task_temperature > 0:
            raise ConfigFieldError("FitConfig", "task_temperature", f"must be > 0, got {self.task_temperature}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``adapter`` and ``uq`` are tables that carry their ``method``."""
        return {**asdict(self), "adapter": self.adapter.to_dict(), "uq": self.uq.to_dict()}

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
        if self.global_batch_size is None:  # a run from before global batches were recorded
            changes["global_batch_size"] = self.batch_size * self.grad_accum
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
            if isinstance(data, dict):
                top_level = {f.name for f in fields(cls)}
                default = cls()  # the default methods
                sections = {"adapter": (ADAPTERS, default.adapter.method), "uq": (UQ_METHODS, default.uq.method)}
                data = nest_flat_options(data, top_level, sections)
            return from_mapping(cls, data, "FitConfig")
        except PolarVBLLError as exc:
            if source is None:
                raise
            line = ""
            if isinstance(exc, ConfigFieldError) and Path(source).is_file():
                line = line_of(Path(source).read_text(encoding="utf-8-sig"), exc.field)
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
        overrides = {k: v for k, v in overrides.items() if v is not None}
        for section in ("adapter", "uq"):  # --adapter lora keeps the file's [adapter] table when it is lora's
            table = data.get(section)
            if isinstance(table, dict) and overrides.get(section) == table.get("method"):
                del overrides[section]
        data.update(overrides)
        return cls.from_dict(data, path)


# what `fit --resume` may change: how long to train (extending a finished run) and how it logs and evaluates
# (and how a step's global batch is cut into forward passes, which a new number of processes may need)
RESUME_OPTIONS = (
    *("steps", "checkpoint_every", "log_every", "eval_split", "eval_limit", "eval_batch_size"),
    *("batch_size", "grad_accum"),
)
