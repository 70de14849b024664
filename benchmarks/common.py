"""Shared by the benchmark scripts: machine and package facts for the JSON results, fresh-process workers."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PACKAGES = ("torch", "transformers", "pyro-ppl", "geoopt", "peft", "numpy", "polar-vbll")


def machine_info() -> dict:
    """Platform, CPU model and count, GPU (if any) and package versions."""
    import torch

    cpu = platform.processor()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": versions,
    }


def machine_line(machine: dict) -> str:
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    return f"Machine: {machine['cpu']} ({machine['cpus']} CPUs{gpu}), torch {machine['packages']['torch']}."


def footer(machine: dict, command: str) -> list[str]:
    """The closing lines of every results table: the machine and the command that reproduces it."""
    return ["", machine_line(machine), "", f"Reproduce: `{command}`", ""]


def write_results(stem: Path, data: dict, lines: list[str], machine: dict, command: str) -> str:
    """``stem.json`` (command, machine and ``data``) and ``stem.md`` (``lines`` and the footer), both atomically;
    prints and returns the Markdown."""
    from polar_vbll.atomic import atomic_write_json, atomic_write_text

    atomic_write_json(Path(f"{stem}.json"), {"command": command, "machine": machine, **data})
    text = "\n".join(lines + footer(machine, command))
    atomic_write_text(Path(f"{stem}.md"), text)
    print(text)
    return text


# the VBLL head as the benchmarks recorded before the exact head phase became the default
STOCHASTIC_VBLL = {"method": "vbll", "head_phase": "stochastic"}


def merged_runs(path: Path, latest: dict, references: set[str], selection: str) -> list[dict]:
    """The invocations recorded in ``path`` (each {command, machine, rows}), less the rows ``latest`` measured again,
    then ``latest``: a run of some rows adds them to the table instead of replacing it. A kept run keeps its
    ``references`` rows, so every ratio stays a ratio within one invocation; runs whose command differs from
    ``latest``'s before the ``selection`` flag (other steps, batches, ...) are dropped."""
    recorded = json.loads(path.read_text()) if path.exists() else {}
    runs = recorded.get("runs") or ([{k: recorded[k] for k in ("command", "machine", "rows")}] if recorded else [])
    settings = latest["command"].split(f" {selection}")[0]
    kept = []
    for run in (r for r in runs if r["command"].split(f" {selection}")[0] == settings):
        rows = {n: r for n, r in run["rows"].items() if n not in latest["rows"] or n in references}
        if set(rows) - references:
            kept.append({**run, "rows": rows})
    return [*kept, latest]


def runs_footer(runs: list[dict]) -> list[str]:
    """Below a table merged from several runs: each run's machine and command (empty for one run)."""
    if len(runs) < 2:
        return []
    lines = ["", "Runs (each with its own reference rows; compare ratios, not seconds, across runs):", ""]
    cpu = lambda m: m.get("cpu") or m.get("platform")  # noqa: E731  (older results recorded the platform only)
    return lines + [f"{n}. {cpu(run['machine'])}: `{run['command']}`" for n, run in enumerate(runs, 1)]


def add_precision_argument(parser, what: str) -> None:
    """``--precision fp32|bf16|auto`` (default auto: bf16 where the CPU has it) of a benchmark; ``what`` it sets."""
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        default="auto",
        help=f"compute precision of {what} (default %(default)s); a bf16 profile's results and runs are named "
        "<profile>_bf16",
    )


def recorded_cells(path: Path, settings: dict) -> dict:
    """The cells of the results file ``path`` when it was written with the same ``settings``, else none: a rerun
    of the same settings continues the table, other settings start a new one."""
    recorded = json.loads(path.read_text()) if path.exists() else {}
    return recorded.get("cells", {}) if all(recorded.get(k) == v for k, v in settings.items()) else {}


def resumable_fit(out: Path, **options):
    """``fit`` into ``out``: a killed fit there goes on from its checkpoint, anything else is trained anew."""
    from polar_vbll.engine import fit

    if (out / "checkpoint").is_dir() and not (out / "report.json").exists():
        return fit(out=out, resume=True, progress=False)
    return fit(out=out, overwrite=True, progress=False, **options)


def save_cell(run: Path, cell: dict, *others: str) -> None:
    """Write a finished cell's ``cell.json`` into its run folder (a rerun skips the cell; the run folders are not
    committed), claimed with ``others`` in the folder's marker so that ``--overwrite`` removes them with the run."""
    from polar_vbll.atomic import atomic_write_json
    from polar_vbll.outputs import claim

    claim(run, "cell.json", *others)
    atomic_write_json(run / "cell.json", cell)


def run_worker(script: str, *args: str) -> dict:
    """Run ``script *args`` in a fresh Python process; its last stdout line is the JSON result."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def timed_fit(**options):
    """``fit(**options)`` and the wall time of each step: (result, [seconds of step 2, 3, ...])."""
    import time

    from polar_vbll.engine import fit

    stamps: list[float] = []
    result = fit(progress=False, callbacks=[lambda step, logs: stamps.append(time.perf_counter())], **options)
    return result, [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def inference_times(result, n_batches: int, batch_size: int = 32, n_samples: int = 100) -> list[float]:
    """Wall times of ``head.predict_batch`` (``n_samples`` logit samples) on the first evaluation batches of the run's
    task, after one untimed warm-up batch."""
    import time

    import torch

    from polar_vbll.data import encoded_batches

    backbone, head, task = result.backbone, result.head, result.task
    items = task.load(task.eval_split)[: n_batches * batch_size]
    batches = [b for _, b in encoded_batches(backbone.tokenizer, task, items, result.config.max_length, batch_size)]
    generator = torch.Generator().manual_seed(0)
    times = []
    for batch in [batches[0], *batches]:
        start = time.perf_counter()
        head.predict_batch(backbone, batch, n_samples, generator)
        times.append(time.perf_counter() - start)
    return times[1:]
