"""Command line: ``polar-vbll data | models | fit | refine | evaluate | report | export-lora``."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import traceback

from .data.encoding import DEFAULT_MAX_LENGTH
from .errors import PolarVBLLError


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


def _table(rows: list[list], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*map(str, r)) for r in rows]
    )


def cmd_data_list(args: argparse.Namespace) -> None:
    from .data import get_task, list_tasks

    rows = []
    for name in list_tasks():
        task = get_task(name)
        sizes = ", ".join(f"{split} {len(task.load(split))}" for split in task.splits)
        rows.append([name, task.title, task.num_classes, sizes, task.eval_split, task.template.id])
    print(_table(rows, ["task", "title", "classes", "splits (examples)", "evaluates on", "prompt"]))
    print(
        "\nOwn data: pass a JSONL file or a folder of <split>.jsonl files as TASK; one object per line:\n"
        '  {"question": "...", "choices": ["...", "..."], "answer": 0, "context": "optional passage"}'
    )


def cmd_data_show(args: argparse.Namespace) -> None:
    from .data import get_task, label_token_ids
    from .data.encoding import encode_items
    from .models import load_tokenizer

    task = get_task(args.task, args.template)
    split = args.split or task.eval_split
    items = task.load(split)[: args.n]
    tokenizer = load_tokenizer(args.model)
    ids = label_token_ids(tokenizer, task.label_words(), task.name)
    print(f"task {task.name} ({task.title}), split {split}, prompt {task.template.id}")
    print("labels: " + ", ".join(f"{w!r} -> token {i}" for w, i in zip(task.label_words(), ids)))
    for item, encoded in zip(items, encode_items(tokenizer, task, items, args.max_length)):
        print(
            f"\n--- {item.source}  ({len(encoded.input_ids)} tokens{', truncated' if encoded.truncated else ''}; "
            f"answer {task.label_words()[item.answer]!r})"
        )
        print(tokenizer.decode(encoded.input_ids))


def cmd_models_list(args: argparse.Namespace) -> None:
    from .errors import CacheError
    from .models import EMBEDDED_MODELS
    from .models.cache import model_cache_dir, verify

    rows = []
    for name in EMBEDDED_MODELS:
        spec = EMBEDDED_MODELS.get(name)
        folder = model_cache_dir(name)
        state = "no (run models prepare)"
        if folder.exists():
            try:
                verify(folder)  # sizes and sha256 of every file: a damaged cache is not "cached"
                state = "yes (verified)"
            except CacheError as exc:
                state = f"damaged, rebuilt on next use or by `models prepare --force` ({exc})"
        rows.append([name, spec.description, spec.license, state])
    print(_table(rows, ["model", "description", "license", "cached"]))
    print("\nAny Hugging Face causal LM id or local folder works too (needs its weights locally or a network).")


def cmd_models_prepare(args: argparse.Namespace) -> None:
    from .models import prepare_embedded

    print(f"preparing {args.name} ...")
    folder = prepare_embedded(args.name, force=args.force)
    print(f"ready: {folder}")


def _print_metrics(title: str, metrics: dict, note: str = "") -> None:
    print(f"\n{title}")
    if note:
        print(f"note: {note}")
    for key, value in metrics.items():
        print(f"  {key:<22} {value:.4f}")


def cmd_fit(args: argparse.Namespace) -> None:
    from dataclasses import fields

    from .engine import FitConfig, fit
    from .fields import ConfigFieldError
    from .uq import VBLLConfig

    overrides = {f.name: getattr(args, f.name) for f in fields(FitConfig) if f.name != "vbll"}
    vbll = {f.name: getattr(args, f"vbll_{f.name}") for f in fields(VBLLConfig)}
    vbll = {k: v for k, v in vbll.items() if v is not None}
    command = shlex.join(["polar-vbll", *args.argv])
    try:
        if args.resume:
            for flag, given in (("--config", args.config), ("--overwrite", args.overwrite), ("--vbll-*", vbll)):
                if given:
                    raise PolarVBLLError(f"{flag}: cannot be used with --resume (the run's config.json fixes it)")
            if args.out is not None and os.path.abspath(args.out) != os.path.abspath(args.resume):
                raise PolarVBLLError(f"--out {args.out}: --resume continues the run in {args.resume} there")
            result = fit(out=args.resume, resume=True, progress=not args.quiet, command=command, **overrides)
        else:
            if args.config:
                config = FitConfig.from_file(args.config, **overrides)
                if vbll:
                    config.vbll = VBLLConfig(**{**config.vbll.__dict__, **vbll})
            else:
                config = FitConfig(**{k: v for k, v in overrides.items() if v is not None}, vbll=VBLLConfig(**vbll))
            out = args.out or "runs/fit"
            result = fit(config, out=out, overwrite=args.overwrite, progress=not args.quiet, command=command)
    except ConfigFieldError as exc:  # a flag's value: name the flag, as the user typed it
        prefix = "--vbll-" if str(exc).startswith(("VBLLConfig", "FitConfig.vbll")) else "--"
        raise PolarVBLLError(f"{prefix}{exc.field.replace('_', '-')}: {exc.detail}") from None
    report = result.report
    _print_metrics(
        f"{report['task']} / {report['split']}: {report['n']} examples, "
        f"{result.config.adapter}-{result.config.uq} on {report['model']['name']}",
        report["metrics"],
        report["model"].get("note", ""),
    )
    print(f"run folder: {result.out} (report.md, report.json, adapter/, head.safetensors, train_log.jsonl)")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluation import evaluate

    if args.ood and not args.run_dir:
        raise PolarVBLLError("--ood needs a RUN_DIR: OOD detection evaluates a trained run")
    if args.run_dir:
        from .engine import evaluate_run

        report = evaluate_run(
            args.run_dir,
            args.task,
            args.split,
            args.limit,
            args.out,
            ood=args.ood or (),
            progress=not args.quiet,
            command=shlex.join(["polar-vbll", *args.argv]),
        )
        for name, entry in report.get("ood", {}).items():
            best = entry["best_criterion"]
            print(
                f"  OOD {name}: {entry['n']}/{entry['n_total']} kept, acc {entry['metrics']['cls/acc']:.4f}, "
                f"ECE {entry['metrics']['cal/ece']:.4f}, best criterion {best}: "
                f"AUROC {entry['detection'][best]['ood/auroc']:.4f}, FPR95 {entry['detection'][best]['ood/fpr95']:.4f}"
            )
        _print_metrics(
            f"{report['task']} / {report['split']}: {report['n']} examples, run {args.run_dir} "
            f"(trained on {report['trained_on']})",
            report["metrics"],
            report["model"].get("note", ""),
        )
        return
    if not args.task:
        raise PolarVBLLError("evaluate needs --task (or a RUN_DIR to evaluate a trained run)")
    result = evaluate(
        args.model,
        args.task,
        args.split,
        batch_size=args.batch_size,
        max_length=args.max_length,
        limit=args.limit,
        template=args.template,
        n_bins=args.bins,
        out=args.out,
        progress=not args.quiet,
        command=shlex.join(["polar-vbll", *args.argv]),
    )
    print(
        f"\n{result.task} / {result.split}: {result.n} examples, model {result.model['name']}, "
        f"prompt {result.prompt_version}"
    )
    if result.model.get("note"):
        print(f"note: {result.model['note']}")
    for key, value in result.metrics.items():
        print(f"  {key:<10} {value:.4f}")
    if args.out:
        print(f"report: {args.out}/report.json, {args.out}/report.md")


def cmd_export_lora(args: argparse.Namespace) -> None:
    from .adapters import export_lora
    from .adapters.base import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
    from .engine import load_run
    from .outputs import check_replaceable

    check_replaceable(args.out, {ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE})  # before the model loads
    folder = export_lora(load_run(args.run_dir).backbone.model, args.out)
    print(f"plain LoRA adapter (rank 2r, for the original weights): {folder}")


def cmd_refine(args: argparse.Namespace) -> None:
    from .engine import refine

    options = {k: getattr(args, k) for k in ("laplace_samples", "la_subset") if getattr(args, k) is not None}
    result = refine(
        args.run_dir,
        args.out,
        temperature_scaling=args.temperature_scaling,
        laplace=args.laplace,
        overwrite=args.overwrite,
        progress=not args.quiet,
        command=shlex.join(["polar-vbll", *args.argv]),
        **options,
    )
    report = result.report
    _print_metrics(
        f"{report['task']} / {report['split']}: {report['n']} examples, {result.config.adapter}-{result.config.uq}"
        f" refined from {args.run_dir}",
        report["metrics"],
    )
    print(f"run folder: {result.out}")


# FitConfig fields whose default is None: the type their flag parses
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


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls, prefix: str = "", skip: tuple = ()) -> None:
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
    from .engine import FitConfig
    from .uq import VBLLConfig

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
    _add_dataclass_flags(p, FitConfig, skip=("vbll",))
    _add_dataclass_flags(p, VBLLConfig, prefix="vbll_")
    p.set_defaults(func=cmd_fit)


def cmd_report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .atomic import atomic_write_text
    from .outputs import OutputKind, claim, prepare_output
    from .report import compare_runs
    from .stored import read_json

    reports = []
    for run in args.runs:
        path = Path(run) / "report.json"
        if not path.is_file():
            raise PolarVBLLError(f"{path}: not found (is {run} a run or report folder?)")
        report = read_json(path, "report")
        if not isinstance(report, dict) or not {"metrics", "task", "split", "n", "model"} <= set(report):
            raise PolarVBLLError(f"{path}: not a polar-vbll report (needs metrics, task, split, n, model)")
        reports.append(report)
    if args.out:
        prepare_output(args.out, OutputKind.COMPARISON)
    table = compare_runs(reports, [Path(run).name for run in args.runs])
    print(table)
    if args.out:
        claim(args.out, "comparison.md")
        atomic_write_text(Path(args.out) / "comparison.md", table)


def build_parser() -> argparse.ArgumentParser:
    from .models import DEFAULT_MODEL

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
        help="add a post-hoc method to a finished run without retraining (Laplace, temperature scaling)",
        description="Write a new run folder: MAP → Laplace-LoRA (--laplace) or temperature scaling; VBLL → + "
        "last-layer Laplace and/or a temperature. Equals `fit` of that method on the same data.",
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
    p.add_argument("--la-subset", choices=["adapter", "last_layer"], help="Laplace-LoRA weights (default: run's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser(
        "export-lora", help="convert a run's PiSSA/CorDA adapter into a plain LoRA adapter for the original weights"
    )
    p.add_argument("run_dir", help="a run folder written by `fit` with --adapter pissa or corda")
    p.add_argument("out", help="folder for adapter_config.json + adapter_model.safetensors (rank 2r)")
    p.set_defaults(func=cmd_export_lora)

    p = sub.add_parser("evaluate", help="score a task split (zero-shot, or a trained RUN_DIR) and write a report")
    p.add_argument("run_dir", nargs="?", help="a run folder written by `fit` (omit for zero-shot scoring)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="embedded name, HF id or folder (default %(default)s)")
    p.add_argument("--task", help="task name or path to a JSONL file/folder (default for a run: its own)")
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
    p.add_argument("--out", help="folder for report.json and report.md")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)
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
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return _fail(f"internal error {type(exc).__name__}: {first} (POLAR_VBLL_DEBUG=1 shows the traceback)", 1)
    return 0


def _fail(message: str, code: int, prefix: str = "polar-vbll: error: ") -> int:
    print(prefix + " ".join(message.split("\n")), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
