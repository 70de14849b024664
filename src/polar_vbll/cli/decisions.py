"""``polar-vbll conformal RUN``: prediction sets and abstention at a certified risk, calibrated on examples the run
did not train on and stored in the run; ``polar-vbll export RUN OUT``: the run as a served model;
``polar-vbll export-lora RUN OUT [--peft]``: its adapter as a plain (or PEFT) LoRA."""

from __future__ import annotations

import argparse
import shlex

from ..conformal.sets import SetMethod


def add_conformal_parser(sub, positive_int) -> None:
    p = sub.add_parser(
        "conformal",
        help="calibrate conformal prediction sets and a risk-bounded abstention threshold for a run (conformal.json)",
    )
    p.add_argument("run_dir", help="a run folder written by fit")
    p.add_argument(
        "--alpha",
        type=float,
        default=0.1,
        help="miscoverage of the sets, and the error bound among answered questions (default %(default)s)",
    )
    p.add_argument(
        "--method", choices=[m.value for m in SetMethod], default="lac", help="set score (default %(default)s)"
    )
    p.add_argument(
        "--delta",
        type=float,
        default=0.1,
        help="the abstention's bound holds with probability >= 1 - delta (default %(default)s)",
    )
    p.add_argument(
        "--calibration-split",
        help="calibrate on this split of the run's task (default: the training examples the run held out, "
        "--calibration-holdout)",
    )
    p.add_argument("--eval-split", help="split to measure coverage and risk on (default: the run's evaluation split)")
    p.add_argument("--limit", type=positive_int, help="measure on the first N examples only")
    p.add_argument(
        "--fwer",
        choices=["fixed_sequence", "bonferroni_holm"],
        default="fixed_sequence",
        help="family-wise error control of Learn then Test (default %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_conformal)
    p = sub.add_parser(
        "export",
        help="a run as a served model: the adapter merged into a plain Hugging Face model folder, the head, its "
        "conformal thresholds and a model card (load_exported)",
    )
    p.add_argument("run_dir", help="a run folder written by fit (a single-pass head)")
    p.add_argument("out", help="export folder")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> None:
    from ..engine.export import export_run

    out = export_run(args.run_dir, args.out, overwrite=args.overwrite, command=shlex.join(["polar-vbll", *args.argv]))
    print(
        f"exported: {out}/model (merged Hugging Face model), head.safetensors, README.md; "
        f"polar_vbll.load_exported({str(out)!r}).predict(...)"
    )


def cmd_conformal(args: argparse.Namespace) -> None:
    from ..distributed import current_ranks
    from ..engine.decisions import conformalize_run

    record = conformalize_run(
        args.run_dir, args.alpha, args.method, args.delta, args.calibration_split, args.eval_split, args.limit,
        args.fwer, progress=not args.quiet, command=shlex.join(["polar-vbll", *args.argv]),
    )  # fmt: skip
    if not current_ranks().main:
        return
    sets, abstention, measured = record["sets"], record["abstention"], record["evaluation"]
    threshold = "inf: every class" if sets["threshold"] is None else f"{sets['threshold']:.4f}"
    answer = (
        f"answer where confidence >= {abstention['threshold']:.3f}"
        if abstention["threshold"] is not None
        else f"no confidence threshold certifies error <= {args.alpha}: every question is abstained on"
    )
    print(
        f"calibrated on {record['calibration']['source']}: {sets['method']} sets at α {args.alpha} "
        f"(threshold {threshold}); {answer} (error <= {args.alpha} among answered with probability >= "
        f"{1 - args.delta:.2f})"
    )
    print(
        f"{measured['split']}, {measured['n']} examples: set coverage {measured['set/coverage']:.4f} "
        f"(target >= {1 - args.alpha:.2f}), mean set size {measured['set/size']:.3f}, "
        f"empty {measured['set/empty']:.3f}; "
        f"answered {measured['abstain/coverage']:.4f} with error {measured['abstain/risk']:.4f}"
    )
    print(f"stored: {args.run_dir}/conformal.json (predict_run adds each question's set and abstain columns)")


def cmd_export_lora(args: argparse.Namespace) -> None:
    from ..adapters import export_lora, export_peft
    from ..adapters.base import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
    from ..engine import load_run
    from ..outputs import check_replaceable

    check_replaceable(args.out, {ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE})  # before the model loads
    run = load_run(args.run_dir)
    if args.peft:
        folder = export_peft(run.backbone.model, args.out, base_model=run.config.model)
        print(f"PEFT LoRA adapter for the original {run.backbone.name} weights: {folder}")
        return
    folder = export_lora(run.backbone.model, args.out)
    print(f"plain LoRA adapter (rank 2r, for the original weights): {folder}")
