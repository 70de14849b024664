"""From a trained run to decisions: conformal prediction sets and abstention at a certified risk, calibrated on
examples the run did not train on and stored in the run (``conformal.json``), then measured on its evaluation split.

``conformal.json``: the set rule (:class:`~polar_vbll.conformal.ConformalSets`), the abstention threshold
(:class:`~polar_vbll.conformal.Abstention`), where the calibration examples came from, and the evaluation's
figures: empirical coverage and mean set size of the sets; coverage (share answered) and realised risk (error among
answered) of the abstention.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_json
from ..conformal import CONFORMAL_FILE, Abstention, ConformalSets, SetMethod, calibrate_abstention, calibrate_sets
from ..conformal.abstention import selective_risk
from ..distributed import current_ranks
from ..errors import PolarVBLLError
from ..outputs import claim
from ..report import write_report
from ..report.plots import decisions_plot
from ..report.report import PLOT_TITLES
from ..stored import read_json
from .build import training_items
from .inference import predict
from .runs import load_run


def conformalize_run(
    run_dir: str | Path,
    alpha: float = 0.1,
    method: SetMethod | str = SetMethod.LAC,
    delta: float = 0.1,
    calibration_split: str | None = None,
    eval_split: str | None = None,
    limit: int | None = None,
    fwer: str = "fixed_sequence",
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Calibrate the sets (miscoverage ``alpha``) and the abstention (error ≤ ``alpha`` among answered, with
    probability ≥ 1 − ``delta``) of the run in ``run_dir`` on its held-out training examples (the run's
    ``calibration_holdout``) or on ``calibration_split``, measure both on ``eval_split`` (default: the run's
    evaluation split; its first ``limit`` examples), and store them in ``run_dir/conformal.json``; returns that
    record."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    config, task = run.config, run.task
    if len(config.task_names) > 1:
        raise PolarVBLLError(f"{run_dir}: a multi-task run; conformalize one task's run ({run_dir / 'tasks'}/<task>)")
    eval_split = eval_split or config.eval_split or task.eval_split
    if calibration_split is not None:
        if calibration_split == "train":
            raise PolarVBLLError(
                "--calibration-split train: the run trained on that split; calibrate on examples it never saw (its "
                "held-out ones, the default, or another split)"
            )
        if calibration_split == eval_split:
            raise PolarVBLLError(
                f"--calibration-split {calibration_split}: also the evaluation split; pick another for --eval-split"
            )
        calibration, source = task.load(calibration_split), f"split {calibration_split}"
    else:
        calibration = training_items(task, config)[1]
        if not calibration:
            raise PolarVBLLError(
                f"{run_dir}: the run held no training examples out (calibration_holdout off), so every one it has "
                "was trained on; pass --calibration-split with a split it did not train on"
            )
        source = f"{len(calibration)} training examples held out of training (calibration_holdout)"
    start = time.perf_counter()
    probs = run_probabilities(run, calibration, progress, "calibrating")
    labels = np.array([item.answer for item in calibration])
    sets = calibrate_sets(probs, labels, alpha, method, seed=config.seed)
    abstention = calibrate_abstention(probs, labels, alpha, delta, fwer)
    items = task.load(eval_split)[: limit or None]
    eval_probs, eval_labels = run_probabilities(run, items, progress), np.array([item.answer for item in items])
    evaluation = measured(sets, abstention, eval_probs, eval_labels)
    record = {
        "alpha": alpha,
        "delta": delta,
        "sets": sets.to_dict(),
        "abstention": abstention.to_dict(),
        "calibration": {"source": source, "n": len(calibration)},
        "evaluation": {"split": eval_split, **evaluation},
        "seconds": time.perf_counter() - start,
        "command": command or shlex.join(["polar-vbll", "conformal", str(run_dir), "--alpha", str(alpha)]),
    }
    if current_ranks().main:
        claim(run_dir, CONFORMAL_FILE)
        atomic_write_json(run_dir / CONFORMAL_FILE, record)
        add_to_report(run_dir, record, eval_probs, eval_labels)
    return record


def add_to_report(run_dir: Path, record: dict, probs: np.ndarray, labels: np.ndarray) -> bool:
    """Show the decisions in the run's report (``report.{json,md,html}``, a ``decisions`` section and plot beside
    its risk-coverage curve); False when the run has no report."""
    if not (run_dir / "report.json").is_file():
        return False
    report = read_json(run_dir / "report.json", "run report")
    report["decisions"] = record
    shown = [name for name in PLOT_TITLES if name != "decisions" and (run_dir / f"{name}.png").is_file()]
    images = {name: (run_dir / f"{name}.png").read_bytes() for name in shown}
    write_report(report, run_dir, {**images, "decisions": decisions_plot(probs, labels, record)})
    return True


def measured(sets: ConformalSets, abstention: Abstention, probs: np.ndarray, labels) -> dict:
    """The decisions' figures on ``probs`` (N, C) with right answers ``labels``: ``set/coverage`` (right answer in
    the set), ``set/size`` (mean), ``set/empty`` and ``set/sizes`` (share of each size 0..C); ``abstain/coverage``
    (share answered) and ``abstain/risk`` (error among answered)."""
    labels = np.asarray(labels)
    chosen = sets.sets(probs)
    sizes = chosen.sum(1)
    coverage, risk = selective_risk(probs, labels, abstention.threshold)
    return {
        "n": len(labels),
        "set/coverage": float(chosen[np.arange(len(labels)), labels].mean()),
        "set/size": float(sizes.mean()),
        "set/empty": float((sizes == 0).mean()),
        "set/sizes": [float((sizes == k).mean()) for k in range(probs.shape[1] + 1)],
        "abstain/coverage": coverage,
        "abstain/risk": risk,
    }


def run_probabilities(run, items: list, progress: bool = True, desc: str = "evaluating") -> np.ndarray:
    """(N, C): a loaded run's predictive probabilities on ``items``, at its evaluation batch size and length."""
    config = run.config
    out = predict(
        run.backbone, run.head, run.task, items, config.eval_batch_size, config.max_length, config.seed,
        progress=progress, desc=desc,
    )  # fmt: skip
    return out["probs"]
