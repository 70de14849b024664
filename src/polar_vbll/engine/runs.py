"""Finished run folders: reload one (``load_run``), refine one by a post-hoc method (``refine``), predict with one."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from ..adapters import load_adapter_state
from ..atomic import atomic_write_json
from ..config import FitConfig
from ..data import get_task
from ..errors import PolarVBLLError
from ..models import load_backbone
from ..models.precision import resolved_name
from ..outputs import OutputKind, claim, prepare_output
from ..posthoc import ordered_steps
from ..stored import load_tensors, read_json, tensor_metadata
from ..uq import UQ_METHODS
from .build import base_dtype, build_components, build_head, training_items
from .checkpoint import load_head
from .finish import finish_run
from .predictions import Predictions, predict_with
from .result import FitResult


def read_run(run_dir: Path) -> tuple[FitConfig, dict]:
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


def load_run(
    run_dir: str | Path, config: FitConfig | None = None, precision: str | None = None, task: str | None = None
) -> FitResult:
    """Backbone with the trained adapter, the trained head and the task of a run folder (written by ``fit``).

    ``config``: build the head of this config instead of the run's (``refine``: a posterior still to be fitted);
    ``precision``: compute in ``fp32``, ``bf16`` or ``auto`` instead of the precision the run trained in.
    A multi-task run: ``task`` loads that task's run (``run_dir/tasks/<task>``); without it, every task's head over
    one backbone (``FitResult.tasks``; ``predict(..., task=...)`` picks the head).
    """
    run_dir = Path(run_dir)
    saved, report = read_run(run_dir)
    if len(saved.task_names) > 1:
        if config is not None:
            raise PolarVBLLError(f"{run_dir}: a multi-task run; refine one task's folder ({run_dir / 'tasks'}/<task>)")
        if task is not None:
            return load_run(task_folder(run_dir, saved, report, task), precision=precision)
        folders = [task_folder(run_dir, saved, report, name) for name in saved.task_names]
        first = load_run(folders[0], precision=precision)
        tasks = {first.task.name: first}
        for folder in folders[1:]:
            own, own_report = read_run(folder)
            own = with_precision(own, precision) if precision is not None else own
            spec = get_task(own.single_task, own.template, registered_first=True)
            head = build_head(own, first.backbone, spec)
            head.attach(first.backbone)
            load_head(head, folder / "head.safetensors")
            head.eval()
            tasks[spec.name] = FitResult(folder, own_report, own, first.backbone, head, spec)
        config = with_precision(saved, precision) if precision is not None else saved
        return FitResult(run_dir, report, config, first.backbone, first.head, first.task, tasks=tasks)
    if task is not None and task not in (saved.task, get_task(saved.single_task, None, registered_first=True).name):
        raise PolarVBLLError(f"{run_dir}: a run of task {saved.task!r}, not of {task!r}")
    if precision is not None:
        config = with_precision(config or saved, precision)
    adapter_file = run_dir / "adapter" / "adapter_model.safetensors"
    tensor_metadata(adapter_file, "adapter weights")  # a missing or truncated file fails before the model loads
    tensor_metadata(run_dir / "head.safetensors", "head")
    backbone, spec, head = build_components(config or saved, load_backbone(saved.model), restore=True)
    load_adapter_state(backbone.model, load_tensors(adapter_file, "adapter weights"), str(adapter_file))
    stored_as = base_dtype(config or saved, backbone)
    if stored_as is not None:  # as fit stored it, after the adapter rewrote it
        backbone.set_base_dtype(stored_as)
    load_head(head, run_dir / "head.safetensors", refit=config is not None)
    backbone.eval()
    head.eval()
    return FitResult(run_dir, report, config or saved, backbone, head, spec)


def task_folder(run_dir: Path, config: FitConfig, report: dict, task: str | None) -> Path:
    """The run folder of ``task`` (a name from ``config.task`` or the task's own name) in a multi-task run."""
    names = list(report.get("tasks") or {})
    if len(names) != len(config.task_names):
        raise PolarVBLLError(f"{run_dir / 'report.json'}: not a finished multi-task run (no tasks section)")
    chosen = {**dict(zip(names, names)), **dict(zip(config.task_names, names))}.get(task or "")
    if chosen is None:
        given = "no task given" if task is None else f"no task {task!r}"
        raise PolarVBLLError(f"{run_dir}: a multi-task run of {', '.join(names)}; {given} (name one with --task)")
    folder = run_dir / report["tasks"][chosen]["folder"]
    if not folder.is_dir():
        raise PolarVBLLError(f"{folder}: task folder missing from the multi-task run {run_dir}")
    return folder


def with_precision(config: FitConfig, precision: str) -> FitConfig:
    """``config`` computing in ``precision`` (resolved for the CPU), with the base weights stored as that
    precision implies (see :func:`~polar_vbll.engine.build.base_dtype`)."""
    return replace(config, precision=resolved_name(precision), base_dtype=None)


def refined_config(
    config: FitConfig, temperature_scaling: bool = False, laplace: bool = False, tfb: bool = False, **options
):
    """The config that ``fit`` would train into the same weights as ``config``, plus the post-hoc steps asked for:
    ``laplace`` turns MAP into Laplace-LoRA (``uq laplace``) and adds a last-layer Laplace to VBLL; ``tfb`` turns
    MAP into TFB (``uq tfb``); ``temperature_scaling`` fits T on the run's held-out examples. ``options``:
    ``laplace_samples``, ``la_subset`` (Laplace-LoRA's ``subset``), ``tfb_<option>`` (TFB's options).
    """
    if not (temperature_scaling or laplace or tfb):
        raise PolarVBLLError("refine: ask for temperature_scaling, laplace and/or tfb")
    if laplace and tfb:
        raise PolarVBLLError("refine: laplace and tfb are two posteriors over the same weights; ask for one")
    tfb_options = {key.removeprefix("tfb_"): options.pop(key) for key in list(options) if key.startswith("tfb_")}
    unknown = set(options) - {"laplace_samples", "la_subset"}
    if unknown:
        raise PolarVBLLError(f"refine: unknown option(s) {sorted(unknown)} (laplace_samples, la_subset, tfb_*)")
    data = config.to_dict()
    steps = list(config.post_hoc or [])
    for name, asked in (("laplace", laplace), ("tfb", tfb)):
        if asked:
            data, steps = _apply(_refinement(config.uq.method, name, steps), data, steps)
    if temperature_scaling:
        if "temperature" in steps:
            raise PolarVBLLError("refine: the run already has a fitted temperature")
        if not config.calibration_holdout:
            raise PolarVBLLError(
                "refine: the run trained on every training example, so none is left to fit a temperature on "
                "(train with --calibration-holdout)"
            )
        # MAP + temperature is the method "temperature"; after another refinement it is a step of that method
        change = UQ_METHODS.get(config.uq.method).refinements.get("temperature", {}) if not (laplace or tfb) else {}
        data, steps = _apply({"post_hoc": "temperature", **change}, data, steps)
    subset = options.pop("la_subset", None)
    if subset is not None:
        if "subset" not in UQ_METHODS.get(data["uq"]["method"]).config.help():
            raise PolarVBLLError(f"refine: la_subset sets Laplace-LoRA's subset; uq {data['uq']['method']!r} has none")
        data["uq"]["subset"] = subset
    if tfb_options:
        if data["uq"]["method"] != "tfb":
            raise PolarVBLLError(f"refine: tfb options {sorted(tfb_options)} need --tfb")
        data["uq"].update(tfb_options)
    return FitConfig.from_dict({**data, **options, "post_hoc": ordered_steps(steps)})


def _refinement(method: str, name: str, steps: list[str]) -> dict[str, str]:
    """What refinement ``name`` ("laplace", "tfb") changes in a ``method`` run, or a one-line error."""
    change = UQ_METHODS.get(method).refinements.get(name)
    done = change is not None and change.get("post_hoc") in steps
    if change is None or done:
        able = [other for other in UQ_METHODS if name in UQ_METHODS.get(other).refinements]
        title = {"laplace": "a Laplace", "tfb": "a TFB"}[name]
        raise PolarVBLLError(
            f"refine: {title} refinement needs a {' or '.join(able)} run, this one is {method!r}"
            + (" (refined already)" if done else "")
        )
    return change


def _apply(change: dict[str, str], data: dict, steps: list[str]) -> tuple[dict, list[str]]:
    """A refinement (``{"uq": name}`` and/or ``{"post_hoc": step}``) applied to a config's dict and step list."""
    if "uq" in change:
        method = UQ_METHODS.get(change["uq"])
        data = {**data, "uq": {"method": change["uq"]}}
        steps = steps + [step for step in method.post_hoc if step not in steps]
    if "post_hoc" in change and change["post_hoc"] not in steps:
        steps = steps + [change["post_hoc"]]
    return data, steps


def refine(
    run_dir: str | Path,
    out: str | Path,
    *,
    temperature_scaling: bool = False,
    laplace: bool = False,
    tfb: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    precision: str | None = None,
    **options,
) -> FitResult:
    """A post-hoc method on a finished run, without retraining, written as a new run folder ``out``.

    The result equals ``fit`` of :func:`refined_config` (same weights, same post-hoc steps): MAP → Laplace-LoRA, TFB
    or temperature scaling, VBLL → + last-layer Laplace and/or a temperature. ``precision``: compute the post-hoc
    steps and the evaluation in ``fp32``, ``bf16`` or ``auto`` (default: the run's).
    """
    run_dir, out = Path(run_dir), Path(out)
    saved, source_report = read_run(run_dir)
    if len(saved.task_names) > 1:
        raise PolarVBLLError(
            f"refine: {run_dir} is a multi-task run; refine one task's run folder, {run_dir / 'tasks'}/<task>"
        )
    config = refined_config(saved, temperature_scaling, laplace, tfb, **options)
    if precision is not None:
        config = with_precision(config, precision)
    if out.resolve() == run_dir.resolve():
        raise PolarVBLLError(f"refine: --out must differ from the run folder {run_dir}")
    prepare_output(out, OutputKind.RUN, overwrite=overwrite)
    run = load_run(run_dir, config)
    items, held_out = training_items(run.task, config)
    claim(out, "config.json", "train_log.jsonl")
    atomic_write_json(out / "config.json", config.to_dict())
    shutil.copyfile(run_dir / "train_log.jsonl", out / "train_log.jsonl")
    flags = ["--temperature-scaling"] * temperature_scaling + ["--laplace"] * laplace + ["--tfb"] * tfb
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
        zero_shot=source_report.get("zero_shot"),
    )


def predict_run(run: FitResult | str | Path, questions: list[dict] | None = None, **options) -> Predictions:
    """Predictions of a run (a folder written by ``fit``, or a ``FitResult``) with their uncertainty: see
    :func:`~polar_vbll.engine.predictions.predict_with` for ``questions`` and ``options``."""
    return predict_with(run if isinstance(run, FitResult) else load_run(run), questions, **options)
