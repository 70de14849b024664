"""Command line: ``polar-vbll data | models | fit | refine | evaluate | report | export-lora | amt | conformal |
export``; every failure ends in one line on stderr (``main``)."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from ..data.encoding import DEFAULT_MAX_LENGTH
from ..errors import PolarVBLLError, first_line
from .amt import add_amt_parser
from .commands import (
    cmd_data_list,
    cmd_data_show,
    cmd_evaluate,
    cmd_models_list,
    cmd_models_prepare,
    cmd_refine,
    cmd_report,
)
from .decisions import add_conformal_parser, cmd_export_lora
from .flags import add_dataclass_flags, add_fit_parser

__all__ = ["OneLineParser", "build_parser", "main", "positive_int"]


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (``polar-vbll fit: error: argument --steps: invalid int value: 'ten'``), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a limit of 0 or -5 would silently mean "all" or "all but 5")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_precision_flag(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--precision fp32|bf16|auto`` (:mod:`polar_vbll.models.precision`)."""
    from ..models.precision import Precision

    parser.add_argument("--precision", choices=[p.value for p in Precision], help=help_text)


def build_parser() -> argparse.ArgumentParser:
    from ..models import DEFAULT_MODEL
    from ..uq import TFBConfig

    parser = OneLineParser(prog="polar-vbll", description="Calibrated fine-tuning of language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="list tasks, show prompts").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("list", help="every task with its number of choices and split sizes")
    p.set_defaults(func=cmd_data_list)
    p = data.add_parser("show", help="prompts as the model sees them, with label tokens")
    p.add_argument("task", help="task name or path to a JSONL file/folder")
    p.add_argument("--split", help="split (default: the task's evaluation split)")
    p.add_argument("-n", type=positive_int, default=3, help="number of examples (default 3)")
    p.add_argument("--template", help="prompt template name (default: the task's)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="whose tokenizer to use (default %(default)s)")
    p.add_argument(
        "--max-length",
        type=positive_int,
        default=DEFAULT_MAX_LENGTH,
        help="token budget; longer prompts lose their start (default %(default)s)",
    )
    p.set_defaults(func=cmd_data_show)

    models = sub.add_parser("models", help="embedded models").add_subparsers(dest="models_command", required=True)
    p = models.add_parser("list", help="embedded models and whether they are cached")
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser("prepare", help="build the safetensors cache of an embedded model")
    p.add_argument("name", nargs="?", default=DEFAULT_MODEL)
    p.add_argument("--force", action="store_true", help="rebuild even if a valid cache exists")
    p.set_defaults(func=cmd_models_prepare)

    add_fit_parser(sub)

    p = sub.add_parser("report", help="compare the reports of several runs side by side")
    p.add_argument("runs", nargs="+", help="run or report folders (each holds report.json)")
    p.add_argument("--out", help="folder for comparison.md")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "refine",
        help="add a post-hoc method to a finished run without retraining (Laplace, TFB, temperature scaling)",
        description="Write a new run folder: MAP → Laplace-LoRA (--laplace), TFB (--tfb) or temperature scaling; "
        "VBLL → + last-layer Laplace and/or a temperature. Equals `fit` of that method on the same data.",
    )
    p.add_argument("run_dir", help="a finished run folder written by `fit`")
    p.add_argument("--out", required=True, help="folder for the refined run")
    p.add_argument("--laplace", action="store_true", help="fit a Laplace posterior (map: Laplace-LoRA; vbll: LLLA)")
    p.add_argument(
        "--temperature-scaling",
        action="store_true",
        help="fit a temperature on the run's held-out examples (needs a run trained with --calibration-holdout)",
    )
    p.add_argument(
        "--laplace-samples", type=positive_int, help="training examples for the Laplace Hessian (default: run's)"
    )
    p.add_argument(
        "--laplace-subset",
        "--la-subset",
        dest="la_subset",
        choices=["adapter", "last_layer"],
        help="Laplace-LoRA weights (default: the adapter's and the head's)",
    )
    p.add_argument(
        "--tfb", action="store_true", help="training-free Bayesianization of a MAP run's adapter (LoRA's A, PoLAR's Θ)"
    )
    add_dataclass_flags(p.add_argument_group("TFB options (with --tfb)"), TFBConfig, prefix="tfb_")
    add_precision_flag(p, "compute precision of the post-hoc steps and the evaluation (default: the run's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser(
        "export-lora",
        help="a run's adapter as a plain LoRA for the original weights: PiSSA/CorDA for this package, or with --peft "
        "any of lora, polar, pissa, corda for PEFT",
    )
    p.add_argument("run_dir", help="a run folder written by `fit`")
    p.add_argument("out", help="folder for adapter_config.json + adapter_model.safetensors")
    p.add_argument(
        "--peft",
        action="store_true",
        help="write PEFT's format: `peft.PeftModel.from_pretrained(base_model, OUT)` loads it with the run's outputs",
    )
    p.set_defaults(func=cmd_export_lora)

    p = sub.add_parser("evaluate", help="score a task split (zero-shot, or a trained RUN_DIR) and write a report")
    p.add_argument("run_dir", nargs="?", help="a run folder written by `fit` (omit for zero-shot scoring)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="embedded name, HF id or folder (default %(default)s)")
    p.add_argument(
        "--task",
        help="task name or path to a JSONL file/folder (default for a run: its own; a multi-task run: which of its "
        "tasks)",
    )
    p.add_argument("--split", help="split (default: the task's evaluation split)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument(
        "--max-length",
        type=positive_int,
        default=DEFAULT_MAX_LENGTH,
        help="token budget; longer prompts lose their start (default %(default)s)",
    )
    p.add_argument("--limit", type=positive_int, help="only the first N examples")
    p.add_argument("--template", help="prompt template name (default: the task's)")
    p.add_argument("--bins", type=positive_int, default=15, help="ECE bins (default 15)")
    p.add_argument(
        "--ood",
        action="append",
        metavar="TASK",
        help="with RUN_DIR: an out-of-distribution task to detect against the ID split (repeatable)",
    )
    p.add_argument(
        "--attack",
        choices=["pgd", "fgsm"],
        help="with RUN_DIR: score the examples again under an attack on the input embeddings (robust accuracy, ECE, "
        "NLL)",
    )
    p.add_argument(
        "--epsilon",
        type=float,
        help="with --attack: the radius, relative to each token's embedding norm (no default: choose it on training "
        "examples; on SmolLM2-135M and SST-2, 3-step PGD at 0.005 halves the zero-shot accuracy, 0.02 takes it to 0)",
    )
    p.add_argument("--attack-steps", type=positive_int, default=5, help="PGD steps (default %(default)s; FGSM: 1)")
    add_precision_flag(p, "compute precision (default: a run's own; fp32 zero-shot)")
    p.add_argument("--out", help="folder for report.json and report.md")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)
    add_amt_parser(sub, positive_int)
    add_conformal_parser(sub, positive_int)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; every failure ends in one line on stderr and a non-zero exit, never a traceback
    (``POLAR_VBLL_DEBUG=1`` shows the traceback of an unexpected one)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if getattr(args, "quiet", False):
        import transformers

        transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars too
    try:
        args.func(args)
    except PolarVBLLError as exc:
        return _fail(str(exc), 2)
    except KeyboardInterrupt as exc:  # fit says where its last checkpoint is
        return _fail(str(exc) or "interrupted", 130, prefix="polar-vbll: ")
    except OSError as exc:  # a full or read-only disk, a file vanished under us
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}", 1)
    except Exception as exc:  # a bug: one line and how to see more
        if os.environ.get("POLAR_VBLL_DEBUG"):
            traceback.print_exc()
        detail = f"{type(exc).__name__}: {first_line(exc, 'no message')}"
        return _fail(f"internal error {detail} (POLAR_VBLL_DEBUG=1 shows the traceback)", 1)
    return 0


def _fail(message: str, code: int, prefix: str = "polar-vbll: error: ") -> int:
    print(prefix + " ".join(message.split("\n")), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
