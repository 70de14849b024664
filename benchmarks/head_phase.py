"""The exact head phase against the stochastic one, MAP-LoRA and temperature scaling, with paired bootstrap intervals.

Every method trains with the same recipe, data and data order (the ``make demo`` recipe by default: 100 steps ×
batch 16, r 8 on q_proj, v_proj, ``--precision auto``), holding the same ``calibration_size`` training examples out
(TS fits its temperature there), and is scored on the first ``--eval-limit`` examples of the task's validation
split. Per seed and task: ACC / ECE / NLL, the mean epistemic uncertainty, the exact phase's share of the training
time, and 95 % paired bootstrap intervals of the ECE and NLL differences against MAP-LoRA and against TS. Each cell
runs in a fresh process and keeps its probabilities in its run folder, so a rerun skips finished cells. Writes
``benchmarks/results/head_phase.{json,md}``.

    python benchmarks/head_phase.py --tasks sst2 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, add_precision_argument, machine_info, run_worker, write_results  # noqa: E402

# name: (adapter, uq options, the run it refines with a temperature)
METHODS = {
    "MAP-LoRA": ("lora", {"method": "map"}, None),
    "TS": ("lora", {"method": "map"}, "MAP-LoRA"),
    "PoLAR-VBLL (stochastic head)": ("polar", {"method": "vbll"}, None),
    "PoLAR-VBLL (exact head)": ("polar", {"method": "vbll", "head_phase": "exact"}, None),
}
REFERENCES = ("MAP-LoRA", "TS")


def cell_dir(runs: Path, task: str, seed: int, method: str) -> Path:
    return runs / task / f"seed{seed}" / method.replace(" ", "").replace("(", "_").replace(")", "")


def worker(args, task: str, seed: int, method: str) -> dict:
    from polar_vbll.atomic import atomic_write_json
    from polar_vbll.engine import fit, refine
    from polar_vbll.engine.inference import evaluate_components
    from polar_vbll.outputs import claim

    adapter, uq, source = METHODS[method]
    out = cell_dir(Path(args.runs), task, seed, method)
    if source:
        result = refine(
            cell_dir(Path(args.runs), task, seed, source), out, temperature_scaling=True, overwrite=True, progress=False
        )
    else:
        result = fit(
            out=out,
            overwrite=True,
            progress=False,
            model=args.model,
            task=task,
            adapter=adapter,
            uq=uq,
            steps=args.steps,
            batch_size=args.batch_size,
            seed=seed,
            eval_limit=args.eval_limit,
            calibration_holdout=True,
            precision=args.precision,
        )
    evaluation = evaluate_components(
        result.backbone, result.head, result.task, result.config, limit=result.config.eval_limit
    )
    claim(out, "cell.json", "probs.npz")  # in the run folder's marker: --overwrite removes them with the run
    np.savez(out / "probs.npz", probs=evaluation["probs"], labels=evaluation["labels"])
    logs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    phase_s = sum(e.get("head_features_s", 0) + e.get("head_solve_s", 0) for e in logs)
    final = result.report.get("head_phase", {})
    phase_s += final.get("head_features_s", 0) + final.get("head_solve_s", 0)
    cell = {
        "metrics": result.report["metrics"],
        "train_s": result.report["timings"]["train_s"],
        "head_phase_s": phase_s,
        "precision": result.config.precision,
    }
    atomic_write_json(out / "cell.json", cell)  # a rerun skips the cell (the run folders are not committed)
    return cell


def intervals(runs: Path, task: str, seed: int) -> dict:
    """{method: {reference: {metric: interval}}} of the paired ECE and NLL differences."""
    from polar_vbll.metrics import ece, nll, paired_bootstrap

    loaded = {m: np.load(cell_dir(runs, task, seed, m) / "probs.npz") for m in METHODS}
    out: dict = {}
    for method, data in loaded.items():
        for ref in REFERENCES:
            if ref == method:
                continue
            base = loaded[ref]
            assert np.array_equal(data["labels"], base["labels"])
            out.setdefault(method, {})[ref] = {
                name: paired_bootstrap(fn, data["probs"], base["probs"], data["labels"], seed=seed)
                for name, fn in (("cal/ece", ece), ("cls/nll", nll))
            }
    return out


def markdown(data: dict) -> list[str]:
    lines = [
        "# The exact VBLL head phase (SmolLM2-135M, dequantized 4-bit GGUF)",
        "",
        f"Recipe: {data['steps']} steps × batch {data['batch_size']}, r 8 on q_proj, v_proj, lr 1e-3, precision "
        f"{data['precision']}; {data['calibration_size']} training examples held out of every run (TS fits its "
        f"temperature there); evaluation on the first {data['eval_limit']} validation examples. Exact head: the "
        "default options (a solve every 20 adapter steps and at the end, on 512 cached training features). "
        "Intervals: 95 % paired bootstrap (2,000 resamples) of the difference method − reference; **bold** when it "
        "excludes 0.",
        "",
    ]
    for task, seeds in data["cells"].items():
        lines += [
            f"## {task}",
            "",
            "| method | seeds | ACC | ECE | NLL | mean epistemic | head phase ÷ training time |",
            "|---|---|---|---|---|---|---|",
        ]
        for method in METHODS:
            done = [seeds[s][method] for s in seeds if method in seeds[s]]
            if not done:
                continue

            def mean(key, cells=done):
                return statistics.mean(c["metrics"][key] for c in cells)

            share = statistics.mean(c["head_phase_s"] / c["train_s"] for c in done)
            lines.append(
                f"| {method} | {len(done)} | {mean('cls/acc'):.4f} | {mean('cal/ece'):.4f} | {mean('cls/nll'):.4f} | "
                f"{mean('unc/epistemic_mean'):.4f} | {share:.2f} |"
            )
        lines += ["", "| method − reference (seed) | ΔECE [95 %] | ΔNLL [95 %] |", "|---|---|---|"]
        for seed, found in data["intervals"].get(task, {}).items():
            for method, refs in found.items():
                for ref, metrics in refs.items():
                    cells = []
                    for key in ("cal/ece", "cls/nll"):
                        i = metrics[key]
                        text = f"{i['diff']:+.4f} [{i['low']:+.4f}, {i['high']:+.4f}]"
                        cells.append(f"**{text}**" if i["low"] > 0 or i["high"] < 0 else text)
                    lines.append(f"| {method} − {ref} ({seed}) | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-limit", type=int, default=1000)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--runs", default="runs/head_phase", help="cell folders (default %(default)s)")
    add_precision_argument(parser, "every run")
    parser.add_argument("--worker", nargs=3, metavar=("TASK", "SEED", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        task, seed, method = args.worker
        print(json.dumps(worker(args, task, int(seed), method)))
        return
    from polar_vbll.config import FitConfig
    from polar_vbll.models.precision import resolved_name

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k in ("steps", "batch_size", "model")]
    flags += [f"--eval-limit={args.eval_limit}", f"--runs={args.runs}", f"--precision={args.precision}"]
    path = RESULTS / "head_phase.json"
    recorded = json.loads(path.read_text()) if path.exists() else {}
    settings = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "eval_limit": args.eval_limit,
        "precision": resolved_name(args.precision),
        "calibration_size": FitConfig().calibration_size,
    }
    same = all(recorded.get(k) == v for k, v in settings.items())
    data = {**settings, "cells": recorded.get("cells", {}) if same else {}, "intervals": {}}
    for task in args.tasks:
        for seed in args.seeds:
            cells = data["cells"].setdefault(task, {}).setdefault(str(seed), {})
            for method in METHODS:
                folder = cell_dir(Path(args.runs), task, seed, method)
                if (folder / "cell.json").exists() and (folder / "probs.npz").exists():
                    cells[method] = json.loads((folder / "cell.json").read_text())
                    continue
                print(f"{task} seed {seed}: {method}", flush=True)
                cells[method] = run_worker(__file__, *flags, "--worker", task, str(seed), method)
    for task, seeds in data["cells"].items():
        for seed in seeds:
            if all((cell_dir(Path(args.runs), task, int(seed), m) / "probs.npz").exists() for m in METHODS):
                data["intervals"].setdefault(task, {})[seed] = intervals(Path(args.runs), task, int(seed))
    command = shlex.join(["python", "benchmarks/head_phase.py", *sys.argv[1:]])
    write_results(RESULTS / "head_phase", data, markdown(data), machine_info(), command)


if __name__ == "__main__":
    main()
