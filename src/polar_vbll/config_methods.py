"""The parts of ``FitConfig`` that read its method sections: a method's config from a name or a table, the post-hoc
steps a run takes, and the line of a config file that set a field (for errors naming file:line)."""

from __future__ import annotations

import re
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from .errors import PolarVBLLError
from .fields import ConfigFieldError, MethodConfig, check_types, from_mapping
from .registry import Registry

if TYPE_CHECKING:
    from .config import FitConfig


def line_of(text: str, name: str) -> str:
    """``:N`` for the line of ``text`` that sets ``name`` (a TOML key or a JSON key), or ``""``."""
    key = name.rsplit(".", 1)[-1]
    pattern = re.compile(rf'^\s*(?:{re.escape(key)}\s*=|.*"{re.escape(key)}"\s*:)')
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.search(line):
            return f":{number}"
    return ""


def method_config(registry: Registry, value: Any, section: str, fit: FitConfig) -> MethodConfig:
    """The method config of ``value`` (a name, a table with ``method``, or a config of a registered method).

    A name or a table leaves unset fields to the method's defaults, except a field FitConfig also has (``seed``),
    which is the run's.
    """
    if isinstance(value, MethodConfig):
        expected = registry.get(value.method).config
        if type(value) is not expected:
            raise PolarVBLLError(f"FitConfig.{section}: {type(value).__name__} is not the config of {value.method!r}")
        return value
    table = {"method": value} if isinstance(value, str) else value
    if not isinstance(table, dict) or not isinstance(table.get("method"), str):
        raise ConfigFieldError(
            "FitConfig", section, f"expected a method name or a table with method = <name>, got {value!r:.80}"
        )
    options = {k: v for k, v in table.items() if k != "method"}
    cls = registry.get(table["method"]).config
    names = {f.name for f in fields(cls)}
    for f in fields(fit):
        if f.name in names and f.name not in options:
            options[f.name] = getattr(fit, f.name)
    options = {k: v for k, v in options.items() if v is not None or k not in names}
    config = from_mapping(cls, options, f"FitConfig.{section}")
    check_types(config, f"FitConfig.{section}")
    return config


def post_hoc_steps(given: list[str] | None, implied: tuple[str, ...], uq: str) -> list[str]:
    """The post-hoc steps to run: the method's own (``implied``: ``uq laplace`` is MAP then ``laplace_lora``) first,
    then those ``given``, each once."""
    given = list(given or [])
    steps = [step for step in implied if step not in given] + given
    if len(set(steps)) != len(steps):
        raise ConfigFieldError("FitConfig", "post_hoc", f"lists a step twice: {steps}")
    return steps


def check_ranges(config: FitConfig) -> None:
    """Refuse a numeric option of ``config`` out of its range, naming the field."""
    for name in (
        "steps",
        "batch_size",
        "grad_accum",
        "max_length",
        "eval_batch_size",
        "laplace_samples",
        "calibration_size",
    ):
        if getattr(config, name) < 1:
            raise ConfigFieldError("FitConfig", name, f"must be >= 1, got {getattr(config, name)}")
    for name in ("train_limit", "eval_limit", "train_shots", "global_batch_size"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise ConfigFieldError(
                "FitConfig", name, f"must be >= 1 (leave it unset for all), got {getattr(config, name)}"
            )
    for name in ("lr_adapter", "lr_head"):
        if not getattr(config, name) > 0:
            raise ConfigFieldError("FitConfig", name, f"must be > 0, got {getattr(config, name)}")
    for name in (
        "weight_decay",
        "grad_clip",
        "checkpoint_every",
        "log_every",
        "landing_lambda",
        "quality_retaining",
    ):
        if getattr(config, name) is not None and getattr(config, name) < 0:
            raise ConfigFieldError("FitConfig", name, f"must be >= 0, got {getattr(config, name)}")
    if config.lr_restarts != sorted(set(config.lr_restarts)) or not all(
        0 < s < config.steps for s in config.lr_restarts
    ):
        raise ConfigFieldError(
            "FitConfig",
            "lr_restarts",
            f"must be increasing steps in (0, steps={config.steps}), got {config.lr_restarts}",
        )
    if config.alternate and (
        config.head_steps < 0 or config.adapter_steps < 0 or config.head_steps + config.adapter_steps < 1
    ):
        raise PolarVBLLError("FitConfig.head_steps and adapter_steps must be >= 0 with a positive sum")
    if not 0.0 <= config.warmup_ratio < 1.0:
        raise ConfigFieldError("FitConfig", "warmup_ratio", f"must lie in [0, 1), got {config.warmup_ratio}")
