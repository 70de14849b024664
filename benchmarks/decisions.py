"""Decisions per uncertainty method: conformal sets and Learn-then-Test abstention on SmolLM2-135M (dequantized 4-bit
GGUF). Each method fits PoLAR or LoRA on a task with 256 training examples held out (``--calibration-holdout``), then
``conformalize_run`` calibrates on those held-out examples (α = ``--alpha``, δ = ``--delta``) and measures on the first
``--eval-limit`` validation examples: set coverage and size, and the share answered at the certified risk. The
temperature row fits its T on the same held-out examples the conformal step then uses. Each cell in a fresh process;
writes ``benchmarks/results/decisions.{json,md}``.

    python benchmarks/decisions.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    RESULTS,
    add_precision_argument,
    machine_info,
    recorded_cells,
    resumable_fit,
    run_worker,
    write_results,
)

METHODS = {
    "MAP-LoRA": {"adapter": "lora", "uq": "map"},
    "LoRA + temperature": {"adapter": "lora", "uq": "temperature"},
    "MC dropout (LoRA)": {"adapter": "lora", "uq": "mc_dropout"},
    "PoLAR-MAP": {"adapter": "polar", "uq": "map"},
    "PoLAR-VBLL": {"adapter": "polar", "uq": "vbll"},
}
KEYS = ("set/coverage", "set/size", "set/empty", "abstain/coverage", "abstain/risk")


def run_dir(runs: Path, task: str, method: str) -> Path:
    """The run folder of one cell: ``RUNS/<task>/<method, spaces as _ and without parentheses>``."""
    return runs / task / method.replace(" ", "_").replace("(", "").replace(")", "")


def worker(args, cell: str) -> dict:
    from polar_vbll.engine.decisions import conformalize_run

    task, method = cell.split("|")
    run = run_dir(Path(args.runs), task, method)
    result = resumable_fit(
        run, task=task, steps=args.steps, batch_size=8, precision=args.precision, calibration_holdout=True,
        eval_limit=args.eval_limit, zero_shot=False, **METHODS[method],
    )  # fmt: skip
    record = conformalize_run(run, alpha=args.alpha, delta=args.delta, limit=args.eval_limit, progress=False)
    return {
        "metrics": {k: result.report["metrics"][k] for k in ("cls/acc", "cal/ece", "cls/nll")},
        "decisions": {k: record["evaluation"][k] for k in KEYS},
        "threshold": record["abstention"]["threshold"],
        "set_threshold": record["sets"]["threshold"],
    }


def markdown(data: dict) -> list[str]:
    grid = data["ltt_grid"]
    lines = [
        "# Decisions per uncertainty method, SmolLM2-135M (dequantized 4-bit GGUF)",
        "",
        f"{data['steps']} steps × 8, {data['precision']}; 256 training examples held out and used to calibrate; "
        f"LAC sets at α {data['alpha']}; abstention certified for error ≤ {data['alpha']} among answered with "
        f"probability ≥ {1 - data['delta']:.2f} (Learn then Test); measured on the first {data['eval_limit']} "
        f"validation examples; thresholds searched on 1 − λ geometric ({grid['size']} values down from "
        f"1 − {grid['first_gap']:.0e}). One seed.",
        "",
        "| task | method | ACC | ECE | NLL | set coverage | mean set size | empty sets | answered "
        "| error among answered | threshold |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell, value in data["cells"].items():
        task, method = cell.split("|")
        m, d = value["metrics"], value["decisions"]
        threshold = "none certified" if value["threshold"] is None else f"{value['threshold']:.3f}"
        lines.append(
            f"| {task} | {method} | {m['cls/acc']:.3f} | {m['cal/ece']:.3f} | {m['cls/nll']:.3f} | "
            f"{d['set/coverage']:.3f} | {d['set/size']:.3f} | {d['set/empty']:.3f} | {d['abstain/coverage']:.3f} | "
            f"{d['abstain/risk']:.3f} | {threshold} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--eval-limit", type=int, default=500)
    parser.add_argument("--runs", default="runs/decisions", help="run folders (default %(default)s)")
    add_precision_argument(parser, "every pass")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args, args.worker)))
        return
    from polar_vbll.conformal.abstention import GRID
    from polar_vbll.models.precision import resolved_name

    settings = {"steps": args.steps, "alpha": args.alpha, "delta": args.delta, "eval_limit": args.eval_limit}
    settings["precision"] = resolved_name(args.precision)
    settings["ltt_grid"] = {"size": len(GRID), "first_gap": 1.0 - GRID[0]}  # a new grid starts a new table
    flags = [f"--steps={args.steps}", f"--alpha={args.alpha}", f"--delta={args.delta}"]
    flags += [f"--eval-limit={args.eval_limit}", f"--runs={args.runs}", f"--precision={args.precision}"]
    path = RESULTS / "decisions.json"
    data = {**settings, "cells": recorded_cells(path, settings)}
    for task in args.tasks:
        for method in METHODS:
            cell = f"{task}|{method}"
            if cell in data["cells"]:
                continue
            print(f"{cell} ...", flush=True)
            data["cells"][cell] = run_worker(__file__, *flags, "--worker", cell)
            print(f"{cell}: {json.dumps(data['cells'][cell])}", flush=True)
            command = shlex.join(["python", "benchmarks/decisions.py", *sys.argv[1:]])
            write_results(RESULTS / "decisions", data, markdown(data), machine_info(), command)


if __name__ == "__main__":
    main()
