"""What each command of the command line does, given its parsed arguments."""

from __future__ import annotations

import argparse
import os
import shlex

from ..errors import PolarVBLLError


def _table(rows: list[list], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*map(str, r)) for r in rows]
    )


def cmd_data_list(args: argparse.Namespace) -> None:
    from ..data import get_task, list_tasks

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
    from ..data import get_task, label_token_ids
    from ..data.encoding import encode_items
    from ..models import load_tokenizer

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
    from ..errors import CacheError
    from ..models import EMBEDDED_MODELS
    from ..models.cache import model_cache_dir, verify

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
    from ..models import prepare_embedded

    print(f"preparing {args.name} ...")
    folder = prepare_embedded(args.name, force=args.force)
    print(f"ready: {folder}")


def _print_metrics(title: str, metrics: dict, note: str = "") -> None:
    print(f"\n{title}")
    if note:
        print(f"note: {note}")
    for key, value in metrics.items():
        print(f"  {key:<22} {value:.4f}")


def fit_options(args: argparse.Namespace) -> dict:
    """The options given by ``fit``'s flags, flat (``r``, ``pissa_niter``; see :mod:`polar_vbll.flat_options`)."""
    from dataclasses import fields

    from ..config import FitConfig

    names = [f.name for f in fields(FitConfig)] + ["laplace", "temperature_scaling", *args.method_options]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _prints() -> bool:
    """Whether this process prints a command's summary: the main one of several (accelerate launch, torchrun)."""
    from ..distributed import current_ranks

    return current_ranks().main


def cmd_fit(args: argparse.Namespace) -> None:
    from ..engine import FitConfig, fit
    from ..fields import ConfigFieldError

    overrides = fit_options(args)
    command = shlex.join(["polar-vbll", *args.argv])
    try:
        if args.resume:
            for flag, given in (("--config", args.config), ("--overwrite", args.overwrite)):
                if given:
                    raise PolarVBLLError(f"{flag}: cannot be used with --resume (the run's config.json fixes it)")
            if args.out is not None and os.path.abspath(args.out) != os.path.abspath(args.resume):
                raise PolarVBLLError(f"--out {args.out}: --resume continues the run in {args.resume} there")
            result = fit(out=args.resume, resume=True, progress=not args.quiet, command=command, **overrides)
        else:
            if args.config:
                config = FitConfig.from_file(args.config, **overrides)
            else:
                config = FitConfig.from_dict(overrides)
            out = args.out or "runs/fit"
            result = fit(config, out=out, overwrite=args.overwrite, progress=not args.quiet, command=command)
    except ConfigFieldError as exc:  # a flag's value: name the flag, as the user typed it
        raise PolarVBLLError(f"{_flag_of(exc, overrides)}: {exc.detail}") from None
    if not _prints():
        return
    report = result.report
    _print_metrics(
        f"{report['task']} / {report['split']}: {report['n']} examples, "
        f"{result.config.adapter.method}-{result.config.uq.method} on {report['model']['name']}",
        report["metrics"],
        report["model"].get("note", ""),
    )
    if report.get("zero_shot"):
        zero = report["zero_shot"]
        print(f"  zero-shot: acc {zero['cls/acc']:.4f}, ECE {zero['cal/ece']:.4f}, NLL {zero['cls/nll']:.4f}")
    if report.get("warning"):
        print(f"warning: {report['warning']}")
    for name, entry in report.get("tasks", {}).items():  # a multi-task run: its metrics above are the means
        m = entry["metrics"]
        print(f"  {name}: acc {m['cls/acc']:.4f}, ECE {m['cal/ece']:.4f}, NLL {m['cls/nll']:.4f} ({entry['folder']})")
        if entry.get("warning"):
            print(f"  warning, {name}: {entry['warning']}")
    if report.get("tasks"):
        print(f"run folder: {result.out} (report.md, report.json, train_log.jsonl, tasks/<task>/: one run per task)")
    else:
        print(f"run folder: {result.out} (report.md, report.json, adapter/, head.safetensors, train_log.jsonl)")


def _flag_of(exc, overrides: dict) -> str:
    """The flag that set the option ``exc`` names: ``--steps``, ``--r``, ``--pissa-niter``, ``--vbll-prior-scale``."""
    field = exc.field
    if exc.owner in ("FitConfig.adapter", "FitConfig.uq"):
        method = overrides.get(exc.owner.split(".")[1])
        candidates = [flat for flat in overrides if flat == field or flat.endswith("_" + field)]
        field = candidates[0] if candidates else f"{method}_{field}" if method else field
    elif exc.owner != "FitConfig":  # a method config's own check (MCDropoutConfig.samples)
        candidates = [flat for flat in overrides if flat.endswith("_" + field)]
        field = candidates[0] if candidates else field
    return "--" + field.replace("_", "-")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from ..evaluation import evaluate

    if args.ood and not args.run_dir:
        raise PolarVBLLError("--ood needs a RUN_DIR: OOD detection evaluates a trained run")
    if args.attack and not args.run_dir:
        raise PolarVBLLError("--attack needs a RUN_DIR: the attack follows a trained run's gradients")
    if args.attack and args.epsilon is None:
        raise PolarVBLLError("--attack needs --epsilon (the radius relative to each token's embedding norm)")
    if args.run_dir:
        from ..engine import evaluate_run
        from ..engine.attack import EmbeddingAttack

        attack = EmbeddingAttack(args.attack, args.epsilon, args.attack_steps) if args.attack else None

        report = evaluate_run(
            args.run_dir,
            args.task,
            args.split,
            args.limit,
            args.out,
            ood=args.ood or (),
            progress=not args.quiet,
            command=shlex.join(["polar-vbll", *args.argv]),
            precision=args.precision,
            attack=attack,
        )
        if not _prints():
            return
        if "attack" in report:
            m, a = report["attack"]["metrics"], report["attack"]
            print(
                f"  under {a['method']} (ε {a['epsilon']}, {a['steps']} steps): acc {m['cls/acc']:.4f}, "
                f"ECE {m['cal/ece']:.4f}, NLL {m['cls/nll']:.4f}"
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
        precision=args.precision,
    )
    if not _prints():
        return
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


def cmd_refine(args: argparse.Namespace) -> None:
    from ..engine import refine

    names = ["laplace_samples", "la_subset", *(k for k in vars(args) if k.startswith("tfb_"))]
    options = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    result = refine(
        args.run_dir,
        args.out,
        temperature_scaling=args.temperature_scaling,
        laplace=args.laplace,
        tfb=args.tfb,
        overwrite=args.overwrite,
        progress=not args.quiet,
        command=shlex.join(["polar-vbll", *args.argv]),
        precision=args.precision,
        **options,
    )
    report = result.report
    _print_metrics(
        f"{report['task']} / {report['split']}: {report['n']} examples, "
        f"{result.config.adapter.method}-{result.config.uq.method} refined from {args.run_dir}",
        report["metrics"],
    )
    print(f"run folder: {result.out}")


def cmd_report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from ..atomic import atomic_write_text
    from ..outputs import OutputKind, claim, prepare_output
    from ..report import compare_runs
    from ..report.schema import Report
    from ..stored import read_json

    reports = []
    for run in args.runs:
        path = Path(run) / "report.json"
        if not path.is_file():
            raise PolarVBLLError(f"{path}: not found (is {run} a run or report folder?)")
        reports.append(Report.from_dict(read_json(path, "report"), path).to_dict())
    if args.out:
        prepare_output(args.out, OutputKind.COMPARISON)
    table = compare_runs(reports, [Path(run).name for run in args.runs])
    print(table)
    if args.out:
        claim(args.out, "comparison.md")
        atomic_write_text(Path(args.out) / "comparison.md", table)
