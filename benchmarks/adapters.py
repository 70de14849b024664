"""Every adapter with the MAP head and with the VBLL head on one task: ACC/ECE/NLL, step time and peak memory.

Each (adapter, head) pair is one ``fit`` in a fresh process (so peak RSS is its own) with the same steps, batch,
max length, seed and data order; the step time is the median wall time of its steps after ``--warmup``, and the
ratios are to LoRA with the same head. VBLL runs alternate head-only and adapter steps, so compare step times
within a head. Finished runs (a ``report.json`` in ``--runs/<adapter>-<head>``) are reused, so the script resumes.
Writes ``benchmarks/results/adapters_<task>.{json,md}``.

    python benchmarks/adapters.py --task sst2 --steps 60 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ADAPTERS = ["lora", "polar", "pissa", "corda", "s2ft", "lisa"]
# Learning rates: the project default 1e-3 for the low-rank adapters (PoLAR as in its paper's higher range);
# S2FT and LISA change full-size weight blocks, so they get their papers' smaller rates.
LR = {"lora": 1e-3, "polar": 1e-3, "pissa": 1e-3, "corda": 1e-3, "s2ft": 2e-4, "lisa": 1e-4}
HEADS = ["map", "vbll"]


def worker(adapter: str, uq: str, args) -> dict:
    from polar_vbll.train import fit

    stamps = []
    result = fit(
        out=Path(args.runs) / f"{adapter}-{uq}",
        overwrite=True,
        progress=False,
        callbacks=[lambda step, logs: stamps.append(time.perf_counter())],
        model="smollm2-135m",
        task=args.task,
        adapter=adapter,
        uq=uq,
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        lr_adapter=LR[adapter],
        seed=args.seed,
        checkpoint_every=0,
        eval_limit=args.eval_limit,
    )
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][args.warmup :]
    return {
        "adapter": adapter,
        "uq": uq,
        "lr_adapter": LR[adapter],
        "metrics": result.report["metrics"],
        "trainable_parameters": result.report["settings"]["trainable_parameters"],
        "train_s": result.report["timings"]["train_s"],
        "step_s_median": statistics.median(steps),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "diagnostics": result.report["diagnostics"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--eval-limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", default="runs/adapters")
    parser.add_argument("--adapters", nargs="+", default=ADAPTERS)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args)))
        return

    import torch

    from polar_vbll.atomic import atomic_write_json, atomic_write_text

    flags = [
        f"--task={args.task}",
        f"--steps={args.steps}",
        f"--batch-size={args.batch_size}",
        f"--max-length={args.max_length}",
        f"--seed={args.seed}",
        f"--warmup={args.warmup}",
        f"--runs={args.runs}",
    ] + ([f"--eval-limit={args.eval_limit}"] if args.eval_limit else [])
    rows = {}
    for adapter in args.adapters:
        for uq in HEADS:
            done = Path(args.runs) / f"{adapter}-{uq}" / "bench.json"
            if done.exists():
                rows[f"{adapter}-{uq}"] = json.loads(done.read_text())
                print(f"{adapter}-{uq}: reused {done}", flush=True)
                continue
            out = subprocess.run(
                [sys.executable, __file__, "--worker", adapter, uq, *flags], check=True, capture_output=True, text=True
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            atomic_write_json(done, row)
            rows[f"{adapter}-{uq}"] = row
            m = row["metrics"]
            print(
                f"{adapter}-{uq}: acc {m['cls/acc']:.4f} ece {m['cal/ece']:.4f} nll {m['cls/nll']:.4f} "
                f"{row['step_s_median']:.2f} s/step {row['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    for row in rows.values():
        ref = rows.get(f"lora-{row['uq']}")
        row["step_vs_lora"] = row["step_s_median"] / ref["step_s_median"] if ref else None
        row["peak_rss_vs_lora"] = row["peak_rss_mb"] / ref["peak_rss_mb"] if ref else None
    command = "python benchmarks/adapters.py " + " ".join(flags)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}
    atomic_write_json(RESULTS / f"adapters_{args.task}.json", {"command": command, "machine": machine, "rows": rows})
    lines = [
        f"# Adapters × heads on {args.task} (SmolLM2-135M, CPU)",
        "",
        f"{args.steps} steps × batch {args.batch_size}, max length {args.max_length}, seed {args.seed}, same data "
        "order for every run; head lr 1e-3; evaluation on the task's validation split"
        + (f" (first {args.eval_limit})" if args.eval_limit else "")
        + ". Weights: dequantized 4-bit GGUF, fp32 — accuracy is below the original model's. Step time: median "
        f"after {args.warmup} steps, ÷ LoRA with the same head; peak RSS of the whole fit process (training and "
        "evaluation). VBLL runs alternate cheap head-only steps with adapter steps.",
        "",
        "| adapter | head | adapter lr | trainable | ACC | ECE | NLL | s/step | ÷ LoRA | peak RSS MB | ÷ LoRA |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows.values():
        m = row["metrics"]
        ratio = f"{row['step_vs_lora']:.3f}" if row["step_vs_lora"] else "n/a"
        mem = f"{row['peak_rss_vs_lora']:.3f}" if row["peak_rss_vs_lora"] else "n/a"
        lines.append(
            f"| {row['adapter']} | {row['uq']} | {row['lr_adapter']:g} | {row['trainable_parameters']:,} | "
            f"{m['cls/acc']:.4f} | {m['cal/ece']:.4f} | {m['cls/nll']:.4f} | {row['step_s_median']:.2f} | {ratio} | "
            f"{row['peak_rss_mb']:.0f} | {mem} |"
        )
    lines += ["", f"Machine: {machine['platform']}, {machine['cpus']} CPUs, torch {machine['torch']}.", ""]
    lines += [f"Reproduce: `{command}`", ""]
    atomic_write_text(RESULTS / f"adapters_{args.task}.md", "\n".join(lines))


if __name__ == "__main__":
    main()
