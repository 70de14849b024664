"""A trained run on another task or split with the same answers, and OOD detection against shifted tasks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..data import get_task
from ..distributed import current_ranks
from ..errors import PolarVBLLError
from ..metrics import ood_metrics
from ..outputs import OutputKind, prepare_output
from ..report import plots
from ..report.schema import Report
from .attack import EmbeddingAttack
from .inference import calibration_plots, evaluate_components
from .runs import load_run, read_run, task_folder

RUN_EVALUATION = ("zero_shot", "warning")


def evaluate_run(
    run_dir: str | Path,
    task: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    out: str | Path | None = None,
    ood: list[str] | tuple = (),
    progress: bool = True,
    command: str | None = None,
    precision: str | None = None,
    attack: EmbeddingAttack | None = None,
) -> dict:
    """Metrics of a trained run on ``task`` (default: its own), and OOD detection against each task in ``ood``.

    A multi-task run evaluates the run of its task ``task`` (``run_dir/tasks/<task>``) on that task. Tasks must
    answer with the run's label words; for lettered tasks with more choices than the run has classes
    (ARC has 3-5 under an OBQA-trained 4-class head), the items with too many choices are dropped and counted.
    ``precision``: compute in ``fp32``, ``bf16`` or ``auto`` (default: the precision the run trained in).
    ``attack``: score the same examples again under an adversarial attack (:mod:`~polar_vbll.engine.attack`); the
    report's ``attack`` section holds the robust metrics beside the clean ones. Under several processes the report is
    the one a single process writes (:func:`~polar_vbll.engine.inference.predict`).
    """
    if limit is not None and limit < 1:
        raise PolarVBLLError(f"limit: must be >= 1 (leave it unset for all), got {limit}")
    main = current_ranks().main  # under a launcher: every process scores its share, the main one writes
    if out is not None and main:
        prepare_output(out, OutputKind.EVALUATION)
    saved, recorded_report = read_run(Path(run_dir))
    if len(saved.task_names) > 1:  # a multi-task run: the run of the task named
        run_dir, task = task_folder(Path(run_dir), saved, recorded_report, task), None
    run = load_run(run_dir, precision=precision)
    config = run.config
    target = get_task(task, config.template) if task else run.task
    target.check_answers_like(run.task)
    target, items, n_total = target.seen_by_head(run.task.num_classes, split or config.eval_split, limit)
    evaluation = evaluate_components(run.backbone, run.head, target, config, split, progress=progress, items=items)
    recorded = Report.from_dict(run.report, Path(run_dir) / "report.json")
    # what described the run's own evaluation (OOD, the zero-shot reference and its warning) does not carry over
    sections = {k: v for k, v in recorded.sections.items() if not k.startswith("ood") and k not in RUN_EVALUATION}
    report = replace(
        recorded,
        model={**recorded.model, "precision": str(run.backbone.precision)},
        settings={**recorded.settings, "precision": config.precision, "base_dtype": run.backbone.base_dtype},
        task=evaluation["task"],
        split=evaluation["split"],
        n=evaluation["n"],
        metrics=evaluation["metrics"],
        timings={"eval_s": evaluation["eval_s"]},
        command=command or f"polar-vbll evaluate {run_dir} --task {target.name}",
        sections={**sections, "trained_on": run.task.name, "n_total": n_total},
    )
    images = calibration_plots(evaluation)
    if attack is not None:
        attacked = evaluate_components(
            run.backbone, run.head, target, config, split, progress=progress, items=items, attack=attack
        )
        report.sections["attack"] = {**attack.describe(), "metrics": attacked["metrics"]}
        report.timings["attack_s"] = attacked["eval_s"]
    if ood:
        detected: dict[str, dict] = {}
        ood_scores = {}
        for name in ood:
            spec = get_task(name, config.template)
            spec.check_answers_like(run.task)
            spec, kept, total = spec.seen_by_head(run.task.num_classes, None, limit)
            if not kept:
                raise PolarVBLLError(f"OOD task '{name}': no item has at most {run.task.num_classes} choices")
            shifted = evaluate_components(
                run.backbone, run.head, spec, config, spec.eval_split, progress=progress, items=kept
            )
            detection = {c: ood_metrics(evaluation["scores"][c], shifted["scores"][c]) for c in evaluation["scores"]}
            best = max(detection, key=lambda c: detection[c]["ood/auroc"])
            detected[spec.name] = {
                "split": spec.eval_split,
                "n": len(kept),
                "n_total": total,
                "metrics": shifted["metrics"],
                "detection": detection,
                "best_criterion": best,
            }
            ood_scores[spec.name] = shifted["scores"]
        best = max(evaluation["scores"], key=lambda c: sum(e["detection"][c]["ood/auroc"] for e in detected.values()))
        report.sections["ood"] = detected
        report.sections["ood_note"] = (
            f"Items with more than {run.task.num_classes} choices are dropped from tasks with more "
            "classes (kept / total above); the remaining ones keep probability 0 on absent letters."
        )
        report.sections["ood_best_criterion"] = best
        images["ood_hist"] = plots.score_histograms(
            evaluation["scores"][best], {n: sc[best] for n, sc in ood_scores.items()}, best
        )
        images["ood_roc"] = plots.roc_curves(
            evaluation["scores"][best], {n: sc[best] for n, sc in ood_scores.items()}, best
        )
    if out is not None and main:
        report.write(out, images)
    return report.to_dict()
