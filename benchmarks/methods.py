"""Fine-tuning methods on one task, each in a fresh process: ACC/ECE/NLL, train-step time, peak memory and
inference time, as ratios to a reference run of the same grid.

Grids:
  adapters  every adapter with the MAP head and with the VBLL head (ratios to LoRA with the same head)
  uq        every uncertainty method on LoRA, plus PoLAR-VBLL (ratios to MAP-LoRA)

Every run uses the same steps, batch, max length, seed and data order. Step time: median wall time of the steps
after ``--warmup``; inference: median time of ``predict_batch`` (100 logit samples) over 5 evaluation batches of
32; peak RSS of the whole process (training and evaluation). Finished runs (``<runs>/<row>/bench.json``) are
reused, so the script resumes. Writes ``benchmarks/results/<grid>_<task>.{json,md}``.

    python benchmarks/methods.py --grid adapters --task sst2 --steps 60 --batch-size 16
    python benchmarks/methods.py --grid uq --task sst2 --steps 60 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    RESULTS,
    STOCHASTIC_VBLL,
    inference_times,
    merged_runs,
    peak_rss_mb,
    run_worker,
    runs_footer,
    timed_fit,
)

# Learning rates: the project default 1e-3 for the low-rank adapters; S2FT and LISA change full-size weight blocks,
# so they get their papers' smaller rates.
LR = {"lora": 1e-3, "polar": 1e-3, "pissa": 1e-3, "corda": 1e-3, "s2ft": 2e-4, "lisa": 1e-4}
LR |= {"ilora": 1e-3, "emtal": 1e-3}
GRIDS = {  # row name: (adapter, uq); the first row of a grid per head is its reference
    "adapters": {
        f"{adapter}-{uq}": (adapter, uq)
        for adapter in ["lora", "polar", "pissa", "corda", "s2ft", "lisa", "ilora", "emtal"]
        for uq in ["map", "vbll"]
    },
    "uq": {
        "map": ("lora", "map"),
        "mle": ("lora", "mle"),
        "mc_dropout": ("lora", "mc_dropout"),
        "ensemble": ("lora", "ensemble"),
        "laplace": ("lora", "laplace"),
        "blob": ("lora", "blob"),
        "temperature": ("lora", "temperature"),
        "polar-vbll": ("polar", "vbll"),
    },
}


def worker(row: str, args) -> dict:
    adapter, uq = GRIDS[args.grid][row]
    result, steps = timed_fit(
        out=Path(args.runs) / row,
        overwrite=True,
        model="smollm2-135m",
        task=args.task,
        adapter=adapter,
        uq=STOCHASTIC_VBLL if uq == "vbll" else uq,  # the head the recorded rows used
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        lr_adapter=LR[adapter],
        seed=args.seed,
        checkpoint_every=0,
        eval_limit=args.eval_limit,
    )
    return {
        "row": row,
        "adapter": adapter,
        "uq": uq,
        "lr_adapter": LR[adapter],
        "metrics": result.report["metrics"],
        "trainable_parameters": result.report["settings"]["trainable_parameters"],
        "train_s": result.report["timings"]["train_s"],
        "step_s_median": statistics.median(steps[args.warmup :]),
        "infer_s_median": statistics.median(inference_times(result, 5)),
        "peak_rss_mb": peak_rss_mb(),
        "diagnostics": result.report["diagnostics"],
        "posterior": result.report.get("posterior", {}),
        "calibration": result.report.get("calibration", {}),
    }


REFERENCES = {"adapters": {"lora-map", "lora-vbll"}, "uq": {"map"}}


def reference(rows: dict, row: dict, grid: str) -> dict | None:
    return rows.get(f"lora-{row['uq']}") if grid == "adapters" else rows.get("map")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=list(GRIDS), default="adapters")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--eval-limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", default=None, help="run folders (default runs/<grid>)")
    parser.add_argument("--rows", nargs="+", help="only these rows of the grid")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.runs = args.runs or f"runs/{args.grid}"
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return

    import torch

    from polar_vbll.atomic import atomic_write_json, atomic_write_text
    from polar_vbll.outputs import claim

    flags = [
        f"--grid={args.grid}",
        f"--task={args.task}",
        f"--steps={args.steps}",
        f"--batch-size={args.batch_size}",
        f"--max-length={args.max_length}",
        f"--seed={args.seed}",
        f"--warmup={args.warmup}",
        f"--runs={args.runs}",
    ] + ([f"--eval-limit={args.eval_limit}"] if args.eval_limit else [])
    rows = {}
    for row in args.rows or GRIDS[args.grid]:
        done = Path(args.runs) / row / "bench.json"
        if done.exists():
            rows[row] = json.loads(done.read_text())
            print(f"{row}: reused {done}", flush=True)
            continue
        rows[row] = run_worker(__file__, "--worker", row, *flags)
        claim(done.parent, done.name)
        atomic_write_json(done, rows[row])
        m = rows[row]["metrics"]
        print(
            f"{row}: acc {m['cls/acc']:.4f} ece {m['cal/ece']:.4f} nll {m['cls/nll']:.4f} "
            f"{rows[row]['step_s_median']:.2f} s/step {rows[row]['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    for row in rows.values():
        ref = reference(rows, row, args.grid)
        for key, ratio in (
            ("step_s_median", "step_ratio"),
            ("infer_s_median", "infer_ratio"),
            ("peak_rss_mb", "rss_ratio"),
        ):
            ok = ref is not None and key in row and key in ref
            row[ratio] = row[key] / ref[key] if ok else None
    command = shlex.join(["python", "benchmarks/methods.py", *flags] + (["--rows", *args.rows] if args.rows else []))
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}
    latest = {"command": command, "machine": machine, "rows": rows}
    path = RESULTS / f"{args.grid}_{args.task}.json"
    runs = merged_runs(path, latest, REFERENCES[args.grid], "--rows")
    atomic_write_json(path, {"command": command, "machine": machine, "runs": runs})
    ref_name = "LoRA with the same head" if args.grid == "adapters" else "MAP-LoRA"
    lines = [
        f"# {'Adapters × heads' if args.grid == 'adapters' else 'Uncertainty methods'} on {args.task} "
        "(SmolLM2-135M, CPU)",
        "",
        f"{args.steps} steps × batch {args.batch_size}, max length {args.max_length}, seed {args.seed}, same data "
        "order for every run; head lr 1e-3; evaluation on the task's validation split"
        + (f" (first {args.eval_limit})" if args.eval_limit else "")
        + ". Weights: dequantized 4-bit GGUF, fp32 — accuracy is below the original model's. Step time: median "
        f"after {args.warmup} steps; inference: median `predict_batch` time (batch 32, 100 logit samples); "
        f"ratios ÷ {ref_name} of the same invocation (run); peak RSS of the whole fit process. VBLL runs alternate "
        "cheap head-only steps with adapter steps; ensemble steps train all members.",
        "",
        "| row | run | adapter | head | adapter lr | trainable | ACC | ECE | NLL | s/step | ÷ ref | infer s | ÷ ref | "
        "peak RSS MB | ÷ ref |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value, spec):
        return format(value, spec) if value is not None else "n/a"

    for number, name, row in ((n, name, row) for n, run in enumerate(runs, 1) for name, row in run["rows"].items()):
        m = row["metrics"]
        lines.append(
            f"| {name} | {number} | {row['adapter']} | {row['uq']} | {row['lr_adapter']:g} | "
            f"{row['trainable_parameters']:,} | "
            f"{m['cls/acc']:.4f} | {m['cal/ece']:.4f} | {m['cls/nll']:.4f} | {row['step_s_median']:.2f} | "
            f"{fmt(row['step_ratio'], '.3f')} | {fmt(row.get('infer_s_median'), '.3f')} | "
            f"{fmt(row['infer_ratio'], '.2f')} | {row['peak_rss_mb']:.0f} | {fmt(row['rss_ratio'], '.3f')} |"
        )
    lines += runs_footer(runs)
    lines += ["", f"Machine: {machine['platform']}, {machine['cpus']} CPUs, torch {machine['torch']}.", ""]
    lines += [f"Reproduce: `{command}`", ""]
    atomic_write_text(RESULTS / f"{args.grid}_{args.task}.md", "\n".join(lines))


if __name__ == "__main__":
    main()
