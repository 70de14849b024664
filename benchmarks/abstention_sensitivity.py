"""How much the certified abstention depends on a temperature that changes no ranking, on calibration data only.

For every run of ``benchmarks/decisions.py`` (``RUNS/<task>/<method>``), the run predicts the training examples it
held out (never trained on; where ``polar-vbll conformal`` calibrates), and for each temperature T of ``--temperatures``
its probabilities become softmax(log p / T): the same answers, sharper (T < 1) or softer (T > 1), and on a
two-class task the same ranking of the questions by confidence.
Per T, the share of those questions answered at a certified error ≤ α (probability ≥ 1 − δ):

- by the package's control (:func:`polar_vbll.conformal.calibrate_abstention`: fixed-sequence testing with 20 starts
  at δ/20 each, on the geometric grid);
- by Learn then Test's split fixed sequence (Angelopoulos et al. 2021, §4; MAPIE's ``split_fixed_sequence``): the
  grid's thresholds ordered by their p-values on a random half, then one fixed sequence at δ on the other half, in
  that order; median and number of "none certified" over ``--splits`` random halves.

No evaluation example is used. Writes ``benchmarks/results/abstention_sensitivity.{json,md}``.

    python benchmarks/abstention_sensitivity.py --tasks sst2
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, run_worker, write_results  # noqa: E402
from decisions import METHODS, run_dir  # noqa: E402


def tempered(probs, temperature: float):
    """softmax(log p / T) row-wise, sharper or softer: the same answers (argmax) and, with two classes, the same
    ranking of the questions by confidence."""
    import numpy as np

    logits = np.log(np.clip(probs, 1e-300, 1.0)) / temperature
    logits -= logits.max(1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(1, keepdims=True)


def split_fixed_sequence_share(probs, labels, alpha: float, delta: float, seed: int) -> float:
    """The share of ``probs`` (n, C) answered at the threshold split fixed-sequence testing certifies: the grid's
    thresholds ordered by ascending p-value on a random half (ties keep the safer threshold first), tested in that
    order on the other half at ``delta`` until the first not rejected; the smallest rejected threshold is kept
    (0 when the first fails)."""
    import numpy as np
    from mapie.risk_control import control_fwer

    from polar_vbll.conformal.abstention import grid_p_values, selective_risk

    order = np.random.default_rng(seed).permutation(len(labels))
    learn, test = order[: len(labels) // 2], order[len(labels) // 2 :]
    grid, learn_p = grid_p_values(probs[learn], labels[learn], alpha)
    sequence = np.argsort(learn_p, kind="stable")
    test_p = grid_p_values(probs[test], labels[test], alpha)[1]
    rejected = np.asarray(control_fwer(test_p[sequence], delta, fwer_method="fixed_sequence"), dtype=int)
    if not len(rejected):
        return 0.0
    return selective_risk(probs, labels, float(grid[sequence[rejected]].min()))[0]


def worker(args, task: str, method: str) -> dict:
    import numpy as np

    from polar_vbll.conformal import calibrate_abstention
    from polar_vbll.engine import load_run
    from polar_vbll.engine.build import training_items
    from polar_vbll.engine.decisions import run_probabilities

    run = load_run(run_dir(Path(args.runs), task, method))
    held_out = training_items(run.task, run.config)[1]
    probs = run_probabilities(run, held_out, progress=False)
    labels = np.array([item.answer for item in held_out])
    rows = {}
    for temperature in args.temperatures:
        sharp = tempered(probs, temperature)
        split = [split_fixed_sequence_share(sharp, labels, args.alpha, args.delta, seed) for seed in range(args.splits)]
        starts = calibrate_abstention(sharp, labels, args.alpha, args.delta)
        rows[str(temperature)] = {
            "fixed_sequence_20_starts": starts.calibration_coverage,
            "split_fixed_sequence_median": statistics.median(split),
            "split_fixed_sequence_none": sum(share == 0 for share in split),
        }
    return {"n_calibration": len(labels), "error": float((probs.argmax(1) != labels).mean()), "temperatures": rows}


def markdown(data: dict) -> list[str]:
    temperatures = data["temperatures"]
    lines = [
        "# Certified abstention under a temperature that changes no ranking (SmolLM2-135M, dequantized 4-bit GGUF)",
        "",
        f"The runs of `benchmarks/decisions.py`; on the training examples each held out (never trained on), the share "
        f"answered at a certified error ≤ {data['alpha']} (probability ≥ {1 - data['delta']:.2f}) after "
        "softmax(log p / T). Each cell: the package's fixed-sequence control with 20 starts at δ/20 / split fixed "
        f"sequence's median over {data['splits']} random halves (how many of them certified none). No evaluation "
        "example is used.",
        "",
        "| task | method | n | error | " + " | ".join(f"T = {t}" for t in temperatures) + " |",
        "|---|---|---|---|" + "---|" * len(temperatures),
    ]
    for cell, value in data["cells"].items():
        task, method = cell.split("|")
        shown = [value["temperatures"][str(t)] for t in temperatures]
        lines.append(
            f"| {task} | {method} | {value['n_calibration']} | {value['error']:.3f} | "
            + " | ".join(
                f"{row['fixed_sequence_20_starts']:.3f} / {row['split_fixed_sequence_median']:.3f} "
                f"({row['split_fixed_sequence_none']})"
                for row in shown
            )
            + " |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2"])
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--temperatures", nargs="+", type=float, default=[0.5, 0.75, 1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--splits", type=int, default=10, help="random halves for split fixed sequence")
    parser.add_argument("--runs", default="runs/decisions", help="the decisions benchmark's run folders")
    parser.add_argument("--worker", nargs=2, metavar=("TASK", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args, *args.worker)))
        return
    data = {
        "alpha": args.alpha, "delta": args.delta, "temperatures": args.temperatures, "splits": args.splits, "cells": {},
    }  # fmt: skip
    flags = [f"--alpha={args.alpha}", f"--delta={args.delta}", f"--splits={args.splits}", f"--runs={args.runs}"]
    flags += ["--temperatures", *map(str, args.temperatures)]
    for task in args.tasks:
        for method in METHODS:
            if not (run_dir(Path(args.runs), task, method) / "conformal.json").exists():
                continue
            print(f"{task}|{method} ...", flush=True)
            data["cells"][f"{task}|{method}"] = run_worker(__file__, *flags, "--worker", task, method)
    command = shlex.join(["python", "benchmarks/abstention_sensitivity.py", *sys.argv[1:]])
    write_results(RESULTS / "abstention_sensitivity", data, markdown(data), machine_info(), command)


if __name__ == "__main__":
    main()
