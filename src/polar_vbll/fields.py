"""Dataclass fields that carry their help text (shown by the CLI and in reports)."""

from __future__ import annotations

from dataclasses import MISSING, field


def help_field(text: str, default=MISSING, **kwargs):
    """``field(default=..., metadata={"help": text})``; pass ``default_factory=`` for mutable defaults."""
    if default is MISSING:
        return field(metadata={"help": text}, **kwargs)
    return field(default=default, metadata={"help": text}, **kwargs)
