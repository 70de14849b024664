"""How the exact head phase's buffer is weighted (``solve_scale``), chosen on held-out *training* examples.

The buffer of M cached training features can stand for itself (``buffer``: N = M) or for the whole training set
(``dataset``: each example counted N / M times, the stationary point of ``fit``'s own objective). The choice was
made here, on the 256 SST-2 training examples that ``--calibration-holdout`` keeps out of training (seed 0, the
``make demo`` recipe in bf16), never on the validation split that the benchmark reports. It reuses the seed-0 runs
of ``benchmarks/head_phase.py`` (stochastic head, MAP-LoRA) and trains the two exact variants.

    python benchmarks/choose_solve_scale.py      # after python benchmarks/head_phase.py --tasks sst2 --seeds 0
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, write_results  # noqa: E402

RUNS = Path("runs/head_phase/sst2/seed0")
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


def main() -> None:
    from polar_vbll.engine import fit, load_run
    from polar_vbll.engine.build import training_items
    from polar_vbll.engine.inference import evaluate_components

    runs = {}
    for scale in ("buffer", "dataset"):
        out = Path(f"runs/choose_solve_scale/{scale}")
        uq = {"method": "vbll", "head_phase": "exact", "solve_scale": scale}
        fit(out=out, overwrite=True, progress=False, uq=uq, **OPTIONS)
        runs[f"exact head, solve_scale {scale}"] = out
    runs["stochastic head"] = RUNS / "PoLAR-VBLL_stochastichead"
    runs["MAP-LoRA"] = RUNS / "MAP-LoRA"
    rows = {}
    for name, path in runs.items():
        run = load_run(path)
        _, held_out = training_items(run.task, run.config)
        metrics = evaluate_components(run.backbone, run.head, run.task, run.config, items=held_out)["metrics"]
        rows[name] = {k: metrics[k] for k in ("cls/acc", "cal/ece", "cls/nll", "unc/epistemic_mean")}
    lines = [
        "# solve_scale of the exact head phase, chosen on 256 held-out SST-2 training examples",
        "",
        "| head | ACC | ECE | NLL | mean epistemic |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {m['cls/acc']:.4f} | {m['cal/ece']:.4f} | {m['cls/nll']:.4f} | {m['unc/epistemic_mean']:.4f} |"
        for name, m in rows.items()
    ]
    write_results(
        RESULTS / "choose_solve_scale", {"rows": rows}, lines, machine_info(), "python benchmarks/choose_solve_scale.py"
    )


if __name__ == "__main__":
    main()
