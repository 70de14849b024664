"""Flags generated from the config dataclasses' fields and help text (``fit``), so an option is written once."""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, fields
from typing import Any

from ..fields import field_types
from .commands import cmd_fit


def flag_options(hint: Any) -> dict[str, Any]:
    """argparse options for a field annotated ``hint``: a boolean is ``--x/--no-x``, a list takes one or more values,
    a ``Literal`` offers its choices, ``X | None`` parses as X (None stays "not given")."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        lists = [a for a in args if typing.get_origin(a) is list]
        hint = lists[0] if lists else args[0]  # list[str] | str (target_modules): the list form on the command line
        args = list(typing.get_args(hint))
    origin = typing.get_origin(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is list:
        return {"nargs": "+", **flag_options(args[0])}
    if origin is typing.Literal:
        return {"type": type(args[0]), "choices": list(args)}
    return {"type": hint}


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, prefix: str = "", skip: tuple = ()) -> None:
    """One flag per dataclass field, parsed by the field's type, with its help text; defaults stay None (not given)."""
    hints = field_types(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        flag = "--" + (prefix + f.name).replace("_", "-")
        helptext = f.metadata.get("help", "") + (f" (default {default})" if default is not None else "")
        dest = (prefix + f.name).replace("-", "_")
        parser.add_argument(flag, dest=dest, default=None, help=helptext, **flag_options(hints[f.name]))


def add_fit_parser(sub) -> None:
    from ..engine import FitConfig
    from ..uq import VBLLConfig

    p = sub.add_parser(
        "fit",
        help="fine-tune adapter + uncertainty head, write a run folder with a report",
        description="Fine-tune an adapter and an uncertainty head (default: PoLAR-VBLL) on a task.",
    )
    p.add_argument("--config", help="JSON or TOML file with FitConfig options (flags override it)")
    p.add_argument("--out", help="run folder (default runs/fit)")
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint; with --steps N beyond a finished run's steps, train "
        "it on for a new learning-rate cycle (warm-up, then linear decay to 0 at step N)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out (only its own files; others stay)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dataclass_flags(p, FitConfig, skip=("vbll",))
    add_dataclass_flags(p, VBLLConfig, prefix="vbll_")
    p.set_defaults(func=cmd_fit)
