"""Flags generated from the config dataclasses' fields and help text (``fit``), so an option is written once."""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, fields
from typing import Any

from ..fields import field_types
from ..flat_options import RENAMED
from .commands import cmd_fit


def flag_options(hint: Any) -> dict[str, Any]:
    """argparse options for a field annotated ``hint``: a boolean is ``--x/--no-x``, a list takes one or more values
    (a repeated flag adds to them), a ``Literal`` offers its choices, ``X | None`` parses as X (None stays "not
    given")."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        lists = [a for a in args if typing.get_origin(a) is list]
        hint = lists[0] if lists else args[0]  # list[str] | str (target_modules): the list form on the command line
        args = list(typing.get_args(hint))
    origin = typing.get_origin(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is list:  # given twice, the values add up: --task sst2 --task boolq
        return {"nargs": "+", "action": "extend", **flag_options(args[0])}
    if origin is typing.Literal:
        return {"type": type(args[0]), "choices": list(args)}
    return {"type": hint}


def add_dataclass_flags(parser: argparse._ActionsContainer, cls, prefix: str = "", skip: tuple = ()) -> None:
    """One flag per dataclass field, parsed by the field's type, with its help text; defaults stay None (not given)."""
    hints = field_types(cls)
    for f in fields(cls):
        if f.name not in skip:
            _add_flag(parser, prefix + f.name, f, hints[f.name], f.metadata.get("help", ""))


def _add_flag(parser, name: str, f, hint, helptext: str, aliases: tuple[str, ...] = ()) -> None:
    default = f.default_factory() if f.default_factory is not MISSING else f.default
    helptext += f" (default {default})" if default is not None else ""
    flags = ["--" + n.replace("_", "-") for n in (name, *aliases)]
    parser.add_argument(*flags, dest=name, default=None, help=helptext, **flag_options(hint))


def method_flags(section: str, registry) -> dict[str, tuple[str, Any, list[str]]]:
    """{flat name: (field, dataclass field, methods having it)} of every registered method's options: an adapter
    field that several methods share is ``--r``, one of a single method ``--pissa-niter``; uncertainty options are
    always prefixed (``--vbll-prior-scale``, ``--ensemble-size``). The flat names are those of
    :mod:`polar_vbll.flat_options`, so a flag's value reaches the chosen method's config there."""
    owners: dict[str, list[str]] = {}
    for method in registry:
        for f in fields(registry.get(method).config):
            owners.setdefault(f.name, []).append(method)
    flags: dict[str, tuple[str, Any, list[str]]] = {}
    for method in registry:
        for f in fields(registry.get(method).config):
            shared = section == "adapter" and len(owners[f.name]) > 1
            flat = f.name if shared else f"{method}_{f.name}"
            flags.setdefault(flat, (f.name, f, owners[f.name] if shared else [method]))
    return flags


def add_method_flags(parser: argparse.ArgumentParser, section: str, registry, skip: set[str]) -> list[str]:
    """The flags of :func:`method_flags` with their help text and old spellings; returns their flat names."""
    renamed = {(sec, method, name): flat for flat, (sec, method, name) in RENAMED.items()}
    group = parser.add_argument_group(f"{section} options (each applies to the methods named in its help)")
    added = []
    for flat, (name, f, methods) in method_flags(section, registry).items():
        if flat in skip:
            continue
        cls = registry.get(methods[0]).config
        aliases = tuple(renamed[(section, m, name)] for m in methods if (section, m, name) in renamed)
        aliases += ("theta",) if flat == "polar_theta" else ()  # today's --theta
        helps: dict[str, list[str]] = {}  # methods sharing a field name may mean different things by it
        for method in methods:
            own = next(g for g in fields(registry.get(method).config) if g.name == name)
            helps.setdefault(own.metadata.get("help", ""), []).append(method)
        helptext = "; ".join(f"{', '.join(owners)}: {text}" for text, owners in helps.items())
        _add_flag(group, flat, f, field_types(cls)[name], helptext, aliases)
        added.append(flat)
    return added


def add_fit_parser(sub) -> None:
    from ..adapters import ADAPTERS
    from ..engine import FitConfig
    from ..uq import UQ_METHODS

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
    p.add_argument("--adapter", choices=list(ADAPTERS), help="adapter method (default polar)")
    p.add_argument("--uq", choices=list(UQ_METHODS), help="uncertainty method (default vbll)")
    p.add_argument(
        "--laplace",
        action="store_true",
        default=None,
        help="add the post-hoc step last_layer_laplace (VBLL: refine the head's posterior by a Laplace)",
    )
    p.add_argument(
        "--temperature-scaling",
        action="store_true",
        default=None,
        help="add the post-hoc step temperature (fit T on held-out training examples)",
    )
    top_level = {f.name for f in fields(FitConfig)}
    add_dataclass_flags(p, FitConfig, skip=("adapter", "uq"))
    flat = add_method_flags(p, "adapter", ADAPTERS, top_level)
    flat += add_method_flags(p, "uq", UQ_METHODS, top_level)
    p.set_defaults(func=cmd_fit, method_options=flat)
