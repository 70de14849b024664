"""Flags generated from the config dataclasses' fields and help text (``fit``), so an option is written once."""

from __future__ import annotations

import argparse

from .commands import cmd_fit

_NONE_DEFAULT_TYPES = {
    "template": str,
    "optimizer": str,
    "weight_decay": float,
    "train_limit": int,
    "eval_split": str,
    "eval_limit": int,
    "corda_task": str,
    "dropout": float,
}
_NONE_DEFAULT_BOOLS = ("alternate", "temperature_scaling", "calibration_holdout")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, prefix: str = "", skip: tuple = ()) -> None:
    """One flag per dataclass field, typed by its default, with the field's help text; defaults stay None."""
    from dataclasses import MISSING, fields

    for f in fields(cls):
        if f.name in skip:
            continue
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        flag = "--" + (prefix + f.name).replace("_", "-")
        helptext = f.metadata.get("help", "") + (f" (default {default})" if default is not None else "")
        dest = (prefix + f.name).replace("-", "_")
        if isinstance(default, bool) or f.name in _NONE_DEFAULT_BOOLS:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        elif isinstance(default, list) or f.name == "target_modules":
            kind = int if f.name == "lr_restarts" else str
            parser.add_argument(flag, dest=dest, nargs="+", type=kind, default=None, help=helptext)
        else:
            parse = _NONE_DEFAULT_TYPES.get(f.name, type(default))
            parser.add_argument(flag, dest=dest, type=parse, default=None, help=helptext)


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
