"""PoLAR-VBLL's exact head phase against its stochastic one and the baselines, with paired bootstrap intervals.

Every method trains with the same recipe, data and data order (the ``make demo`` recipe by default: 100 steps ×
batch 16, r 8 on q_proj, v_proj, ``--precision auto``), holding the same ``calibration_size`` training examples out
(TS fits its temperature there), and is scored on the first ``--eval-limit`` examples of the task's validation
split. Methods: MAP-LoRA, TS, LA (Laplace-LoRA), TFB, MCD, ENS, BLoB, ScalaBL, PoLAR-MAP, PoLAR-MAP + last-layer Laplace
(PoLAR's part without VBLL's), PoLAR-TFB, PoLAR-VBLL with the stochastic and with the exact head phase; TS, LA, TFB
and the last-layer Laplace refine the MAP run they start from. Per task: ACC / ECE / NLL and the mean epistemic
uncertainty (means over seeds), the exact phase's share of the training time, and 95 % paired bootstrap intervals of
the ECE and NLL differences against MAP-LoRA and against TS on the seeds' predictions pooled. Each cell runs in a
fresh process and keeps its probabilities in its run folder, so a rerun skips finished cells. Writes
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
from common import RESULTS, add_precision_argument, machine_info, run_worker, save_cell, write_results  # noqa: E402

# name: (adapter, uq options, the run it refines, refine's options); sources come first
METHODS = {
    "MAP-LoRA": ("lora", {"method": "map"}, None, {}),
    "TS": ("lora", {"method": "map"}, "MAP-LoRA", {"temperature_scaling": True}),
    "LA": ("lora", {"method": "map"}, "MAP-LoRA", {"laplace": True}),
    "TFB": ("lora", {"method": "map"}, "MAP-LoRA", {"tfb": True}),
    "MCD": ("lora", {"method": "mc_dropout"}, None, {}),
    "ENS": ("lora", {"method": "ensemble"}, None, {}),
    "BLoB": ("lora", {"method": "blob"}, None, {}),
    "ScalaBL": ("lora", {"method": "scalabl"}, None, {}),
    "PoLAR-MAP": ("polar", {"method": "map"}, None, {}),
    "PoLAR-MAP + LLLA": ("polar", {"method": "map"}, "PoLAR-MAP", {"laplace": True, "la_subset": "last_layer"}),
    "PoLAR-TFB": ("polar", {"method": "map"}, "PoLAR-MAP", {"tfb": True}),
    "PoLAR-VBLL (stochastic head)": ("polar", {"method": "vbll", "head_phase": "stochastic"}, None, {}),
    "PoLAR-VBLL (exact head)": ("polar", {"method": "vbll", "head_phase": "exact"}, None, {}),
}
REFERENCES = ("MAP-LoRA", "TS")
PROBS = RESULTS / "head_phase_probs.npz"  # each cell's (probs, labels), for the intervals
PAIR = ("probs", "labels")


def cell_dir(runs: Path, task: str, seed: int, method: str) -> Path:
    return runs / task / f"seed{seed}" / method.replace(" ", "").replace("(", "_").replace(")", "")


def worker(args, task: str, seed: int, method: str) -> dict:
    from polar_vbll.engine import fit, refine
    from polar_vbll.outputs import claim

    adapter, uq, source, refine_options = METHODS[method]
    out = cell_dir(Path(args.runs), task, seed, method)
    if source:
        result = refine(
            cell_dir(Path(args.runs), task, seed, source), out, overwrite=True, progress=False, **refine_options
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
    evaluation = result.evaluation
    claim(out, "probs.npz")  # in the run folder's marker: --overwrite removes it with the run
    np.savez(out / "probs.npz", probs=evaluation["probs"], labels=evaluation["labels"])
    cell = {
        "metrics": result.report["metrics"],
        "train_s": result.report["timings"]["train_s"],
        "head_phase_s": head_phase_seconds(out, result.report),
        "precision": result.config.precision,
    }
    save_cell(out, cell)
    return cell


def head_phase_seconds(run: Path, report: dict) -> float:
    """Seconds the exact head phases of ``run`` took (features and solves; 0 for other heads)."""
    logs = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    final = report.get("head_phase", {})
    return sum(e.get("head_features_s", 0) + e.get("head_solve_s", 0) for e in [*logs, final])


def selected(names: list[str] | None) -> list[str]:
    """``names`` (default: every method) with the runs they refine, in the table's order."""
    wanted = set(names or METHODS)
    wanted |= {METHODS[name][2] for name in wanted if METHODS[name][2]}
    return [name for name in METHODS if name in wanted]


def compared(method: str, ref: str) -> bool:
    """Whether the table shows ``method − ref`` (not a method against itself, nor the references twice)."""
    if method == ref:
        return False
    return not (method in REFERENCES and REFERENCES.index(method) > REFERENCES.index(ref))


def probs_key(task: str, seed: int | str, method: str, what: str) -> str:
    return f"{task}|{seed}|{method}|{what}"


def stored_probs() -> dict[str, np.ndarray]:
    """Every finished cell's evaluation probabilities and labels, kept beside the results (``PROBS``) so that the
    intervals can be recomputed when the run folders are gone."""
    if not PROBS.exists():
        return {}
    with np.load(PROBS) as data:  # arrays only: allow_pickle stays False
        return {key: data[key] for key in data.files}


def store_probs(store: dict, task: str, seed: int, method: str, folder: Path) -> None:
    """Add ``folder``'s probabilities to ``store`` and write it atomically."""
    import os

    with np.load(folder / "probs.npz") as cell:
        store[probs_key(task, seed, method, "probs")] = cell["probs"].astype(np.float32)
        store[probs_key(task, seed, method, "labels")] = cell["labels"].astype(np.int64)
    partial = PROBS.with_name(PROBS.stem + ".partial.npz")
    np.savez_compressed(partial, **store)
    os.replace(partial, PROBS)


def intervals(store: dict, task: str, seeds: list[int], recorded: dict) -> dict:
    """{method: {reference: {"seeds": [...], metric: interval}}} of the paired ECE and NLL differences on the
    predictions of the ``seeds`` both finished, pooled (seeds × examples). A ``recorded`` interval over more seeds
    than the stored probabilities allow (cells measured before they were stored) is kept."""
    from polar_vbll.metrics import ece, nll, paired_bootstrap

    def finished(method):
        return [seed for seed in seeds if probs_key(task, seed, method, "probs") in store]

    def pooled(method, shared):
        return tuple(np.concatenate([store[probs_key(task, s, method, what)] for s in shared]) for what in PAIR)

    out: dict = {}
    for method in METHODS:
        for ref in REFERENCES:
            shared = [seed for seed in finished(method) if seed in finished(ref)]
            before = recorded.get(method, {}).get(ref)
            if before and len(before.get("seeds", [])) > len(shared):
                out.setdefault(method, {})[ref] = before
                continue
            if not shared or not compared(method, ref):
                continue
            (probs, labels), (base_probs, base_labels) = pooled(method, shared), pooled(ref, shared)
            assert np.array_equal(labels, base_labels)
            out.setdefault(method, {})[ref] = {
                "seeds": shared,
                **{
                    name: paired_bootstrap(fn, probs, base_probs, labels)
                    for name, fn in (("cal/ece", ece), ("cls/nll", nll))
                },
            }
    return out


def summary_rows(seeds: dict, only: list[str] | None = None) -> list[str]:
    """Table rows: each method's means over its finished seeds (or over the seeds ``only``)."""
    rows = []
    for method in METHODS:
        done = [seeds[s][method] for s in seeds if method in seeds[s] and (only is None or s in only)]
        if not done:
            continue

        def mean(key, cells=done):
            return statistics.mean(c["metrics"][key] for c in cells)

        share = statistics.mean(c["head_phase_s"] / c["train_s"] for c in done)
        rows.append(
            f"| {method} | {len(done)} | {mean('cls/acc'):.4f} | {mean('cal/ece'):.4f} | {mean('cls/nll'):.4f} | "
            f"{mean('unc/epistemic_mean'):.4f} | {share:.2f} |"
        )
    return rows


def markdown(data: dict) -> list[str]:
    lines = [
        "# PoLAR-VBLL's exact head phase against the baselines (SmolLM2-135M, dequantized 4-bit GGUF)",
        "",
        f"Recipe: {data['steps']} steps × batch {data['batch_size']}, r 8 on q_proj, v_proj, lr 1e-3, precision "
        f"{data['precision']}; {data['calibration_size']} training examples held out of every run (TS fits its "
        f"temperature there); evaluation on the first {data['eval_limit']} validation examples. Exact head: the "
        "default options (a solve every 20 adapter steps and at the end, on 512 training features). MCD: dropout "
        "0.1, 10 passes; ENS: 3 LoRA members; BLoB, ScalaBL: 10 passes; LA: K-FAC over LoRA and head, prior "
        "precision by marginal likelihood on 512 training examples; PoLAR-MAP + LLLA: the same Laplace on the head "
        "only; TFB: σ searched on the held-out examples (at most 1 % of predictions changed), 10 passes. "
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
        lines += summary_rows(seeds)
        methods = {m for s in seeds for m in seeds[s]}
        common = [s for s in seeds if all(m in seeds[s] for m in methods)]
        if common and len(common) < len(seeds):
            lines += [
                "",
                f"Over the seeds every method has finished ({', '.join(common)}), the same columns:",
                "",
                "| method | seeds | ACC | ECE | NLL | mean epistemic | head phase ÷ training time |",
                "|---|---|---|---|---|---|---|",
                *summary_rows(seeds, common),
            ]
        found = data["intervals"].get(task, {})
        if found.get("methods"):
            lines += [
                "",
                "Differences on the predictions of the seeds both methods finished, pooled, with their 95 % intervals:",
                "",
                "| method − reference | seeds | ΔECE [95 %] | ΔNLL [95 %] |",
                "|---|---|---|---|",
            ]
        for method, refs in found.get("methods", {}).items():
            for ref, metrics in refs.items():
                cells = []
                for key in ("cal/ece", "cls/nll"):
                    i = metrics[key]
                    text = f"{i['diff']:+.4f} [{i['low']:+.4f}, {i['high']:+.4f}]"
                    cells.append(f"**{text}**" if i["low"] > 0 or i["high"] < 0 else text)
                shared = ", ".join(map(str, metrics.get("seeds", found.get("seeds", []))))
                lines.append(f"| {method} − {ref} | {shared} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def to_run(args, task: str, seed: int, cells: dict) -> list[str]:
    """The selected methods not yet recorded for (task, seed), and the recorded sources they refine whose run folder
    is gone (rebuilt), in the table's order; a recorded cell is measured again only when ``--rebuild`` names it."""
    wanted = [method for method in selected(args.methods) if method not in cells or method in (args.rebuild or [])]
    sources = {METHODS[method][2] for method in wanted if METHODS[method][2]}
    missing = {src for src in sources if not (cell_dir(Path(args.runs), task, seed, src) / "cell.json").exists()}
    return [method for method in METHODS if method in set(wanted) | missing]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-limit", type=int, default=1000)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), help="only these (and the runs they refine)")
    parser.add_argument(
        "--rebuild",
        nargs="+",
        choices=list(METHODS),
        help="measure these again even where recorded (their probabilities for the intervals); reports the change",
    )
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
        "model": args.model,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "eval_limit": args.eval_limit,
        "precision": resolved_name(args.precision),
        "calibration_size": FitConfig().calibration_size,
    }
    recorded.setdefault("model", "smollm2-135m")  # results written before the model was recorded
    same = all(recorded.get(k) == v for k, v in settings.items())
    data = {**settings, "cells": recorded.get("cells", {}) if same else {}, "intervals": {}}
    store = stored_probs()
    for task in args.tasks:
        for seed in args.seeds:
            cells = data["cells"].setdefault(task, {}).setdefault(str(seed), {})
            for method in to_run(args, task, seed, cells):
                folder = cell_dir(Path(args.runs), task, seed, method)
                if (folder / "cell.json").exists() and (folder / "probs.npz").exists():
                    cells[method] = json.loads((folder / "cell.json").read_text())
                else:
                    print(f"{task} seed {seed}: {method}", flush=True)
                    cell = run_worker(__file__, *flags, "--worker", task, str(seed), method)
                    if method in cells:  # rebuilt as the source of a refinement: does it reproduce the record?
                        before = cells[method]["metrics"]
                        diffs = [abs(v - before[k]) for k, v in cell["metrics"].items() if k in before]
                        cell["rebuilt_max_diff"] = max(diffs)
                        print(f"  rebuilt: largest metric difference {max(diffs):.2e}", flush=True)
                    cells[method] = cell
                store_probs(store, task, seed, method, folder)
                publish(data, store, recorded.get("intervals", {}) if same else {})
    publish(data, store, recorded.get("intervals", {}) if same else {})


def publish(data: dict, store: dict, recorded_intervals: dict) -> None:
    """Intervals over what is stored, then the results files (after every cell: a stopped run loses nothing)."""
    for task, seeds in data["cells"].items():
        numbers = sorted(int(seed) for seed in seeds)
        before = recorded_intervals.get(task, {}).get("methods", {})
        data["intervals"][task] = {"seeds": numbers, "methods": intervals(store, task, numbers, before)}
    write_results(RESULTS / "head_phase", data, markdown(data), machine_info(), reproduce_command(data))


def reproduce_command(data: dict) -> str:
    """One command that measures every recorded cell again (cells accumulate over invocations, so the last
    invocation's own command would reproduce only its part): all methods, on every recorded task and seed."""
    seeds = sorted({int(seed) for seeds in data["cells"].values() for seed in seeds})
    words = ["python", "benchmarks/head_phase.py", "--tasks", *data["cells"], "--seeds", *map(str, seeds)]
    defaults = {"steps": 100, "batch_size": 16, "eval_limit": 1000, "model": "smollm2-135m"}
    words += [f"--{k.replace('_', '-')}={data[k]}" for k, v in defaults.items() if data[k] != v]
    return shlex.join([*words, f"--precision={data['precision']}"])


if __name__ == "__main__":
    main()
