"""The cost table: train-step time, peak memory and inference time of every method, as ratios to MAP-LoRA
measured in the same invocation on the same inputs.

Each method runs ``fit`` in a fresh process (so peak RSS is its own) on BoolQ training prompts cut to 128 tokens
(batch 8, an almost constant shape), r = 8 on q_proj, v_proj. Step time: median over the steps after ``--warmup``;
methods that alternate (VBLL) report the median of each phase and their cycle mean (one cheap head-only step,
one adapter step). Post-hoc time: the Laplace / temperature / TFB fit after training (on ``--post-hoc-samples``
examples). Inference: median ``predict_batch`` time of one evaluation batch of 32 with 100 logit samples, over
``--infer-batches`` batches. Peak RSS: the whole process (load, training, post-hoc, one evaluation batch).
Writes ``benchmarks/results/cost.{json,md}``; with ``--methods`` the rows measured join the recorded table (each
run beside its own MAP-LoRA reference) instead of replacing it.

    python benchmarks/cost.py --steps 13 --warmup 3
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    RESULTS,
    STOCHASTIC_VBLL,
    inference_times,
    machine_info,
    merged_runs,
    peak_rss_mb,
    run_worker,
    runs_footer,
    timed_fit,
    write_results,
)

REFERENCE = "MAP-LoRA"
# name: (adapter, uq, extra FitConfig options); PoLAR-MAP and the landing variant isolate the adapter's cost
METHODS = {
    "MAP-LoRA": ("lora", "map", {}),
    "MLE": ("lora", "mle", {}),
    "MCD": ("lora", "mc_dropout", {}),
    "ENS": ("lora", "ensemble", {}),
    "LA": ("lora", "laplace", {}),
    "BLoB": ("lora", "blob", {}),
    "ScalaBL": ("lora", "scalabl", {}),
    "TS": ("lora", "temperature", {}),
    "TFB": ("lora", "tfb", {}),
    "PoLAR-MAP (geoopt)": ("polar", "map", {}),
    "PoLAR-MAP (landing)": ("polar", "map", {"optimizer": "landing"}),
    "PoLAR-VBLL": ("polar", STOCHASTIC_VBLL, {}),
    "PoLAR-VBLL (landing)": ("polar", STOCHASTIC_VBLL, {"optimizer": "landing"}),
    "PoLAR-VBLL + LA": ("polar", STOCHASTIC_VBLL, {"laplace": True}),
    "PoLAR-BLoB": ("polar", "blob", {}),
    "PoLAR-TFB": ("polar", "tfb", {}),
    "PoLAR-VBLL (exact head)": ("polar", {"method": "vbll", "head_phase": "exact"}, {}),
}


def worker(method: str, args) -> dict:
    adapter, uq, extra = METHODS[method]
    with tempfile.TemporaryDirectory() as out:
        result, steps = timed_fit(
            out=Path(out) / "run",
            model="smollm2-135m",
            task="boolq",
            adapter=adapter,
            uq=uq,
            steps=args.steps,
            batch_size=8,
            max_length=128,
            seed=0,
            checkpoint_every=0,
            log_every=0,
            eval_limit=32,
            laplace_samples=args.post_hoc_samples,
            calibration_size=args.post_hoc_samples,
            **extra,
        )
        phases = [json.loads(line)["phase"] for line in (Path(out) / "run" / "train_log.jsonl").open()]
        timed = list(zip(phases[1:], steps, strict=True))[args.warmup :]  # steps[i] ends at step i + 2
        by_phase = {p: statistics.median(t for q, t in timed if q == p) for p in dict.fromkeys(q for q, _ in timed)}
        infer = inference_times(result, args.infer_batches)
        return {
            "adapter": adapter,
            "uq": uq,
            "options": extra,
            "step_s": statistics.mean(by_phase.values()),
            "step_s_by_phase": by_phase,
            "post_hoc_s": result.report["timings"]["post_hoc_s"],
            "infer_s": statistics.median(infer),
            "peak_rss_mb": peak_rss_mb(),
            "trainable_parameters": result.report["settings"]["trainable_parameters"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=13, help="training steps per method (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps (default %(default)s)")
    parser.add_argument("--infer-batches", type=int, default=3, help="timed evaluation batches (default %(default)s)")
    parser.add_argument("--post-hoc-samples", type=int, default=128, help="examples for Laplace / temperature fits")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), help="only these (MAP-LoRA always runs)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return

    from tqdm.auto import tqdm

    flags = [
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--infer-batches={args.infer_batches}",
        f"--post-hoc-samples={args.post_hoc_samples}",
    ]
    names = list(dict.fromkeys([REFERENCE, *(args.methods or METHODS)]))
    rows = {}
    for name in tqdm(names, desc="cost"):
        rows[name] = run_worker(__file__, *flags, "--worker", name)
        tqdm.write(f"{name}: {rows[name]['step_s']:.2f} s/step, {rows[name]['infer_s']:.2f} s/batch")
    ref = rows[REFERENCE]
    for row in rows.values():
        for key in ("step_s", "infer_s", "peak_rss_mb"):
            row[f"{key}_ratio"] = row[key] / ref[key]
    selection = ["--methods", *args.methods] if args.methods else []
    command = shlex.join(["python", "benchmarks/cost.py", *flags, *selection])
    latest = {"command": command, "machine": machine_info(), "rows": rows}
    runs = merged_runs(RESULTS / "cost.json", latest, {REFERENCE}, "--methods")
    write_results(RESULTS / "cost", {"runs": runs}, markdown(runs, args), runs[-1]["machine"], command)


def markdown(runs: list[dict], args) -> list[str]:
    """The table: every run's rows, ratios ÷ the reference of the same run; runs listed below it."""
    lines = [
        "# Cost of the uncertainty methods (SmolLM2-135M, CPU)",
        "",
        f"BoolQ prompts cut to 128 tokens, batch 8, r = 8 on q_proj and v_proj, {args.steps} steps of which the "
        f"first {args.warmup} are untimed; each method in a fresh process, ratios ÷ {REFERENCE} of the same "
        "invocation (run). s/step: median step time; for alternating methods (VBLL) the mean of the head-phase and "
        "adapter-phase medians (one cycle = one cheap head step + one adapter step). Post-hoc: Laplace / "
        f"temperature / TFB fit on {args.post_hoc_samples} examples. Inference: median `predict_batch` time, one "
        f"evaluation batch of 32 with 100 logit samples ({args.infer_batches} batches). Peak RSS: whole process.",
        "",
        "| method | run | trainable | s/step | ÷ MAP | phases (s) | post-hoc s | infer s/batch | ÷ MAP | peak RSS MB "
        "| ÷ MAP |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for number, run in enumerate(runs, 1):
        for name, row in run["rows"].items():
            phases = ", ".join(f"{p} {t:.2f}" for p, t in row["step_s_by_phase"].items())
            lines.append(
                f"| {name} | {number} | {row['trainable_parameters']:,} | {row['step_s']:.2f} | "
                f"{row['step_s_ratio']:.3f} | {phases} | {row['post_hoc_s']:.1f} | {row['infer_s']:.3f} | "
                f"{row['infer_s_ratio']:.2f} | {row['peak_rss_mb']:.0f} | {row['peak_rss_mb_ratio']:.3f} |"
            )
    return lines + runs_footer(runs)


if __name__ == "__main__":
    main()
