"""Options of the exact head phase, chosen on held-out *training* examples, never on the validation split.

Every variant trains with the ``make demo`` recipe in bf16 (seed 0, SST-2) holding out the 256 training examples of
``--calibration-holdout``, and is scored on them: ACC / ECE / NLL, the mean epistemic uncertainty, and the head
phase's share of the training time. Variants:

- ``solve_scale``: the buffer of M cached training features stands for itself (``buffer``: N = M) or for the whole
  training set (``dataset``: each example counted N / M times, the stationary point of ``fit``'s own objective);
- ``solve_features``: the solves between the first and the last compute fresh features of a seeded buffer
  (``fresh``) or reuse those the adapter steps computed (``steps``).

A variant whose run folder holds a report is not retrained. The stochastic head and MAP-LoRA rows reuse the seed-0
runs of ``benchmarks/head_phase.py``.

    python benchmarks/choose_head_phase.py      # after python benchmarks/head_phase.py --tasks sst2 --seeds 0
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, write_results  # noqa: E402
from head_phase import head_phase_seconds  # noqa: E402

RUNS = Path("runs/choose_head_phase")
REUSED = Path("runs/head_phase/sst2/seed0")
OPTIONS = dict(
    model="smollm2-135m",
    task="sst2",
    adapter="polar",
    steps=100,
    batch_size=16,
    seed=0,
    eval_limit=1000,
    calibration_holdout=True,
    precision="auto",
    zero_shot=False,
)
EXACT = {"method": "vbll", "head_phase": "exact"}
# row name: (run folder, uq options or None for a reused run)
VARIANTS = {
    "exact head, solve_scale buffer, fresh features": (RUNS / "solve_scale_buffer", EXACT),
    "exact head, solve_scale dataset, fresh features": (
        RUNS / "solve_scale_dataset",
        {**EXACT, "solve_scale": "dataset"},
    ),
    "exact head, solve_scale buffer, step features": (
        RUNS / "solve_features_steps",
        {**EXACT, "solve_features": "steps"},
    ),
    "stochastic head": (REUSED / "PoLAR-VBLL_stochastichead", None),
    "MAP-LoRA": (REUSED / "MAP-LoRA", None),
}
COLUMNS = {"cls/acc": "ACC", "cal/ece": "ECE", "cls/nll": "NLL", "unc/epistemic_mean": "mean epistemic"}


def main() -> None:
    from polar_vbll.engine import fit, load_run
    from polar_vbll.engine.build import training_items
    from polar_vbll.engine.inference import evaluate_components

    rows = {}
    for name, (out, uq) in VARIANTS.items():
        if uq is not None and not (out / "report.json").is_file():
            print(f"training {name} into {out}", flush=True)
            fit(out=out, overwrite=True, progress=False, uq=uq, **OPTIONS)
        run = load_run(out)
        _, held_out = training_items(run.task, run.config)
        metrics = evaluate_components(run.backbone, run.head, run.task, run.config, items=held_out)["metrics"]
        report = json.loads((out / "report.json").read_text())
        train_s = report["timings"]["train_s"]
        rows[name] = {
            **{key: metrics[key] for key in COLUMNS},
            "train_s": train_s,
            "head_phase_share": head_phase_seconds(out, report) / train_s,
        }
    lines = [
        "# Options of the exact head phase, chosen on 256 held-out SST-2 training examples",
        "",
        "| head | " + " | ".join(COLUMNS.values()) + " | training s | head phase ÷ training time |",
        "|---|" + "---|" * (len(COLUMNS) + 2),
    ]
    lines += [
        f"| {name} | "
        + " | ".join(f"{row[key]:.4f}" for key in COLUMNS)
        + f" | {row['train_s']:.0f} | {row['head_phase_share']:.2f} |"
        for name, row in rows.items()
    ]
    write_results(
        RESULTS / "choose_head_phase", {"rows": rows}, lines, machine_info(), "python benchmarks/choose_head_phase.py"
    )


if __name__ == "__main__":
    main()
