"""Decisions on the head-phase benchmark's runs: conformal sets and certified abstention per method and seed.

For every finished cell of ``benchmarks/head_phase.py`` (``RUNS/<task>/seed<k>/<method>``, whose ``probs.npz`` holds
its predictions on the evaluation examples), the run predicts the training examples it held out
(``calibration_holdout``: never trained on, also where TS fitted its temperature), LAC sets and Learn-then-Test
abstention are calibrated there (α = ``--alpha``, δ = ``--delta``), as ``polar-vbll conformal`` does, and measured on
the stored evaluation predictions. Per task and method: means over the seeds of set coverage, mean set size, the
share answered at the certified risk and the error among the answered. Each cell in a fresh process; writes
``benchmarks/results/decisions_runs.{json,md}``.

    python benchmarks/decisions_runs.py --tasks boolq
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, recorded_cells, run_worker, write_results  # noqa: E402
from head_phase import METHODS, cell_dir  # noqa: E402

KEYS = ("set/coverage", "set/size", "abstain/coverage", "abstain/risk")


def worker(args, task: str, seed: int, method: str) -> dict:
    import numpy as np

    from polar_vbll.conformal import calibrate_abstention, calibrate_sets
    from polar_vbll.engine import load_run
    from polar_vbll.engine.build import training_items
    from polar_vbll.engine.decisions import measured, run_probabilities

    folder = cell_dir(Path(args.runs), task, seed, method)
    run = load_run(folder)
    held_out, config = training_items(run.task, run.config)[1], run.config
    probs = run_probabilities(run, held_out, progress=False)
    labels = np.array([item.answer for item in held_out])
    sets = calibrate_sets(probs, labels, args.alpha, "lac", seed=config.seed)
    abstention = calibrate_abstention(probs, labels, args.alpha, args.delta)
    with np.load(folder / "probs.npz") as stored:
        evaluation = measured(sets, abstention, stored["probs"], stored["labels"])
    return {
        "n_calibration": len(labels),
        "n": evaluation["n"],
        **{key: evaluation[key] for key in KEYS},
        "threshold": abstention.to_dict()["threshold"],
    }


def markdown(data: dict) -> list[str]:
    lines = [
        "# Decisions on the head-phase benchmark's runs, SmolLM2-135M (dequantized 4-bit GGUF)",
        "",
        f"The runs of `benchmarks/head_phase.py` (its recipe and evaluation examples); LAC sets at α {data['alpha']} "
        f"and abstention certified for error ≤ {data['alpha']} among answered with probability ≥ "
        f"{1 - data['delta']:.2f} (Learn then Test, fixed-sequence, grid geometric in 1 − λ), calibrated on the "
        "training examples each run held out. Means over the seeds each method finished; `answered` is 0 where no "
        "threshold was certified (every question abstained on), and its error is then empty.",
        "",
        "| task | method | seeds | set coverage | mean set size | answered | error among answered | seeds certified |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in sorted({cell.split("|")[0] for cell in data["cells"]}):
        for method in METHODS:
            found = [v for c, v in data["cells"].items() if c.split("|")[0] == task and c.split("|")[2] == method]
            if not found:
                continue
            certified = [v for v in found if v["abstain/coverage"] > 0]
            error = f"{statistics.mean(v['abstain/risk'] for v in certified):.3f}" if certified else "—"
            lines.append(
                f"| {task} | {method} | {len(found)} | {statistics.mean(v['set/coverage'] for v in found):.3f} | "
                f"{statistics.mean(v['set/size'] for v in found):.3f} | "
                f"{statistics.mean(v['abstain/coverage'] for v in found):.3f} | {error} | "
                f"{len(certified)} of {len(found)} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--runs", default="runs/head_phase", help="the head-phase benchmark's cell folders")
    parser.add_argument("--worker", nargs=3, metavar=("TASK", "SEED", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        task, seed, method = args.worker
        print(json.dumps(worker(args, task, int(seed), method)))
        return
    settings = {"alpha": args.alpha, "delta": args.delta}
    path = RESULTS / "decisions_runs.json"
    data = {**settings, "cells": recorded_cells(path, settings)}
    flags = [f"--alpha={args.alpha}", f"--delta={args.delta}", f"--runs={args.runs}"]
    for task in args.tasks:
        for seed in args.seeds:
            for method in METHODS:
                cell = f"{task}|{seed}|{method}"
                folder = cell_dir(Path(args.runs), task, seed, method)
                if cell in data["cells"] or not (folder / "probs.npz").exists():
                    continue
                print(f"{cell} ...", flush=True)
                data["cells"][cell] = run_worker(__file__, *flags, "--worker", task, str(seed), method)
                print(f"{cell}: {json.dumps(data['cells'][cell])}", flush=True)
                command = shlex.join(["python", "benchmarks/decisions_runs.py", *sys.argv[1:]])
                write_results(RESULTS / "decisions_runs", data, markdown(data), machine_info(), command)


if __name__ == "__main__":
    main()
