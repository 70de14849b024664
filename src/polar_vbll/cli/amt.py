"""``polar-vbll amt pool | adapt``: build an AMT LoRA pool on source tasks, merge it on a few-shot target task."""

from __future__ import annotations

import argparse
import json

from .flags import add_dataclass_flags


def add_amt_parser(sub, positive_int) -> None:
    from ..amt.adapt import MergeOptions
    from ..amt.pool import PoolConfig

    amt = sub.add_parser("amt", help="AMT: an adversarially meta-tuned LoRA pool, merged at test time")
    commands = amt.add_subparsers(dest="amt_command", required=True)
    p = commands.add_parser(
        "pool",
        help="meta-tune one PiSSA-initialized LoRA per robustness level (ε, γ) on episodes of the source tasks",
    )
    add_dataclass_flags(p, PoolConfig)
    p.add_argument("--out", required=True, help="pool folder (rerun with the same options to continue)")
    p.add_argument("--overwrite", action="store_true", help="replace a pool of other options in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_amt_pool)
    p = commands.add_parser(
        "adapt", help="score the pool on K support examples per class of a task and merge the best into one LoRA"
    )
    p.add_argument("pool", help="a pool folder written by `amt pool`")
    p.add_argument("--task", required=True, help="target task name or path to a JSONL file/folder")
    p.add_argument("--shots", type=positive_int, default=4, help="support examples per class (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the support draw, as fit's --seed (default 0)")
    defaults = MergeOptions()
    p.add_argument("--top-k", type=positive_int, default=defaults.top_k, help="members merged (default %(default)s)")
    p.add_argument("--beta", type=float, default=defaults.beta, help="routing sharpness β (default %(default)s)")
    p.add_argument(
        "--gamma", type=float, default=defaults.gamma, help="score = γ intra − (1 − γ) inter (default %(default)s)"
    )
    p.add_argument(
        "--view-radius",
        type=float,
        default=defaults.view_radius,
        help="relative radius of the support's perturbed view (default %(default)s)",
    )
    p.add_argument("--out", required=True, help="folder for adapter/ (a plain LoRA) and amt.json")
    p.set_defaults(func=cmd_amt_adapt)


def cmd_amt_pool(args: argparse.Namespace) -> None:
    from dataclasses import fields

    from ..amt.pool import PoolConfig, build_pool

    options = {f.name: getattr(args, f.name) for f in fields(PoolConfig) if getattr(args, f.name) is not None}
    pool = build_pool(PoolConfig(**options), args.out, overwrite=args.overwrite, progress=not args.quiet)
    for k, entry in enumerate(pool.log):
        print(
            f"member {k}: ε {entry['epsilon']}, γ {entry['gamma']}, query accuracy (last fifth of the episodes) "
            f"{entry['query_acc_last_fifth']:.3f}, {entry['train_s']:.0f} s"
        )
    print(f"pool folder: {pool.folder}")


def cmd_amt_adapt(args: argparse.Namespace) -> None:
    from ..amt.adapt import MergeOptions, adapt

    options = MergeOptions(args.top_k, args.beta, args.gamma, args.view_radius)
    record = adapt(args.pool, args.task, args.out, args.shots, args.seed, options)
    print(f"scores: {json.dumps([round(s, 4) for s in record['scores']])}; weights: {json.dumps(record['weights'])}")
    print(f"merged adapter: {args.out}/adapter; few-shot fit from it:\n  {record['fit']}")
