"""The calibration table: uncertainty methods × tasks on the embedded SmolLM2-135M, ACC / ECE / NLL (mean ± std
over seeds).

Every method trains with the same steps, batch, max length, seeds, data and data order (r = 8 on q_proj and
v_proj, plus the answer head); a seeded ``calibration_size`` of each training split is held out of every run, so the
post-hoc methods (temperature scaling, Laplace-LoRA, PoLAR-VBLL + Laplace) refine the run they start from
(``polar_vbll.refine``) instead of retraining. Each cell runs in a fresh process and is finished once its
``cell.json`` exists: a rerun skips finished cells, resumes a killed training from its last checkpoint and
restarts a killed refinement. Writes ``benchmarks/results/calibration_<profile>.{json,md}``.

    python benchmarks/calibration.py --profile cpu-quick            # ≈ 2.5 h on 2 CPU cores
    python benchmarks/calibration.py --profile cpu-full             # resumable across sessions
    python benchmarks/calibration.py --profile paper                # GPU machines
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, add_precision_argument, machine_info, machine_line, run_worker, save_cell  # noqa: E402

from polar_vbll.models.precision import resolved_name  # noqa: E402

BLOB_TASKS = ["wg_s", "arc_c", "arc_e", "wg_m", "obqa", "boolq"]  # the six tasks of the BLoB / PoLAR-VBLL protocol


@dataclass(frozen=True)
class Profile:
    tasks: list[str]
    steps: int
    batch_size: int
    max_length: int
    seeds: list[int]
    train_limit: int | None = field(metadata={"help": "first N training examples (after the held-out set)"})
    eval_limit: int | None = field(metadata={"help": "first N examples of the evaluation split"})
    calibration_size: int = 256
    laplace_samples: int = 512
    note: str = ""

    def epochs(self, n_train: int) -> float:
        return self.steps * self.batch_size / min(n_train, self.train_limit or n_train)


PROFILES = {
    # Several epochs over a small training subset: overconfidence, what the table is about, needs them.
    "cpu-quick": Profile(
        tasks=["sst2", "obqa", "wg_s", "boolq"],
        steps=80,
        batch_size=8,
        max_length=256,
        seeds=[0],
        train_limit=200,
        eval_limit=200,
        calibration_size=128,
        laplace_samples=128,
        note="a first look: 4 tasks, 1 seed; resumable (hours per precision: see the README)",
    ),
    "cpu-full": Profile(
        tasks=["sst2", *BLOB_TASKS],
        steps=200,
        batch_size=8,
        max_length=256,
        seeds=[0, 1, 2],
        train_limit=512,
        eval_limit=1000,
        calibration_size=256,
        laplace_samples=256,
        note="resumable across sessions (days on 2 CPU cores)",
    ),
    "paper": Profile(
        tasks=BLOB_TASKS,
        steps=5000,
        batch_size=4,
        max_length=300,
        seeds=[0, 1, 2],
        train_limit=None,
        eval_limit=None,
        note="the papers' budget, for GPU machines",
    ),
    "smoke": Profile(
        tasks=["sst2", "obqa"],
        steps=2,
        batch_size=2,
        max_length=64,
        seeds=[0],
        train_limit=8,
        eval_limit=8,
        calibration_size=8,
        laplace_samples=8,
        note="checks the script end to end in minutes; its numbers mean nothing",
    ),
}

# name: (adapter, uq, the method it refines, post-hoc steps, other FitConfig options); sources come first
METHODS = {
    "MLE": ("lora", "mle", None, {}, {}),
    "MAP": ("lora", "map", None, {}, {}),
    "MCD": ("lora", "mc_dropout", None, {}, {}),
    "ENS": ("lora", "ensemble", None, {}, {}),
    "LA": ("lora", "laplace", "MAP", {"laplace": True}, {}),
    "BLoB": ("lora", "blob", None, {}, {}),
    "ScalaBL": ("lora", "scalabl", None, {}, {}),
    "TS": ("lora", "temperature", "MAP", {"temperature_scaling": True}, {}),
    "TFB": ("lora", "tfb", "MAP", {"tfb": True}, {}),
    "PoLAR-VBLL": ("polar", "vbll", None, {}, {}),
    "PoLAR-VBLL exact head": ("polar", "vbll", None, {}, {"vbll": {"head_phase": "exact"}}),
    "PoLAR-VBLL + LA": ("polar", "vbll", "PoLAR-VBLL", {"laplace": True}, {}),
    "PoLAR-BLoB": ("polar", "blob", None, {}, {}),
}
# --ablations: what PoLAR-VBLL's numbers depend on (schedule, head covariance, optimizer, adapter)
ABLATIONS = {
    "PoLAR-VBLL joint": ("polar", "vbll", None, {}, {"alternate": False}),
    "PoLAR-VBLL diagonal": ("polar", "vbll", None, {}, {"vbll": {"covariance": "diagonal"}}),
    "PoLAR-VBLL landing": ("polar", "vbll", None, {}, {"optimizer": "landing"}),
    "LoRA-VBLL": ("lora", "vbll", None, {}, {}),
    "PoLAR-VBLL prior cov": ("polar", "vbll", None, {}, {"vbll": {"cov_init": "prior"}}),
    "PoLAR-VBLL head lr 1e-2": ("polar", "vbll", None, {}, {"lr_head": 1e-2}),
    "PoLAR-VBLL prior cov, head lr 1e-2": ("polar", "vbll", None, {}, {"vbll": {"cov_init": "prior"}, "lr_head": 1e-2}),
}
ALL = {**METHODS, **ABLATIONS}
METRICS = {"cls/acc": "ACC ↑", "cal/ece": "ECE ↓", "cls/nll": "NLL ↓"}


def run_name(profile: str, precision: str) -> str:
    """The name of a profile's results and run folders: ``cpu-quick`` in fp32, ``cpu-quick_bf16`` in bf16 (so a
    table made in one precision is never mixed with, or overwritten by, cells of the other)."""
    from polar_vbll.models.precision import resolved_name

    resolved = resolved_name(precision)
    return profile if resolved == "fp32" else f"{profile}_{resolved}"


def cell_dir(runs: Path, task: str, seed: int, method: str) -> Path:
    return runs / task / f"seed{seed}" / method.replace(" ", "").replace("+", "_")


def worker(profile: Profile, task: str, seed: int, method: str, runs: Path, model: str, precision: str) -> dict:
    from polar_vbll.engine import fit, refine

    adapter, uq, source, post_hoc, options = ALL[method]
    if uq == "vbll":  # the rows recorded with stochastic head steps keep them; "exact head" rows say so
        options = {**options, "vbll": {"head_phase": "stochastic", **options.get("vbll", {})}}
    out = cell_dir(runs, task, seed, method)
    if source:
        result = refine(cell_dir(runs, task, seed, source), out, overwrite=True, progress=False, **post_hoc)
    elif (out / "checkpoint").is_dir() and not (out / "report.json").exists():
        result = fit(out=out, resume=True, progress=False)
    else:
        result = fit(
            out=out,
            overwrite=True,
            progress=False,
            model=model,
            task=task,
            adapter=adapter,
            uq=uq,
            steps=profile.steps,
            batch_size=profile.batch_size,
            max_length=profile.max_length,
            seed=seed,
            train_limit=profile.train_limit,
            eval_limit=profile.eval_limit,
            calibration_holdout=True,
            calibration_size=profile.calibration_size,
            laplace_samples=profile.laplace_samples,
            precision=precision,
            **options,
        )
    return {"metrics": result.report["metrics"], "n": result.report["n"], "timings": result.report["timings"]}


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def summarize(cells: dict, profile: Profile) -> dict:
    """{task: {method: {metric: (mean, std), "seeds": k}}} over the finished seeds."""
    summary: dict = {}
    for task in profile.tasks:
        for method in ALL:
            done = [cells[key] for key in cells if key.startswith(f"{task}/") and key.endswith(f"/{method}")]
            if done:
                summary.setdefault(task, {})[method] = {
                    **{m: mean_std([c["metrics"][m] for c in done]) for m in METRICS},
                    "seeds": len(done),
                }
    return summary


def in_main_table(key: str) -> bool:
    """Whether the cell ``task/seed/method`` belongs to the main table (not an ablation)."""
    return key.rsplit("/", 1)[1] in METHODS


def cell_hours(cells: dict) -> dict[str, float]:
    """Hours of cell time, {"methods": main table, "ablations": the rest}."""
    hours = {"methods": 0.0, "ablations": 0.0}
    for key, cell in cells.items():
        hours["methods" if in_main_table(key) else "ablations"] += cell["wall_s"] / 3600
    return hours


def markdown(
    name: str,
    profile: Profile,
    summary: dict,
    total: int,
    done: int,
    hours: dict,
    command: str,
    machine,
    precision,
    machines: list[str] | None = None,
):
    def cell(entry, metric, best):
        if entry is None:
            return "pending"
        mean, std = entry[metric]
        text = f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")
        return f"**{text}**" if best else text

    tasks = ", ".join(profile.tasks)
    lines = [
        f"# Calibration of fine-tuning methods — profile `{name}` (SmolLM2-135M, dequantized 4-bit GGUF, {precision})",
        "",
        f"Profile `{name}` ({profile.note}): {profile.steps} steps × batch {profile.batch_size}, "
        f"max length {profile.max_length}, "
        f"seeds {profile.seeds}, training on "
        + (f"the first {profile.train_limit} examples" if profile.train_limit else "the whole training split")
        + f" after holding out {profile.calibration_size} for temperature scaling (every method trains on the same "
        f"data), evaluation on "
        + (f"the first {profile.eval_limit} examples of" if profile.eval_limit else "")
        + f" each task's validation split; tasks {tasks}. LoRA and PoLAR r = 8 on q_proj, v_proj (α = 16), lr 1e-3 "
        "for adapter and head, warm-up 6 % then linear decay. MCD: dropout 0.1, 10 passes; ENS: 3 LoRA members on "
        "one base; BLoB, ScalaBL: 10 passes; LA: K-FAC over LoRA and head, GLM predictive, prior precision by marginal "
        f"likelihood on {profile.laplace_samples} training examples; TFB: σ searched on the held-out examples (at "
        "most 1 % of predictions changed), 10 passes; TS, LA, TFB and PoLAR-VBLL + LA refine the MAP or PoLAR-VBLL "
        "run; PoLAR-VBLL exact head: the head solved on cached training features every 20 adapter steps and at the "
        "end instead of stochastic head steps. Accuracy is below the original bf16 model's: the weights are "
        "dequantized from 4-bit.",
        "",
        f"Cells finished: {done} of {total} ({hours['methods']:.2f} h of cell time"
        + (f"; ablations {hours['ablations']:.2f} h more" if hours["ablations"] else "")
        + "). Best mean per task in bold.",
        "",
    ]
    for metric, title in METRICS.items():
        lines += [f"## {title}", "", "| method | " + " | ".join(profile.tasks) + " |"]
        lines.append("|---|" + "---|" * len(profile.tasks))
        best = {}
        for task in profile.tasks:
            entries = {m: e[metric][0] for m, e in summary.get(task, {}).items() if m in METHODS}
            if entries:
                best[task] = (max if metric == "cls/acc" else min)(entries, key=entries.get)
        for method in METHODS:
            row = [cell(summary.get(task, {}).get(method), metric, best.get(task) == method) for task in profile.tasks]
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        lines.append("")
    ablated = [t for t in profile.tasks if any(m in summary.get(t, {}) for m in ABLATIONS)]
    if ablated:
        lines += [
            "## Ablations of PoLAR-VBLL (ACC / ECE / NLL)",
            "",
            "joint: adapter and head updated together every step instead of alternating (the adapter then gets "
            "every step, not every other); diagonal: diagonal instead of dense head covariance; landing: the "
            "landing optimizer instead of geoopt's Riemannian Adam; LoRA-VBLL: LoRA instead of PoLAR; prior cov: the "
            "head's posterior covariance starts at the prior s₀ I instead of vbll's standard deviations 1/d; head lr "
            "1e-2: ten times the head's learning rate (mean, covariance and noise).",
            "",
            "| run | " + " | ".join(ablated) + " |",
            "|---|" + "---|" * len(ablated),
        ]
        for method in ["MAP", "PoLAR-VBLL", *ABLATIONS]:
            row = []
            for task in ablated:
                entry = summary[task].get(method)
                row.append(" / ".join(f"{entry[m][0]:.3f}" for m in METRICS) if entry else "pending")
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        lines.append("")
    per_task = {t: profile.epochs(n) for t, n in _train_sizes(profile).items()}
    lines += [
        "Epochs over the training subset: " + ", ".join(f"{t} {e:.1f}" for t, e in per_task.items()) + ".",
        "",
        machine_line(machine),
        "",
        *(machines or []),
        f"Reproduce: `{command}`",
        "",
    ]
    return "\n".join(lines)


def cell_machines(cells: dict) -> list[str]:
    """A line naming the CPUs that measured the cells when there were several (the footer names the last one)."""
    counts = collections.Counter(cell["machine"] for cell in cells.values() if "machine" in cell)
    if len(counts) < 2:
        return []
    return ["Cells measured on: " + ", ".join(f"{cpu} {n}" for cpu, n in counts.most_common()) + ".", ""]


def _train_sizes(profile: Profile) -> dict[str, int]:
    from polar_vbll.data import get_task

    return {t: len(get_task(t).load("train")) - profile.calibration_size for t in profile.tasks}


def recorded_cells(name: str, profile: Profile, precision: str) -> dict:
    """The cells of ``benchmarks/results/calibration_<name>.json`` if it was written with this same profile and
    precision (results written before the precision option are fp32)."""
    path = RESULTS / f"calibration_{run_name(name, precision)}.json"
    if not path.exists():
        return {}
    recorded = json.loads(path.read_text())
    settings = {k: v for k, v in recorded["profile"].items() if k not in ("name", "note")}
    current = {k: v for k, v in asdict(profile).items() if k != "note"}
    same_precision = recorded.get("precision", "fp32") == resolved_name(precision)
    return recorded["cells"] if settings == current and same_precision else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=list(PROFILES), default="cpu-quick")
    parser.add_argument("--runs", help="cell folders (default runs/calibration/<profile>)")
    parser.add_argument("--model", default="smollm2-135m", help="backbone (default %(default)s)")
    parser.add_argument("--tasks", nargs="+", help="only these tasks of the profile")
    parser.add_argument("--methods", nargs="+", choices=list(ALL), help="only these methods")
    parser.add_argument("--ablations", action="store_true", help="also run the PoLAR-VBLL ablations")
    parser.add_argument(
        "--rebuild-runs",
        action="store_true",
        help="retrain selected cells recorded in the results whose run folder is missing here (ood.py needs the "
        "runs) and say whether they reproduce the recorded metrics",
    )
    add_precision_argument(parser, "every cell")
    parser.add_argument("--worker", nargs=3, metavar=("TASK", "SEED", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    runs = Path(args.runs or f"runs/calibration/{run_name(args.profile, args.precision)}")
    if args.worker:
        task, seed, method = args.worker
        print(json.dumps(worker(profile, task, int(seed), method, runs, args.model, args.precision)))
        return

    from tqdm.auto import tqdm

    tasks = args.tasks or profile.tasks
    methods = args.methods or list(METHODS) + (list(ABLATIONS) if args.ablations else [])
    keys = [f"{t}/{s}/{m}" for t in tasks for s in profile.seeds for m in methods]
    for key in keys:  # a refinement needs its source
        source = ALL[key.rsplit("/", 1)[1]][2]
        if source and key.rsplit("/", 1)[0] + f"/{source}" not in keys:
            raise SystemExit(f"{key} refines {source}: add --methods {source!r}")
    # every finished cell of the profile, also those outside this invocation's selection: first those recorded in
    # the committed results (the run folders are not committed), then those in the run folders
    cells = recorded_cells(args.profile, profile, args.precision)
    for path in sorted(runs.glob("*/seed*/*/cell.json")):
        entry = json.loads(path.read_text())
        cells[entry["key"]] = entry
    bar = tqdm(keys, desc=f"calibration {args.profile}")
    for key in bar:
        task, seed, method = key.split("/")
        folder = cell_dir(runs, task, int(seed), method)
        run_here = (folder / "cell.json").exists()
        if key in cells and (run_here or not args.rebuild_runs):
            continue
        recorded = cells.get(key)
        bar.set_postfix_str(key)
        start = time.perf_counter()
        flags = [
            f"--profile={args.profile}",
            f"--runs={runs}",
            f"--model={args.model}",
            f"--precision={args.precision}",
        ]
        result = run_worker(__file__, *flags, "--worker", task, seed, method)
        entry = {"key": key, "wall_s": time.perf_counter() - start, **result, "machine": machine_info()["cpu"]}
        if recorded:  # the table's cell time stays the first measurement's; the rebuild's is kept beside it
            entry["rebuild_wall_s"], entry["wall_s"] = entry["wall_s"], recorded["wall_s"]
        save_cell(folder, entry)
        cells[key] = entry
        write_results(args.profile, profile, cells, args.precision)  # after every cell: a killed session loses none
        m = result["metrics"]
        tqdm.write(
            f"{key}: acc {m['cls/acc']:.4f} ece {m['cal/ece']:.4f} nll {m['cls/nll']:.4f} "
            f"({time.perf_counter() - start:.0f} s)"
        )
        if recorded:
            worst = max(abs(recorded["metrics"][k] - m[k]) for k in METRICS)
            tqdm.write(f"  rebuilt: largest difference to the recorded ACC/ECE/NLL {worst:.2e}")
    print(write_results(args.profile, profile, cells, args.precision))


def write_results(name: str, profile: Profile, cells: dict, precision: str) -> str:
    """Write the results JSON and Markdown table of every finished cell; returns the table."""
    from polar_vbll.atomic import atomic_write_json, atomic_write_text

    summary = summarize(cells, profile)
    machine = machine_info()
    resolved = resolved_name(precision)
    command = f"python benchmarks/calibration.py --profile {name} --precision {resolved}"
    stem = run_name(name, precision)
    path = RESULTS / f"calibration_{stem}.json"
    # cells recorded before each kept its machine were measured on the one the results named then
    earlier = json.loads(path.read_text())["machine"]["cpu"] if path.exists() else machine["cpu"]
    cells = {key: {"machine": earlier, **cell} for key, cell in cells.items()}
    total = len(profile.tasks) * len(profile.seeds) * len(METHODS)
    hours = cell_hours(cells)
    atomic_write_json(
        RESULTS / f"calibration_{stem}.json",
        {
            "command": command,
            "precision": resolved,
            "profile": {"name": name, **asdict(profile)},
            "methods": {
                m: {"adapter": a, "uq": u, "refines": s, "post_hoc": p, "options": o}
                for m, (a, u, s, p, o) in ALL.items()
            },
            "machine": machine,
            "cell_hours": hours,
            "summary": summary,
            "cells": cells,
        },
    )
    done = sum(map(in_main_table, cells))
    text = markdown(name, profile, summary, total, done, hours, command, machine, resolved, cell_machines(cells))
    atomic_write_text(RESULTS / f"calibration_{stem}.md", text)
    return text


if __name__ == "__main__":
    main()
