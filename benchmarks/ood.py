"""The OOD table: every method trained on OBQA (the calibration benchmark's OBQA runs), evaluated under shift on
ARC-C, ARC-E, MMLU chemistry and MMLU physics: ACC / ECE / NLL there, and how well each criterion separates
OBQA validation (in-distribution, the positive class) from each shifted set: AUROC and FPR95.

With ``--train``, runs ``benchmarks/calibration.py --profile P --tasks obqa --rebuild-runs --methods ...`` first for
the methods not evaluated yet (and the runs they refine): it trains the OBQA cells that are missing, and retrains
those recorded in the calibration results whose run folder is not on this machine.
Each method is evaluated in a fresh process and reused once ``<cell>/ood/ood.json`` exists (or recorded in the
results with the same ``--limit``). Writes
``benchmarks/results/ood_<profile>.{json,md}``.

    python benchmarks/ood.py --profile cpu-quick --limit 100
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from calibration import METHODS, PROFILES, cell_dir, run_name  # noqa: E402
from common import RESULTS, add_precision_argument, footer, machine_info, run_worker  # noqa: E402

from polar_vbll.models.precision import resolved_name  # noqa: E402

ID_TASK = "obqa"
OOD_TASKS = ["arc_c", "arc_e", "mmlu_chem", "mmlu_phys"]
REFERENCE = "msp"  # a fixed criterion every method has, next to each method's best


def worker(run: Path, limit: int | None) -> dict:
    from polar_vbll.engine import evaluate_run
    from polar_vbll.outputs import claim

    if not (run / "ood").exists():  # (one written before this was claimed stays as it is)
        claim(run, "ood")  # in the run folder's marker: `fit --overwrite` of the run removes its OOD evaluation too
    report = evaluate_run(run, limit=limit, ood=OOD_TASKS, out=run / "ood", progress=False)
    return {
        "id": {"n": report["n"], "metrics": report["metrics"]},
        "ood": {
            name: {k: entry[k] for k in ("n", "n_total", "metrics", "detection", "best_criterion")}
            for name, entry in report["ood"].items()
        },
        "best_criterion": report["ood_best_criterion"],
    }


def training_needed(methods: list[str]) -> list[str]:
    """``methods`` and the runs they refine, in the calibration benchmark's order (a source trains first)."""
    sources = {METHODS[m][2] for m in methods} - {None}
    return [m for m in METHODS if m in methods or m in sources]


def forget(recorded: dict, methods: list[str], runs: Path, seed: int) -> dict:
    """The recorded rows without ``methods``, whose saved evaluations (``<cell>/ood/ood.json``) are deleted too."""
    for method in methods:
        (cell_dir(runs, ID_TASK, seed, method) / "ood" / "ood.json").unlink(missing_ok=True)
    return {m: row for m, row in recorded.items() if m not in methods}


def markdown(profile: str, limit, rows: dict, missing: list[str], command: str, machine: dict) -> str:
    first = next(iter(rows.values()), None)
    sizes = ", ".join(f"{name} {e['n']}/{e['n_total']}" for name, e in first["ood"].items()) if first else ""
    lines = [
        f"# OOD: trained on OBQA, shifted to ARC-C, ARC-E, MMLU chemistry / physics — profile `{profile}`",
        "",
        f"The OBQA runs of `benchmarks/results/calibration_{profile}.md` (same budget, seed 0). ID: the first "
        f"{limit or 'all'} OBQA validation questions "
        + (f"({first['id']['n']})" if first else "")
        + f"; OOD: the first {limit or 'all'} questions with at most 4 choices of each set (kept / first examined: "
        f"{sizes}). ID is the positive class; AUROC 0.5 = no separation, FPR95 = fraction of OOD questions "
        "scored at least as in-distribution as 95 % of the ID ones. *Best criterion*: the method's criterion with "
        "the highest mean AUROC over the four sets, chosen on these same sets (optimistic); MSP is shown for every "
        "method as a fixed reference. SmolLM2-135M weights dequantized from 4-bit.",
        "",
        "## Accuracy / ECE / NLL under shift",
        "",
        "| method | OBQA (ID) | " + " | ".join(OOD_TASKS) + " |",
        "|---|---|" + "---|" * len(OOD_TASKS),
    ]

    def triple(metrics):
        return f"{metrics['cls/acc']:.3f} / {metrics['cal/ece']:.3f} / {metrics['cls/nll']:.3f}"

    for method, row in rows.items():
        shifted = [triple(row["ood"][t]["metrics"]) for t in OOD_TASKS]
        lines.append(f"| {method} | {triple(row['id']['metrics'])} | " + " | ".join(shifted) + " |")
    lines += [
        "",
        "## Detection: AUROC ↑ (FPR95 ↓) per OOD set",
        "",
        "| method | criterion | " + " | ".join(OOD_TASKS) + " | mean AUROC |",
        "|---|---|" + "---|" * (len(OOD_TASKS) + 1),
    ]
    for method, row in rows.items():
        for criterion in dict.fromkeys([row["best_criterion"], REFERENCE]):
            det = [row["ood"][t]["detection"][criterion] for t in OOD_TASKS]
            label = criterion + (" (best)" if criterion == row["best_criterion"] else "")
            cells = [f"{d['ood/auroc']:.3f} ({d['ood/fpr95']:.2f})" for d in det]
            mean = statistics.mean(d["ood/auroc"] for d in det)
            lines.append(f"| {method} | {label} | " + " | ".join(cells) + f" | {mean:.3f} |")
    lines += [
        "",
        "## Epistemic uncertainty in distribution and under shift",
        "",
        "Mean epistemic uncertainty (the mutual information between the prediction and the posterior sample, nats) "
        "on each set, the mean ratio OOD ÷ ID, and the AUROC of mutual information as the OOD score (methods whose "
        "samples differ).",
        "",
        "| method | OBQA (ID) | " + " | ".join(OOD_TASKS) + " | OOD ÷ ID | MI AUROC, mean |",
        "|---|---|" + "---|" * (len(OOD_TASKS) + 2),
    ]
    for method, row in rows.items():
        inside = row["id"]["metrics"]["unc/epistemic_mean"]
        outside = [row["ood"][t]["metrics"]["unc/epistemic_mean"] for t in OOD_TASKS]
        if inside <= 1e-6 and max(outside) <= 1e-6:
            continue  # a point estimate: no epistemic part
        mi = [row["ood"][t]["detection"].get("mutual_info") for t in OOD_TASKS]
        auroc = f"{statistics.mean(d['ood/auroc'] for d in mi):.3f}" if all(mi) else "n/a"
        ratio = statistics.mean(outside) / inside if inside > 0 else float("inf")
        lines.append(
            f"| {method} | {inside:.4f} | " + " | ".join(f"{v:.4f}" for v in outside) + f" | {ratio:.2f} | {auroc} |"
        )
    if missing:
        lines += ["", "Pending (not evaluated yet): " + ", ".join(missing) + "."]
    counts = collections.Counter(row["machine"] for row in rows.values() if "machine" in row)
    if len(counts) > 1:
        lines += ["", "Rows measured on: " + ", ".join(f"{cpu} {n}" for cpu, n in counts.most_common()) + "."]
    lines += footer(machine, command)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=list(PROFILES), default="cpu-quick")
    parser.add_argument("--runs", help="the calibration benchmark's cell folders (default runs/calibration/<name>)")
    add_precision_argument(parser, "the calibration runs it evaluates")
    parser.add_argument("--limit", type=int, help="first N examples of the ID set and of each OOD set")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), help="evaluate only these (the table keeps all)")
    parser.add_argument("--train", action="store_true", help="train the missing OBQA runs first")
    parser.add_argument(
        "--reevaluate",
        action="store_true",
        help="evaluate the --methods again although they are recorded (after a change in how they score)",
    )
    parser.add_argument("--no-run", action="store_true", help="only write the table of the methods evaluated so far")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker), args.limit)))
        return

    from tqdm.auto import tqdm

    from polar_vbll.atomic import atomic_write_json, atomic_write_text
    from polar_vbll.outputs import claim

    name = run_name(args.profile, args.precision)
    runs = Path(args.runs or f"runs/calibration/{name}")
    seed = PROFILES[args.profile].seeds[0]
    results = RESULTS / f"ood_{name}.json"
    previous = json.loads(results.read_text()) if results.exists() else {}
    recorded = previous.get("rows", {}) if previous.get("limit") == args.limit else {}  # the runs aren't committed

    selected = args.methods or list(METHODS)
    if args.reevaluate:
        if not args.methods:
            raise SystemExit("--reevaluate needs --methods")
        recorded = forget(recorded, selected, runs, seed)

    def evaluated(method: str) -> bool:
        return method in recorded or (cell_dir(runs, ID_TASK, seed, method) / "ood" / "ood.json").exists()

    if args.train:
        needed = training_needed([m for m in selected if not evaluated(m)])
        if needed:
            calibration = str(Path(__file__).parent / "calibration.py")
            flags = [f"--profile={args.profile}", f"--runs={runs}", f"--precision={args.precision}", "--rebuild-runs"]
            flags += ["--tasks", ID_TASK]
            subprocess.run([sys.executable, calibration, *flags, "--methods", *needed], check=True)
    rows, missing, measured_now = {}, [], False
    for method in tqdm(METHODS, desc=f"ood {args.profile}"):
        run = cell_dir(runs, ID_TASK, seed, method)
        done = run / "ood" / "ood.json"
        if done.exists() or method in recorded:
            rows[method] = json.loads(done.read_text()) if done.exists() else recorded[method]
            continue
        if args.no_run or method not in selected or not (run / "cell.json").exists():
            missing.append(method)
            continue
        start = time.perf_counter()
        flags = [f"--profile={args.profile}", "--worker", str(run)] + ([f"--limit={args.limit}"] if args.limit else [])
        rows[method] = {**run_worker(__file__, *flags), "wall_s": time.perf_counter() - start}
        rows[method]["machine"] = machine_info()["cpu"]
        measured_now = True
        claim(done.parent, done.name)
        atomic_write_json(done, rows[method])
        best = rows[method]["best_criterion"]
        mean = statistics.mean(rows[method]["ood"][t]["detection"][best]["ood/auroc"] for t in OOD_TASKS)
        tqdm.write(f"{method}: best criterion {best}, mean AUROC {mean:.3f} ({rows[method]['wall_s']:.0f} s)")
    # a table rewritten from recorded rows keeps the machine that measured them; rows recorded before each kept
    # its machine were measured on the one the results named then
    earlier = previous.get("machine", {}).get("cpu")
    rows = {method: {"machine": earlier, **row} if earlier else row for method, row in rows.items()}
    machine = machine_info() if measured_now or "machine" not in previous else previous["machine"]
    command = f"python benchmarks/ood.py --profile {args.profile} --precision {resolved_name(args.precision)}"
    command += f" --limit {args.limit}" if args.limit else ""
    atomic_write_json(
        results,
        {"command": command, "profile": args.profile, "limit": args.limit, "machine": machine, "rows": rows},
    )
    text = markdown(name, args.limit, rows, missing, command, machine)
    atomic_write_text(RESULTS / f"ood_{name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
