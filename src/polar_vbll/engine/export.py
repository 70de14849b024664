"""A run ready to serve without this package's training code: ``export_run`` writes

    model/                      a plain Hugging Face model folder (safetensors) with the adapter merged into the base
                                weights, and its tokenizer: ``AutoModelForCausalLM.from_pretrained(OUT / "model")``
    head.safetensors            the head's tensors (mean, covariance or temperature, ...)
    polar_vbll_export.json      the run's config, task, label words, metrics and the command that made it
    conformal.json              the run's conformal sets and abstention threshold, when it has them
    README.md                   a model card

and :func:`load_exported` reads it back; its ``predict`` gives the run's probabilities (fp32: to 1e-5). Only
single-pass heads export: a method that samples or switches the adapter's weights at prediction time (MC dropout,
ensembles, BLoB, ScalaBL, TFB, Laplace over the adapter) needs the adapter it would have merged away.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel

from ..adapters import merge_and_unload
from ..atomic import atomic_directory, atomic_write_json, atomic_write_text
from ..config import FitConfig
from ..conformal import CONFORMAL_FILE
from ..data import get_task
from ..errors import PolarVBLLError
from ..models import load_backbone
from ..outputs import OutputKind, claim, prepare_output
from ..stored import read_json, tensor_metadata
from ..uq import UQ_METHODS
from .build import build_head, training_items
from .checkpoint import load_head, save_head
from .predictions import Predictions, predict_with
from .result import FitResult
from .runs import load_run

EXPORT_FILE = "polar_vbll_export.json"


def export_run(run_dir: str | Path, out: str | Path, overwrite: bool = False, command: str | None = None) -> Path:
    """Write the run in ``run_dir`` as a served model into ``out`` (see the module docstring), in fp32."""
    run_dir, out = Path(run_dir), Path(out)
    saved = FitConfig.from_dict(read_json(run_dir / "config.json", "run config"), run_dir / "config.json")
    if len(saved.task_names) > 1:
        raise PolarVBLLError(f"{run_dir}: a multi-task run; export one task's run ({run_dir / 'tasks'}/<task>)")
    needs = UQ_METHODS.get(saved.uq.method).requires(saved.uq)
    if needs:
        raise PolarVBLLError(
            f"uq '{saved.uq.method}' predicts through the adapter's layers ({', '.join(sorted(needs))}), which a "
            "merged model no longer has; export a single-pass head (map, mle, vbll, temperature, last-layer laplace)"
        )
    prepare_output(out, OutputKind.EXPORT, overwrite=overwrite)
    run = load_run(run_dir, precision="fp32")
    if run.head.backbone_passes() != 1:
        raise PolarVBLLError(f"uq '{saved.uq.method}': {run.head.backbone_passes()} backbone passes per prediction")
    model = merge_and_unload(run.backbone.model)  # (refuses an adapter with no single weight: iLoRA)
    assert isinstance(model, PreTrainedModel)  # a Hugging Face causal LM, as every backbone
    claim(out, "model", "head.safetensors", EXPORT_FILE, "README.md", CONFORMAL_FILE)
    with atomic_directory(out / "model") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        run.backbone.tokenizer.save_pretrained(tmp)
    save_head(run.head, out / "head.safetensors")
    record = {
        "config": run.config.to_dict(),
        "task": run.task.name,
        "label_words": run.task.label_words(),
        "n_train": len(training_items(run.task, run.config)[0]),
        "metrics": run.report.get("metrics", {}),
        "source_run": str(run_dir),
        "model": run.backbone.describe(),
        "command": command or shlex.join(["polar-vbll", "export", str(run_dir), str(out)]),
    }
    atomic_write_json(out / EXPORT_FILE, record)
    if (run_dir / CONFORMAL_FILE).is_file():
        shutil.copyfile(run_dir / CONFORMAL_FILE, out / CONFORMAL_FILE)
    atomic_write_text(out / "README.md", model_card(record, run_dir))
    return out


def model_card(record: dict, run_dir: Path) -> str:
    """The exported model's card (Markdown): what it answers, how well, what it is made of and how it was made."""
    config, metrics, model = record["config"], record["metrics"], record["model"]
    words = ", ".join(map(repr, record["label_words"]))
    rows = "\n".join(f"| `{key}` | {value:.4f} |" for key, value in metrics.items() if isinstance(value, float))
    return f"""# {record["task"]}: {config["adapter"]["method"]} + {config["uq"]["method"]} on {model["name"]}

A fine-tuned classifier with calibrated uncertainty, exported by polar-vbll from the run `{run_dir}`. It answers
multiple-choice prompts of the task `{record["task"]}` with the label words {words}.

- `model/`: the base model with the adapter merged into its weights (a plain Hugging Face model folder).
- `head.safetensors`: the {config["uq"]["method"]} head over the model's last hidden state.
- Load: `polar_vbll.load_exported(FOLDER).predict(questions=[...])`.

## Metrics on the run's evaluation split

| metric | value |
|---|---|
{rows}

## Base model and data

Base model: {model["name"]} ({model.get("source", "")}). {model.get("note", "")} The base model's license applies
to `model/`; the task data's license is that of its source (see polar-vbll's `data/` sources).

## How it was made

    {record["command"]}

Training config: `polar_vbll_export.json` (`config`).
"""


@dataclass
class ExportedModel:
    """An exported run, loaded: ``predict`` as ``predict_run``."""

    folder: Path
    result: FitResult

    def predict(self, questions: list[dict] | None = None, **options) -> Predictions:
        """Predictions with uncertainty (and, with ``conformal.json``, sets and abstention) for ``questions`` or a
        task split (``task``, ``split``, ``limit``), as :func:`~polar_vbll.engine.predictions.predict_with`."""
        return predict_with(self.result, questions, **options)


def load_exported(folder: str | Path) -> ExportedModel:
    """Load a folder written by :func:`export_run` (a missing or partial export fails in one line)."""
    folder = Path(folder)
    for required in (EXPORT_FILE, "head.safetensors", "model/config.json"):
        if not (folder / required).is_file():
            raise PolarVBLLError(f"{folder}: not a complete polar-vbll export ({required} missing)")
    record = read_json(folder / EXPORT_FILE, "export record")
    tensor_metadata(folder / "head.safetensors", "head")  # a truncated file fails before the model loads
    try:
        config = FitConfig.from_dict({**record["config"], "model": str(folder / "model")}, folder / EXPORT_FILE)
        n_train = int(record["n_train"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PolarVBLLError(f"{folder / EXPORT_FILE}: not an export record ({exc!r})") from None
    backbone = load_backbone(str(folder / "model"))
    backbone.set_precision("fp32")
    task = get_task(config.single_task, config.template, registered_first=True)
    head = build_head(config, backbone, task, n_train)
    load_head(head, folder / "head.safetensors")
    backbone.eval()
    head.eval()
    report = {"metrics": record.get("metrics", {})}
    return ExportedModel(folder, FitResult(folder, report, config, backbone, head, task))
