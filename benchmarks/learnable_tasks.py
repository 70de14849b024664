"""Which bundled tasks the embedded model learns in a CPU budget: the task list of the ranking benchmark.

For every bundled task with a training split: one MAP-LoRA fit of ``--steps`` (default 200) × batch 16 (r 8 on
q_proj, v_proj, ``--precision auto``, seed 0, holding out the ``calibration_size`` training examples of the ranking
benchmark), scored on the first ``--eval-limit`` validation examples against the majority class of those same
examples (the best constant answer) and against the zero-shot model. A task is *learnable* when the fit's accuracy
beats the majority class by at least ``--margin`` (default 5 points). Each task runs in a fresh process and keeps a
``cell.json`` in its run folder, so a rerun skips finished tasks. Writes
``benchmarks/results/learnable_tasks.{json,md}``.

    python benchmarks/learnable_tasks.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    RESULTS,
    add_precision_argument,
    machine_info,
    recorded_cells,
    resumable_fit,
    run_worker,
    save_cell,
    write_results,
)

TASKS = ["sst2", "boolq", "wg_s", "wg_m", "arc_e", "arc_c", "obqa"]  # the bundled tasks with a training split


def worker(args, task: str) -> dict:
    out = Path(args.runs) / task
    start = time.perf_counter()
    result = resumable_fit(
        out,
        model=args.model,
        task=task,
        adapter="lora",
        uq="map",
        steps=args.steps,
        batch_size=16,
        seed=0,
        eval_limit=args.eval_limit,
        calibration_holdout=True,
        precision=args.precision,
    )
    assert result.evaluation is not None
    labels = result.evaluation["labels"]
    majority = max(float((labels == k).mean()) for k in set(labels.tolist()))
    cell = {
        "metrics": {k: result.report["metrics"][k] for k in ("cls/acc", "cal/ece", "cls/nll")},
        "zero_shot": {k: result.report["zero_shot"][k] for k in ("cls/acc", "cal/ece", "cls/nll")},
        "majority": majority,
        "n": result.report["n"],
        "wall_s": time.perf_counter() - start,
        "precision": result.config.precision,
    }
    save_cell(out, cell)
    return cell


def markdown(data: dict) -> list[str]:
    lines = [
        "# Which tasks SmolLM2-135M (dequantized 4-bit GGUF) learns in a CPU budget",
        "",
        f"One MAP-LoRA fit per task: {data['steps']} steps × batch 16, r 8 on q_proj, v_proj, lr 1e-3, "
        f"{data['precision']}, seed 0, the ranking benchmark's held-out examples kept out; scored on the first "
        f"{data['eval_limit']} validation examples. Majority: the share of the most frequent answer among those "
        f"examples. Learnable: ACC − majority ≥ {data['margin']:.2f}.",
        "",
        "| task | n | majority | zero-shot ACC | ACC | ACC − majority | ECE | NLL | learnable | minutes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, cell in data["cells"].items():
        acc = cell["metrics"]["cls/acc"]
        margin = acc - cell["majority"]
        lines.append(
            f"| {task} | {cell['n']} | {cell['majority']:.3f} | {cell['zero_shot']['cls/acc']:.3f} | {acc:.3f} | "
            f"{margin:+.3f} | {cell['metrics']['cal/ece']:.3f} | {cell['metrics']['cls/nll']:.3f} | "
            f"{'**yes**' if margin >= data['margin'] else 'no'} | {cell['wall_s'] / 60:.1f} |"
        )
    learnable = [t for t, c in data["cells"].items() if c["metrics"]["cls/acc"] - c["majority"] >= data["margin"]]
    lines += ["", "Learnable: " + (", ".join(learnable) or "none") + "."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-limit", type=int, default=1000)
    parser.add_argument("--margin", type=float, default=0.05, help="accuracy over the majority class to count")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--runs", default="runs/learnable_tasks", help="run folders (default %(default)s)")
    add_precision_argument(parser, "every fit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args, args.worker)))
        return
    from polar_vbll.models.precision import resolved_name

    flags = [f"--steps={args.steps}", f"--eval-limit={args.eval_limit}", f"--model={args.model}"]
    flags += [f"--runs={args.runs}", f"--precision={args.precision}"]
    path = RESULTS / "learnable_tasks.json"
    settings = {"model": args.model, "steps": args.steps, "eval_limit": args.eval_limit}
    settings["precision"] = resolved_name(args.precision)
    data = {**settings, "margin": args.margin, "cells": recorded_cells(path, settings)}
    for task in args.tasks:
        done = Path(args.runs) / task / "cell.json"
        if done.exists():
            data["cells"][task] = json.loads(done.read_text())
        elif task not in data["cells"]:
            print(f"{task} ...", flush=True)
            data["cells"][task] = run_worker(__file__, *flags, "--worker", task)
            print(f"{task}: {json.dumps(data['cells'][task])}", flush=True)
        data["cells"] = {t: data["cells"][t] for t in TASKS if t in data["cells"]}
        command = shlex.join(["python", "benchmarks/learnable_tasks.py", *sys.argv[1:]])
        write_results(RESULTS / "learnable_tasks", data, markdown(data), machine_info(), command)


if __name__ == "__main__":
    main()
