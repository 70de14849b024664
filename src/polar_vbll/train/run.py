"""Reload a finished run folder and evaluate it, on its own task or on another with the same labels."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from ..adapters import adapter_state_dict
from ..data import get_task
from ..errors import PolarVBLLError
from ..models import load_backbone
from ..report import write_report
from .config import FitConfig
from .trainer import FitResult, build_components, evaluate_components


def load_run(run_dir: str | Path) -> FitResult:
    """Backbone with the trained adapter, the trained head and the task of a run folder (written by ``fit``)."""
    run_dir = Path(run_dir)
    try:
        config = FitConfig(**json.loads((run_dir / "config.json").read_text(encoding="utf-8")))
        report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PolarVBLLError(f"{run_dir}: not a finished run ({Path(exc.filename).name} missing)") from None
    backbone, task, head = build_components(config, load_backbone(config.model))
    head_state = load_file(str(run_dir / "head.safetensors"))
    adapter_file = run_dir / "adapter" / "adapter_model.safetensors"
    adapter = load_file(str(adapter_file))
    if set(adapter) != set(adapter_state_dict(backbone.model)):
        raise PolarVBLLError(f"{adapter_file}: adapter weights do not fit the run's model")
    backbone.model.load_state_dict(adapter, strict=False)
    head.load_state_dict(head_state)
    backbone.eval()
    head.eval()
    return FitResult(run_dir, report, config, backbone, head, task)


def evaluate_run(
    run_dir: str | Path,
    task: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Metrics of a trained run on ``task`` (default: its own) — the label words must be the run's."""
    run = load_run(run_dir)
    config = run.config
    target = get_task(task, config.template) if task else run.task
    if target.label_words() != run.task.label_words():
        raise PolarVBLLError(
            f"task '{target.name}' answers with {target.label_words()}, but the run was trained on "
            f"'{run.task.name}' with {run.task.label_words()}"
        )
    evaluation = evaluate_components(run.backbone, run.head, target, config, split, limit, progress)
    report = {
        **{k: v for k, v in run.report.items() if k not in ("metrics", "timings")},
        "task": evaluation["task"],
        "split": evaluation["split"],
        "n": evaluation["n"],
        "metrics": evaluation["metrics"],
        "trained_on": run.task.name,
        "timings": {"eval_s": evaluation["eval_s"]},
        "command": command or f"polar-vbll evaluate {run_dir} --task {target.name}",
    }
    if out is not None:
        write_report(report, out)
    return report
