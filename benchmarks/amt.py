"""AMT on the embedded model: a LoRA pool meta-tuned on BoolQ, OBQA and ARC-E, merged at test time on K-shot
SST-2 (outside the sources, and the one task the zero-shot model answers above chance), against the zero-shot model,
plain few-shot LoRA from scratch and the pool's unperturbed member alone (a LoRA meta-tuned without perturbation).

Pool: 3 members, (ε, γ) = (0, 0), (ε₁, 0.005), (ε₂, 0.01) with ε₁ < ε₂ the two attack radii (``RADII``), so that each
perturbed member is trained at one level the evaluation attacks with; ``--pool-steps`` episodes each of 2 shots + 2
queries per class, r 8 on q_proj, v_proj, lr 1e-4. Target: ``--shots`` support examples per class drawn by the
seed (3 seeds of episode sampling), then a MAP head and the adapter fitted ``--fit-steps`` steps on them (the adapter
from scratch, from the unperturbed member, or from AMT's merge of the top 2 members). Scored on the first
``--eval-limit`` SST-2 validation sentences, clean and under PGD on the input embeddings (3 steps) at two ε chosen
first on SST-2 training examples (``RADII``). Each
cell runs in a fresh process and keeps a ``cell.json``. Writes ``benchmarks/results/amt.{json,md}``.

    python benchmarks/amt.py
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
    run_worker,
    save_cell,
    write_results,
)

SOURCES = ["boolq", "obqa", "arc_e"]
TARGET = "sst2"
# radii tried on training examples; the two kept are the largest at which the zero-shot model keeps 3/4 and 1/2 of
# its clean accuracy there (the evaluation split never chooses them)
RADII = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02]
METHODS = {"few-shot LoRA": "scratch", "meta-tuned LoRA (ε = γ = 0)": "plain", "AMT (merged top 2)": "amt"}
KEYS = ("cls/acc", "cal/ece", "cls/nll")


def scored(args, backbone, head, task) -> dict:
    """Clean metrics and, for each ε of ``args.epsilons``, robust metrics of ``head`` on the target's first
    examples."""
    import numpy as np

    from polar_vbll.engine.attack import AttackMethod, EmbeddingAttack
    from polar_vbll.engine.inference import predict
    from polar_vbll.metrics import classification_metrics

    items = task.load(task.eval_split)[: args.eval_limit]
    labels = np.array([item.answer for item in items])
    out = {}
    for epsilon in [0.0, *args.epsilons]:
        attack = EmbeddingAttack(AttackMethod.PGD, epsilon, 3) if epsilon else None
        probs = predict(backbone, head, task, items, 32, 256, attack=attack)["probs"]
        metrics = classification_metrics(probs, labels)
        out[str(epsilon)] = {k: metrics[k] for k in KEYS}
    return out


def worker(args, cell: str) -> dict:
    from polar_vbll.amt.adapt import MergeOptions, adapt
    from polar_vbll.amt.pool import PoolConfig, build_pool
    from polar_vbll.data import get_task
    from polar_vbll.engine import fit
    from polar_vbll.engine.inference import zero_shot_head
    from polar_vbll.models import load_backbone
    from polar_vbll.models.precision import resolved_name

    runs, start = Path(args.runs), time.perf_counter()
    if cell == "pool":
        config = PoolConfig(
            sources=SOURCES, epsilons=[0.0, *args.epsilons], gammas=[0.0, 0.005, 0.01][: len(args.epsilons) + 1],
            steps=args.pool_steps, shots=2, queries=2, precision=args.precision,
        )  # fmt: skip
        pool = build_pool(config, runs / "pool", progress=False)
        result = {"members": pool.log}
    elif cell == "radii":
        result = radii(args)
    elif cell == "zero-shot":
        backbone = load_backbone("smollm2-135m")
        backbone.set_precision(resolved_name(args.precision))
        task = get_task(TARGET)
        result = {"metrics": scored(args, backbone, zero_shot_head(backbone, task), task)}
    else:
        method, seed = cell.rsplit("|", 1)
        options: dict = {"adapter": {"method": "lora", "r": 8, "alpha": 16.0}}
        if METHODS[method] != "scratch":
            merge = MergeOptions(candidates=(0,), top_k=1) if METHODS[method] == "plain" else MergeOptions()
            record = adapt(runs / "pool", TARGET, runs / "merged" / f"{METHODS[method]}-{seed}", args.shots,
                           int(seed), merge)  # fmt: skip
            options = {
                "adapter": record["adapter"],
                "adapter_init": str(runs / "merged" / f"{METHODS[method]}-{seed}" / "adapter"),
            }
        run = fit(
            out=runs / "fits" / f"{METHODS[method]}-{seed}", overwrite=True, progress=False, task=TARGET, uq="map",
            train_shots=args.shots, seed=int(seed), steps=args.fit_steps, batch_size=2 * args.shots,
            lr_adapter=1e-4, precision=args.precision, eval_limit=args.eval_limit, zero_shot=False, **options,
        )  # fmt: skip
        result = {"metrics": scored(args, run.backbone, run.head, run.task)}
    result["wall_s"] = time.perf_counter() - start
    return result


def radii(args) -> dict:
    """The zero-shot model's accuracy on 64 seeded SST-2 training examples at every radius of ``RADII``, and the two
    radii kept (see ``RADII``)."""
    import numpy as np
    import torch

    from polar_vbll.data import get_task
    from polar_vbll.engine.attack import AttackMethod, EmbeddingAttack
    from polar_vbll.engine.inference import predict, zero_shot_head
    from polar_vbll.models import load_backbone
    from polar_vbll.models.precision import resolved_name

    backbone = load_backbone("smollm2-135m")
    backbone.set_precision(resolved_name(args.precision))
    task = get_task(TARGET)
    train = task.load("train")
    items = [train[i] for i in torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:64].tolist()]
    labels, head = np.array([item.answer for item in items]), zero_shot_head(backbone, task)
    accuracy = {}
    for epsilon in [0.0, *RADII]:
        attack = EmbeddingAttack(AttackMethod.PGD, epsilon, 3) if epsilon else None
        probs = predict(backbone, head, task, items, 32, 256, attack=attack)["probs"]
        accuracy[str(epsilon)] = float((probs.argmax(1) == labels).mean())
    clean = accuracy["0.0"]
    kept = [max([e for e in RADII if accuracy[str(e)] >= share * clean] or [RADII[0]]) for share in (0.75, 0.5)]
    return {"accuracy": accuracy, "epsilons": sorted(set(kept))}


def markdown(data: dict) -> list[str]:
    lines = [
        "# AMT on SmolLM2-135M (dequantized 4-bit GGUF): pool on BoolQ + OBQA + ARC-E, few-shot SST-2",
        "",
        f"Pool: one member per robustness level (ε, γ) below, {data['pool_steps']} episodes each; target "
        f"SST-2 with {data['shots']} support examples per class (seeds {', '.join(map(str, data['seeds']))}), "
        f"{data['fit_steps']} few-shot steps (MAP head, adapter lr 1e-4), {data['precision']}; the first "
        f"{data['eval_limit']} validation sentences, clean and under 3-step PGD on the input embeddings. Means over "
        "the seeds (± standard deviation where there are several).",
    ]
    epsilons = data["cells"].get("radii", {}).get("epsilons", [])
    if epsilons:
        tried = ", ".join(f"{e} → {a:.2f}" for e, a in data["cells"]["radii"]["accuracy"].items())
        chosen = " and ".join(map(str, epsilons))
        lines += [
            "",
            f"Radii, chosen on 64 SST-2 training examples (zero-shot accuracy at each ε: {tried}): the largest keeping "
            f"3/4 and 1/2 of the clean accuracy, {chosen}.",
        ]
    lines += [
        "",
        "| method | seeds | ACC | ECE | NLL | " + " | ".join(f"robust ACC / ECE, ε {e}" for e in epsilons) + " |",
        "|---|---|---|---|---|" + "---|" * len(epsilons),
    ]

    def mean(values: list[float]) -> str:
        return f"{statistics.mean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")

    rows = {"zero-shot": [data["cells"]["zero-shot"]]} if "zero-shot" in data["cells"] else {}
    for method in METHODS:
        cells = [data["cells"][f"{method}|{s}"] for s in data["seeds"] if f"{method}|{s}" in data["cells"]]
        if cells:
            rows[method] = cells
    for method, cells in rows.items():
        clean = [c["metrics"]["0.0"] for c in cells]
        texts = [mean([m[k] for m in clean]) for k in KEYS]
        for epsilon in epsilons:
            attacked = [c["metrics"][str(epsilon)] for c in cells]
            texts.append(f"{mean([m['cls/acc'] for m in attacked])} / {mean([m['cal/ece'] for m in attacked])}")
        seeds = "—" if method == "zero-shot" else str(len(cells))
        lines.append(f"| {method} | {seeds} | " + " | ".join(texts) + " |")
    pool = data["cells"].get("pool")
    if pool:
        members = ", ".join(
            f"(ε {m['epsilon']}, γ {m['gamma']}): query accuracy {m['query_acc_last_fifth']:.3f}, "
            f"{m['train_s'] / 60:.1f} min"
            for m in pool["members"]
        )
        lines += ["", f"Pool members (meta-tuning, last fifth of the episodes): {members}."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--pool-steps", type=int, default=60)
    parser.add_argument("--fit-steps", type=int, default=20)
    parser.add_argument("--eval-limit", type=int, default=300)
    parser.add_argument("--runs", default="runs/amt", help="run folders (default %(default)s)")
    parser.add_argument("--epsilons", nargs="+", type=float, default=[], help=argparse.SUPPRESS)
    add_precision_argument(parser, "every pass")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        cell = worker(args, args.worker)
        print(json.dumps(cell))
        return
    from polar_vbll.models.precision import resolved_name
    from polar_vbll.outputs import OutputKind, prepare_output

    flags = [f"--shots={args.shots}", f"--pool-steps={args.pool_steps}", f"--fit-steps={args.fit_steps}"]
    flags += [f"--eval-limit={args.eval_limit}", f"--runs={args.runs}", f"--precision={args.precision}"]
    settings = {"shots": args.shots, "pool_steps": args.pool_steps, "fit_steps": args.fit_steps}
    settings |= {"eval_limit": args.eval_limit, "precision": resolved_name(args.precision)}
    path = RESULTS / "amt.json"
    data = {**settings, "seeds": args.seeds, "cells": recorded_cells(path, settings)}
    cells = ["radii", "pool", "zero-shot", *(f"{m}|{s}" for s in args.seeds for m in METHODS)]
    for cell in cells:
        if cell != "radii" and "--epsilons" not in flags:  # every scored cell uses the radii chosen first
            flags += ["--epsilons", *map(str, data["cells"]["radii"]["epsilons"])]
        folder = Path(args.runs) / "cells" / cell.replace("|", "-").replace(" ", "_")
        if (folder / "cell.json").exists():
            data["cells"][cell] = json.loads((folder / "cell.json").read_text())
        elif cell not in data["cells"]:
            print(f"{cell} ...", flush=True)
            data["cells"][cell] = run_worker(__file__, *flags, "--worker", cell)
            prepare_output(folder, OutputKind.EVALUATION)
            save_cell(folder, data["cells"][cell])
            print(f"{cell}: {json.dumps(data['cells'][cell])}", flush=True)
        command = shlex.join(["python", "benchmarks/amt.py", *sys.argv[1:]])
        write_results(RESULTS / "amt", data, markdown(data), machine_info(), command)


if __name__ == "__main__":
    main()
