"""Reload a finished run folder and evaluate it, on its own task or on another with the same labels."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from ..adapters import load_adapter_state
from ..atomic import atomic_write_json
from ..data import TaskSpec, get_task
from ..data.tasks import _load_file
from ..errors import PolarVBLLError
from ..metrics import ood_metrics
from ..models import load_backbone
from ..outputs import OutputKind, claim, prepare_output
from ..report import write_report
from ..stored import load_tensors, read_json, tensor_metadata
from .checkpoint import load_head
from .config import FitConfig
from .trainer import FitResult, build_components, calibration_plots, evaluate_components, finish_run, training_items


def _read_run(run_dir: Path) -> tuple[FitConfig, dict]:
    if not run_dir.is_dir():
        raise PolarVBLLError(f"{run_dir}: no such run folder")
    for name in ("config.json", "report.json"):
        if not (run_dir / name).is_file():
            raise PolarVBLLError(f"{run_dir}: not a finished run ({name} missing)")
    config = FitConfig.from_dict(read_json(run_dir / "config.json", "run config"), run_dir / "config.json")
    report = read_json(run_dir / "report.json", "run report")
    if not isinstance(report, dict) or not isinstance(report.get("timings"), dict):
        raise PolarVBLLError(f"{run_dir / 'report.json'}: not a run report (no timings)")
    return config, report


def load_run(run_dir: str | Path, config: FitConfig | None = None) -> FitResult:
    """Backbone with the trained adapter, the trained head and the task of a run folder (written by ``fit``).

    ``config``: build the head of this config instead of the run's (``refine``: a posterior still to be fitted).
    """
    run_dir = Path(run_dir)
    saved, report = _read_run(run_dir)
    adapter_file = run_dir / "adapter" / "adapter_model.safetensors"
    tensor_metadata(adapter_file, "adapter weights")  # a missing or truncated file fails before the model loads
    tensor_metadata(run_dir / "head.safetensors", "head")
    backbone, task, head = build_components(config or saved, load_backbone(saved.model), restore=True)
    load_adapter_state(backbone.model, load_tensors(adapter_file, "adapter weights"), str(adapter_file))
    load_head(head, run_dir / "head.safetensors", refit=config is not None)
    backbone.eval()
    head.eval()
    return FitResult(run_dir, report, config or saved, backbone, head, task)


def refined_config(config: FitConfig, temperature_scaling: bool = False, laplace: bool = False, **options):
    """The config that ``fit`` would train into the same weights as ``config``, plus the post-hoc steps asked for:
    ``laplace`` turns MAP into Laplace-LoRA (``--uq laplace``) and adds a last-layer Laplace to VBLL;
    ``temperature_scaling`` fits T on the run's held-out examples. ``options``: ``laplace_samples``, ``la_subset``.
    """
    if not (temperature_scaling or laplace):
        raise PolarVBLLError("refine: ask for temperature_scaling and/or laplace")
    unknown = set(options) - {"laplace_samples", "la_subset"}
    if unknown:
        raise PolarVBLLError(f"refine: unknown option(s) {sorted(unknown)} (laplace_samples, la_subset)")
    changes: dict = dict(options)
    if laplace:
        if config.uq == "map":
            changes["uq"] = "laplace"
        elif config.uq == "vbll" and not config.laplace:
            changes["laplace"] = True
        else:
            raise PolarVBLLError(f"refine: a Laplace refinement needs a map or vbll run, this one is {config.uq!r}")
    if temperature_scaling:
        if config.temperature_scaling:
            raise PolarVBLLError("refine: the run already has a fitted temperature")
        if not config.calibration_holdout:
            raise PolarVBLLError(
                "refine: the run trained on every training example, so none is left to fit a temperature on "
                "(train with --calibration-holdout)"
            )
        changes["temperature_scaling"] = True
        if config.uq == "map" and not laplace:
            changes["uq"] = "temperature"
    return FitConfig(**{**config.to_dict(), **changes})


def refine(
    run_dir: str | Path,
    out: str | Path,
    *,
    temperature_scaling: bool = False,
    laplace: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    **options,
) -> FitResult:
    """A post-hoc method on a finished run, without retraining, written as a new run folder ``out``.

    The result equals ``fit`` of :func:`refined_config` (same weights, same post-hoc steps): MAP → Laplace-LoRA or
    temperature scaling, VBLL → + last-layer Laplace and/or a temperature.
    """
    run_dir, out = Path(run_dir), Path(out)
    saved, source_report = _read_run(run_dir)
    config = refined_config(saved, temperature_scaling, laplace, **options)
    if out.resolve() == run_dir.resolve():
        raise PolarVBLLError(f"refine: --out must differ from the run folder {run_dir}")
    prepare_output(out, OutputKind.RUN, overwrite=overwrite)
    run = load_run(run_dir, config)
    items, held_out = training_items(run.task, config)
    claim(out, "config.json", "train_log.jsonl")
    atomic_write_json(out / "config.json", config.to_dict())
    shutil.copyfile(run_dir / "train_log.jsonl", out / "train_log.jsonl")
    flags = ["--temperature-scaling"] * temperature_scaling + ["--laplace"] * laplace
    command = command or " ".join(["polar-vbll refine", str(run_dir), "--out", str(out), *flags])
    return finish_run(
        config,
        run.backbone,
        run.head,
        run.task,
        items,
        held_out,
        out,
        train_s=source_report["timings"]["train_s"],
        command=command,
        progress=progress,
        extra={"refined_from": str(run_dir)},
    )


def _restrict(task: TaskSpec, num_classes: int, split: str | None, limit: int | None):
    """The task seen through a ``num_classes`` head: items with more choices are dropped (counted)."""
    items = _load_file(task.files[split or task.eval_split], task.reader)
    kept = [item for item in items if len(item.choices) <= num_classes][: limit or None]
    return replace(task, num_classes=num_classes), kept, len(items)


def evaluate_run(
    run_dir: str | Path,
    task: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    out: str | Path | None = None,
    ood: list[str] | tuple = (),
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Metrics of a trained run on ``task`` (default: its own), and OOD detection against each task in ``ood``.

    Tasks must answer with the run's label words; for lettered tasks with more choices than the run has classes
    (ARC has 3-5 under an OBQA-trained 4-class head), the items with too many choices are dropped and counted.
    """
    if limit is not None and limit < 1:
        raise PolarVBLLError(f"limit: must be >= 1 (leave it unset for all), got {limit}")
    if out is not None:
        prepare_output(out, OutputKind.EVALUATION)
    run = load_run(run_dir)
    config = run.config
    target = get_task(task, config.template) if task else run.task
    _check_labels(target, run.task)
    target, items, n_total = _restrict(target, run.task.num_classes, split or config.eval_split, limit)
    evaluation = evaluate_components(run.backbone, run.head, target, config, split, progress=progress, items=items)
    report = {
        **{k: v for k, v in run.report.items() if k not in ("metrics", "timings", "ood")},
        "task": evaluation["task"],
        "split": evaluation["split"],
        "n": evaluation["n"],
        "metrics": evaluation["metrics"],
        "trained_on": run.task.name,
        "n_total": n_total,
        "timings": {"eval_s": evaluation["eval_s"]},
        "command": command or f"polar-vbll evaluate {run_dir} --task {target.name}",
    }
    images = calibration_plots(evaluation)
    if ood:
        report["ood"], ood_scores = {}, {}
        for name in ood:
            spec = get_task(name, config.template)
            _check_labels(spec, run.task)
            spec, kept, total = _restrict(spec, run.task.num_classes, None, limit)
            if not kept:
                raise PolarVBLLError(f"OOD task '{name}': no item has at most {run.task.num_classes} choices")
            shifted = evaluate_components(
                run.backbone, run.head, spec, config, spec.eval_split, progress=progress, items=kept
            )
            detection = {c: ood_metrics(evaluation["scores"][c], shifted["scores"][c]) for c in evaluation["scores"]}
            best = max(detection, key=lambda c: detection[c]["ood/auroc"])
            report["ood"][spec.name] = {
                "split": spec.eval_split,
                "n": len(kept),
                "n_total": total,
                "metrics": shifted["metrics"],
                "detection": detection,
                "best_criterion": best,
            }
            ood_scores[spec.name] = shifted["scores"]
        report["ood_note"] = (
            f"Items with more than {run.task.num_classes} choices are dropped from tasks with more "
            "classes (kept / total above); the remaining ones keep probability 0 on absent letters."
        )
        best = max(
            evaluation["scores"], key=lambda c: sum(e["detection"][c]["ood/auroc"] for e in report["ood"].values())
        )
        report["ood_best_criterion"] = best
        from ..report import plots

        images["ood_hist"] = plots.score_histograms(
            evaluation["scores"][best], {n: sc[best] for n, sc in ood_scores.items()}, best
        )
        images["ood_roc"] = plots.roc_curves(
            evaluation["scores"][best], {n: sc[best] for n, sc in ood_scores.items()}, best
        )
    if out is not None:
        write_report(report, out, images)
    return report


def _check_labels(task: TaskSpec, trained: TaskSpec) -> None:
    same_words = task.label_words() == trained.label_words()
    both_letters = task.template.labels == "letters" and trained.template.labels == "letters"
    if not (same_words or both_letters):
        raise PolarVBLLError(
            f"task '{task.name}' answers with {task.label_words()}, but the run was trained on "
            f"'{trained.name}' with {trained.label_words()}"
        )
