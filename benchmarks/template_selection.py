"""Choose the default prompt template of the lettered multiple-choice tasks on a *training* split.

Scores every lettered template zero-shot on the first N training items of each task (never the evaluation
split, so the choice does not leak into reported figures) and writes
``benchmarks/results/template_selection.{json,md}``.

    python benchmarks/template_selection.py --tasks arc_e obqa --limit 500
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from polar_vbll import evaluate, get_task, load_backbone
from polar_vbll.data import TEMPLATES

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, write_results  # noqa: E402


def _mean(rows: list[dict], template: str, key: str) -> float:
    values = [row[key] for row in rows if row["template"] == template]
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", nargs="+", default=["arc_e", "obqa"])
    parser.add_argument("--limit", type=int, default=500)
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = load_backbone(args.model)
    templates = [name for name in TEMPLATES if TEMPLATES.get(name).labels == "letters"]
    rows = []
    for task in args.tasks:
        for name in templates:
            start = time.perf_counter()
            result = evaluate(backbone, get_task(task, name), "train", limit=args.limit, progress=False)
            rows.append(
                {
                    "task": task,
                    "split": "train",
                    "n": result.n,
                    "template": TEMPLATES.get(name).id,
                    **result.metrics,
                    "seconds": time.perf_counter() - start,
                }
            )
            print(rows[-1])
    command = (
        f"python benchmarks/template_selection.py --model {args.model} --tasks {' '.join(args.tasks)} "
        f"--limit {args.limit}"
    )
    chosen = min(
        templates,
        key=lambda name: (
            _mean(rows, TEMPLATES.get(name).id, "cls/nll"),
            -_mean(rows, TEMPLATES.get(name).id, "cls/acc"),
        ),
    )
    lines = [
        f"# Prompt template selection (zero-shot, training splits, first {args.limit} items)",
        "",
        f"Model: {backbone.name}. {backbone.note}.",
        "",
        "| task | template | n | cls/acc | cal/ece | cls/nll |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['task']} | `{r['template']}` | {r['n']} | {r['cls/acc']:.3f} | {r['cal/ece']:.3f} | {r['cls/nll']:.3f} |"
        for r in rows
    ]
    lines += [
        "",
        "Rule: the lowest mean NLL over these tasks (a proper scoring rule; accuracy differences of a few",
        f"points are within noise at n = {args.limit}) becomes the default of the lettered tasks.",
        f"Chosen: `{TEMPLATES.get(chosen).id}`.",
    ]
    data = {"model": backbone.describe(), "rows": rows, "chosen": TEMPLATES.get(chosen).id}
    write_results(RESULTS / "template_selection", data, lines, machine_info(), command)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
