"""Multi-task fine-tuning on the embedded model: single-task LoRA per task against one multi-task LoRA, iLoRA and
EMTAL adapter over SST-2 + BoolQ + OBQA, each with a MAP and a VBLL head per task.

Budget: every task trains ``--steps-per-task`` steps × batch ``--batch-size`` in every row (a multi-task run takes
3 × that many steps, task-balanced), precision ``--precision auto``, seed 0; scored on the first ``--eval-limit``
validation examples of each task. Adapters: LoRA r 8 on q_proj, v_proj; iLoRA r 8 as 4 experts of rank 2 on the
same maps, gate from the frozen backbone; EMTAL 4 experts of rank 2 per FFN projection, router fading over the last
20 % of the steps, quality retaining λ 1. VBLL: the exact head phase on the adapter steps' features (solve buffer
256). Each row runs in a fresh process and keeps a ``cell.json`` in its run folder, so a rerun continues; the
``merge`` row times EMTAL and LoRA after ``merge_and_unload`` on the same prompts. Writes
``benchmarks/results/multitask.{json,md}``.

    python benchmarks/multitask.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
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

TASKS = ["sst2", "boolq", "obqa"]
ADAPTERS = {
    "lora": {"method": "lora", "r": 8, "alpha": 16.0, "target_modules": ["q_proj", "v_proj"]},
    "ilora": {"method": "ilora", "r": 8, "alpha": 16.0, "experts": 4, "target_modules": ["q_proj", "v_proj"]},
    "emtal": {"method": "emtal", "r": 2, "alpha": 4.0, "experts": 4},
}
HEADS = {"MAP": {"method": "map"}, "VBLL": {"method": "vbll", "solve_features": "steps", "solve_buffer": 256}}
# rows in the order they run: MAP first (the cheaper head), single-task references before the multi-task runs
ROWS = [f"{head}|{name}" for head in HEADS for name in [*(f"lora-{t}" for t in TASKS), "lora", "ilora", "emtal"]]
ROWS.append("merge")


def fit_row(args, head: str, name: str) -> dict:
    adapter, _, single = name.partition("-")
    tasks = [single] if single else TASKS
    out = Path(args.runs) / head / name
    start = time.perf_counter()
    result = resumable_fit(
        out,
        model=args.model,
        task=tasks,
        adapter=ADAPTERS[adapter],
        uq=HEADS[head],
        steps=args.steps_per_task * len(tasks),
        batch_size=args.batch_size,
        seed=0,
        eval_limit=args.eval_limit,
        precision=args.precision,
        zero_shot=head == "MAP" and bool(single),  # the untrained model once per task
    )
    reports = {t: r.report for t, r in result.tasks.items()} if result.tasks else {tasks[0]: result.report}
    keys = ("cls/acc", "cal/ece", "cls/nll", "unc/epistemic_mean")
    return {
        "tasks": {
            task: {
                "metrics": {k: report["metrics"][k] for k in keys},
                "zero_shot": report.get("zero_shot"),
                "n": report["n"],
                "eval_s": report["timings"]["eval_s"],
            }
            for task, report in reports.items()
        },
        "train_s": result.report["timings"]["train_s"],
        "steps": result.config.steps,
        "trainable": result.report["settings"]["trainable_parameters"],
        "wall_s": time.perf_counter() - start,
        "precision": result.config.precision,
    }


def merge_row(args) -> dict:
    """EMTAL and LoRA (MAP rows) merged into the base weights: forward time on the same prompts, EMTAL's merged
    outputs against its unmerged ones, and the merged parameter count against the base model's."""
    import torch

    from polar_vbll.adapters.injection import merge_and_unload
    from polar_vbll.data import encoded_batches
    from polar_vbll.engine import load_run
    from polar_vbll.models import load_backbone

    base_params = sum(p.numel() for p in load_backbone(args.model).model.parameters())
    exact = load_run(Path(args.runs) / "MAP" / "emtal", task="sst2", precision="fp32")  # the merge itself, in fp32
    runs = {name: load_run(Path(args.runs) / "MAP" / name, task="sst2") for name in ("lora", "emtal")}
    task = runs["lora"].task
    items = task.load(task.eval_split)[:64]
    batches = [b for _, b in encoded_batches(runs["lora"].backbone.tokenizer, task, items, 256, 16)]

    @torch.no_grad()
    def features(backbone) -> torch.Tensor:
        return torch.cat([backbone.features(b["input_ids"], b["attention_mask"]) for b in batches])

    differences = {}
    for precision, run in (("fp32", exact), (runs["emtal"].config.precision, runs["emtal"])):
        unmerged = features(run.backbone)
        merge_and_unload(run.backbone.model)
        differences[precision] = float((features(run.backbone) - unmerged).abs().max())
        differences["feature_max_abs"] = float(unmerged.abs().max())
    merge_and_unload(runs["lora"].backbone.model)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # alternating, so that the machine's drift hits both alike
        for name, run in runs.items():
            start = time.perf_counter()
            features(run.backbone)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "median_s": medians,
        "ratio": medians["emtal"] / medians["lora"],
        "max_abs_difference": differences,
        "parameters": {name: sum(p.numel() for p in run.backbone.model.parameters()) for name, run in runs.items()},
        "base_parameters": base_params,
        "prompts": len(items),
        "repeats": args.repeats,
    }


def markdown(data: dict) -> list[str]:
    lines = [
        "# Multi-task fine-tuning on SmolLM2-135M (dequantized 4-bit GGUF): SST-2 + BoolQ + OBQA",
        "",
        f"Every task trains {data['steps_per_task']} steps × batch {data['batch_size']} in every row (multi-task: "
        f"{3 * data['steps_per_task']} task-balanced steps), {data['precision']}, seed 0; the first "
        f"{data['eval_limit']} validation examples of each task. ACC / ECE / NLL per task; step and inference time "
        "÷ the multi-task LoRA row with the same head (inference: evaluation seconds per example, all tasks).",
        "",
    ]
    for head in HEADS:
        rows = {k.split("|")[1]: v for k, v in data["cells"].items() if k.startswith(f"{head}|")}
        if not rows:
            continue
        lines += [f"## {head} head", ""]
        header = "| adapter | trainable | " + " | ".join(f"{t} ACC / ECE / NLL" for t in TASKS)
        lines += [header + " | mean NLL | step ÷ LoRA | inference ÷ LoRA |", "|---|---|" + "---|" * (len(TASKS) + 3)]
        reference = rows.get("lora")
        singles = [rows.get(f"lora-{t}") for t in TASKS]
        if all(singles):
            cells = [singles[i]["tasks"][t]["metrics"] for i, t in enumerate(TASKS)]
            texts = [f"{m['cls/acc']:.3f} / {m['cal/ece']:.3f} / {m['cls/nll']:.3f}" for m in cells]
            mean = statistics.mean(m["cls/nll"] for m in cells)
            lines.append(f"| LoRA, one run per task | {singles[0]['trainable']:,} each | " + " | ".join(texts)
                         + f" | {mean:.3f} | | |")  # fmt: skip
        for name in ("lora", "ilora", "emtal"):
            row = rows.get(name)
            if row is None:
                continue
            metrics = [row["tasks"][t]["metrics"] for t in TASKS]
            texts = [f"{m['cls/acc']:.3f} / {m['cal/ece']:.3f} / {m['cls/nll']:.3f}" for m in metrics]
            step = inference = ""
            if reference is not None:
                step = f"{(row['train_s'] / row['steps']) / (reference['train_s'] / reference['steps']):.2f}"
                inference = f"{per_example(row) / per_example(reference):.2f}"
            label = {"lora": "LoRA", "ilora": "iLoRA", "emtal": "EMTAL"}[name] + ", multi-task"
            mean = statistics.mean(m["cls/nll"] for m in metrics)
            lines.append(f"| {label} | {row['trainable']:,} | " + " | ".join(texts)
                         + f" | {mean:.3f} | {step} | {inference} |")  # fmt: skip
        lines.append("")
    zero = {t: c["tasks"][t]["zero_shot"] for t in TASKS for k, c in data["cells"].items() if k == f"MAP|lora-{t}"}
    if zero:
        lines += ["Zero-shot: " + ", ".join(f"{t} {z['cls/acc']:.3f} / {z['cal/ece']:.3f} / {z['cls/nll']:.3f}"
                                             for t, z in zero.items()) + ".", ""]  # fmt: skip
    merge = data["cells"].get("merge")
    if merge:
        diff = merge["max_abs_difference"]
        lines += [
            f"After `merge_and_unload` (MAP rows, {merge['prompts']} SST-2 prompts, median of {merge['repeats']} "
            f"alternating passes): EMTAL {merge['median_s']['emtal']:.3f} s, LoRA {merge['median_s']['lora']:.3f} s, "
            f"**EMTAL ÷ LoRA {merge['ratio']:.3f}**; EMTAL merged against unmerged features (largest |feature| "
            f"{diff['feature_max_abs']:.1f}): max |Δ| {diff['fp32']:.1e} in fp32, "
            + ", ".join(f"{diff[k]:.1e} with base weights in {k}" for k in diff if k not in ("fp32", "feature_max_abs"))
            + f" (the merged weights rounded to it); parameters after merging: EMTAL {merge['parameters']['emtal']:,}, "
            f"LoRA {merge['parameters']['lora']:,}, base model {merge['base_parameters']:,}.",
            "",
        ]
    return lines


def per_example(row: dict) -> float:
    return sum(t["eval_s"] for t in row["tasks"].values()) / sum(t["n"] for t in row["tasks"].values())


def without_rows(argv: list[str]) -> list[str]:
    """The command line less its ``--rows`` selection: rows accumulate, so the table's command is the whole grid's."""
    kept, skipping = [], False
    for word in argv:
        if word.startswith("--rows"):
            skipping = "=" not in word
            continue
        if skipping and not word.startswith("--"):
            continue
        skipping = False
        kept.append(word)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    parser.add_argument("--steps-per-task", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-limit", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5, help="timed passes of the merge row")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--runs", default="runs/multitask", help="run folders (default %(default)s)")
    add_precision_argument(parser, "every fit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        cell = merge_row(args) if args.worker == "merge" else fit_row(args, *args.worker.split("|"))
        if args.worker != "merge":
            head, name = args.worker.split("|")
            save_cell(Path(args.runs) / head / name, cell)
        print(json.dumps(cell))
        return
    from polar_vbll.models.precision import resolved_name

    flags = [f"--steps-per-task={args.steps_per_task}", f"--batch-size={args.batch_size}"]
    flags += [f"--eval-limit={args.eval_limit}", f"--model={args.model}", f"--runs={args.runs}"]
    flags += [f"--precision={args.precision}", f"--repeats={args.repeats}"]
    path = RESULTS / "multitask.json"
    settings = {"model": args.model, "steps_per_task": args.steps_per_task, "batch_size": args.batch_size}
    settings |= {"eval_limit": args.eval_limit, "precision": resolved_name(args.precision)}
    data = {**settings, "cells": recorded_cells(path, settings)}
    for row in [row for row in ROWS if row in args.rows]:
        done = Path(args.runs) / row.replace("|", "/") / "cell.json"
        if row != "merge" and done.exists():
            data["cells"][row] = json.loads(done.read_text())
        elif row not in data["cells"]:
            print(f"{row} ...", flush=True)
            data["cells"][row] = run_worker(__file__, *flags, "--worker", row)
            print(f"{row}: {json.dumps(data['cells'][row])}", flush=True)
        data["cells"] = {r: data["cells"][r] for r in ROWS if r in data["cells"]}
        command = shlex.join(["python", "benchmarks/multitask.py", *without_rows(sys.argv[1:])])
        write_results(RESULTS / "multitask", data, markdown(data), machine_info(), command)


if __name__ == "__main__":
    main()
