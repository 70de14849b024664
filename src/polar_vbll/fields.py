"""Dataclass fields that carry their help text (shown by the CLI and in reports), and their type checks.

Config values come from Python, flags, JSON and TOML files; a TOML ``alternate = "no"`` or a JSON ``"steps": "ten"``
must be refused when the file is read, with one line naming the field, the type it needs and the value given, not
end in a TypeError after the model has loaded.
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Literal

from .errors import PolarVBLLError


def help_field(text: str, default=MISSING, **kwargs):
    """``field(default=..., metadata={"help": text})``; pass ``default_factory=`` for mutable defaults."""
    if default is MISSING:
        return field(metadata={"help": text}, **kwargs)
    return field(default=default, metadata={"help": text}, **kwargs)


class ConfigFieldError(PolarVBLLError):
    """A config value of the wrong type or out of range; ``field`` names it (dotted for nested configs)."""

    def __init__(self, owner: str, name: str, message: str, *, qualified: bool = True):
        self.owner, self.field, self.detail = owner, name, message
        super().__init__(f"{owner}.{name}: {message}" if qualified else message)


_HINTS: dict[type, dict[str, Any]] = {}


def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass, computed once per class."""
    if cls not in _HINTS:  # resolved once per class
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def describe_type(hint: Any) -> str:
    """A type as a user reads it: ``integer``, ``true or false``, ``one of 'ipm', 'kpm'``, ``number or none``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args if a is not type(None)) + (
            " or none" if type(None) in args else ""
        )
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
        return f"a list of {plural.get(args[0], describe_type(args[0]))}" if args else "a list"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def conform(value: Any, hint: Any) -> tuple[bool, Any]:
    """(whether ``value`` is of type ``hint``, the value as stored: ints become floats for float fields, tuples
    become lists). Booleans are not integers here, and strings are never parsed into numbers."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return type(None) in args, value
        for arg in args:
            ok, converted = conform(value, arg)
            if ok:
                return True, converted
        return False, value
    if origin is Literal:
        return value in args and not isinstance(value, bool), value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        checked = [conform(v, args[0]) if args else (True, v) for v in value]
        return all(ok for ok, _ in checked), [v for _, v in checked]
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if hint is type(None):
        return value is None, value
    if isinstance(hint, type):  # a dataclass (a nested config) or another class
        return isinstance(value, hint), value
    return True, value


def check_types(obj: Any, owner: str | None = None) -> None:
    """Check every field of the dataclass instance ``obj`` against its annotation, storing conformed values."""
    owner = owner or type(obj).__name__
    hints = field_types(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        ok, converted = conform(value, hints[f.name])
        if not ok:
            raise ConfigFieldError(owner, f.name, f"expected {describe_type(hints[f.name])}, got {value!r:.80}")
        setattr(obj, f.name, converted)


def from_mapping(cls: type, data: Any, owner: str | None = None):
    """``cls(**data)`` for a mapping read from a file, refusing non-mappings and unknown keys with one line."""
    owner = owner or cls.__name__
    if not isinstance(data, dict):
        raise PolarVBLLError(f"{owner}: expected a table of options, got {type(data).__name__}")
    data = dict(data)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigFieldError(
            owner, unknown[0], f"unknown option(s) {', '.join(unknown)} for {owner}", qualified=False
        )
    hints = field_types(cls)
    for name, value in data.items():  # types first: a config's own range checks then see the right types
        hint = hints[name]
        if not (isinstance(hint, type) and is_dataclass(hint)):  # a nested config: its table is checked there
            ok, data[name] = conform(value, hint)
            if not ok:
                raise ConfigFieldError(owner, name, f"expected {describe_type(hint)}, got {value!r:.80}")
    return cls(**data)


@dataclass
class MethodConfig:
    """The options of one registered method (an adapter, an uncertainty method): its ``method`` name (a class
    attribute, so each config class belongs to one method), a dict form that carries the name, and help texts."""

    method: ClassVar[str] = ""

    def to_dict(self) -> dict:
        return {"method": self.method, **asdict(self)}

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    def require_at_least(self, low: int, *names: str) -> None:
        """Refuse an integer field of ``names`` below ``low`` (other types are refused by the type check)."""
        for name in names:
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool) and value < low:
                raise ConfigFieldError(type(self).__name__, name, f"must be >= {low}, got {value}")
