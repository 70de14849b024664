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
