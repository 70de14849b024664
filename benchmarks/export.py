"""Served-model cost: a PoLAR-VBLL run of SmolLM2-135M (dequantized 4-bit GGUF) on SST-2, exported (adapter merged,
VBLL head), against the base model's own zero-shot prediction on the same sentences, and against the run before
export (adapter layers unmerged): time of ``predict`` over the first ``--n`` SST-2 validation sentences, fp32, median
of ``--repeats`` after one warm-up, all three measured in turn in one process. Also the largest gap between the
exported and the run's probabilities. Writes ``benchmarks/results/export.{json,md}``.

    python benchmarks/export.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, write_results  # noqa: E402


def main() -> None:
    import numpy as np

    from polar_vbll.data import get_task
    from polar_vbll.engine import export_run, fit, load_exported, load_run
    from polar_vbll.engine.inference import predict, zero_shot_head
    from polar_vbll.engine.predictions import predict_with
    from polar_vbll.models import load_backbone

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", default="runs/export", help="run and export folders (default %(default)s)")
    args = parser.parse_args()
    runs = Path(args.runs)
    fit(out=runs / "run", overwrite=True, progress=False, task="sst2", adapter="polar", uq="vbll", steps=20,
        batch_size=8, eval_limit=64, zero_shot=False)  # fmt: skip
    export_run(runs / "run", runs / "export", overwrite=True)
    exported, run = load_exported(runs / "export"), load_run(runs / "run", precision="fp32")
    task = get_task("sst2")
    items = task.load("validation")[: args.n]
    base = load_backbone("smollm2-135m")  # the original model, fp32
    candidates = {
        "base model forward (zero-shot head)": lambda: predict(base, zero_shot_head(base, task), task, items, 32, 256),
        "exported (merged, VBLL head)": lambda: exported.predict(task="sst2", limit=args.n),
        "run before export (adapter layers)": lambda: predict_with(run, task="sst2", limit=args.n),
    }
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for repeat in range(args.repeats + 1):
        for name, call in candidates.items():
            start = time.perf_counter()
            call()
            if repeat:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    gap = float(
        np.abs(
            exported.predict(task="sst2", limit=args.n).probs - predict_with(run, task="sst2", limit=args.n).probs
        ).max()
    )
    medians = {name: statistics.median(values) for name, values in times.items()}
    ref = medians["base model forward (zero-shot head)"]
    lines = [
        "# Served-model cost: PoLAR-VBLL on SmolLM2-135M (dequantized 4-bit GGUF), SST-2, fp32",
        "",
        f"`predict` over {args.n} SST-2 validation sentences (batches of 32), median of {args.repeats} after a warm-up,"
        " the three measured in turn in one process. Goal: exported ÷ base ≤ 1.02.",
        "",
        "| predictor | median s | ÷ base model forward |",
        "|---|---|---|",
        *(f"| {name} | {value:.2f} | {value / ref:.3f} |" for name, value in medians.items()),
        "",
        f"Largest gap between the exported and the run's probabilities: {gap:.2e}.",
    ]
    command = f"python benchmarks/export.py --n {args.n} --repeats {args.repeats}"
    write_results(RESULTS / "export", {"times": times, "medians": medians, "max_prob_gap": gap, "n": args.n}, lines,
                  machine_info(), command)  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    main()
