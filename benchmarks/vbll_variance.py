"""Where a VBLL head's logit variance comes from: its weights (φᵀSφ, epistemic) or its logit noise (σ², aleatoric),
on the run's own evaluation split and on shifted sets, next to the feature length ‖φ‖².

For each run (a folder written by ``fit``; ``zero-shot`` = the embedded model with an untrained head of vbll's
initialization) and each task: medians over the examples of ‖φ‖², of φᵀS_kφ (mean over the classes), of the share
φᵀSφ / (φᵀSφ + σ²) that the weights have in the logit variance, and what φᵀSφ would be at vbll's initialization
(‖φ‖²/d²) and at the prior (s₀‖φ‖²). Writes ``benchmarks/results/vbll_variance.{json,md}``.

    python benchmarks/vbll_variance.py zero-shot:sst2 zero-shot:obqa \\
        runs/calibration/cpu-quick/obqa/seed0/PoLAR-VBLL runs/calibration/cpu-quick/obqa/seed0/PoLAR-VBLL_LA \\
        --ood mmlu_chem arc_c --limit 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, STOCHASTIC_VBLL, machine_info, write_results  # noqa: E402


def head_features(backbone, task, items, max_length: int, batch_size: int = 16) -> torch.Tensor:
    """φ(x) (N, d) of ``items`` under ``task``'s prompt."""
    from polar_vbll.data import encoded_batches

    features = torch.zeros(len(items), backbone.model.config.hidden_size)
    with torch.no_grad():
        for idx, batch in encoded_batches(backbone.tokenizer, task, items, max_length, batch_size):
            features[idx] = backbone.features(batch["input_ids"], batch["attention_mask"]).float()
    return features


def variance_parts(head, features: torch.Tensor) -> dict:
    """Medians over examples of ‖φ‖², φᵀSφ (mean over classes), the weights' share of the logit variance, and
    φᵀSφ at vbll's initialization (‖φ‖²/d²) and at the prior (s₀‖φ‖²)."""
    with torch.no_grad():
        squared = features.pow(2).sum(-1)
        weights = head.guide.quad_form(features).mean(-1)
        noise = head.noise_var().mean()
    d = features.shape[1]

    def median(x):
        return float(x.median())

    return {
        "n": len(features),
        "feature_sq_norm": median(squared),
        "weight_var": median(weights),
        "noise_var": float(noise),
        "weight_share": median(weights / (weights + noise)),
        "weight_var_at_vbll_init": median(squared / d**2),
        "weight_var_at_prior": median(head.prior_var * squared),
    }


def load(run: str):
    """(backbone, head, task, template, max_length) of a run folder, or of ``zero-shot:<task>`` (the head ``fit``
    would start from, in front of an untrained PoLAR adapter)."""
    from polar_vbll import FitConfig, load_run
    from polar_vbll.engine.build import build_components

    if run.startswith("zero-shot:"):
        config = FitConfig(task=run.split(":", 1)[1], adapter="polar", uq=STOCHASTIC_VBLL, max_length=256)
        backbone, task, head = build_components(config)
        return backbone, head, task, None, config.max_length
    result = load_run(run)
    if result.config.uq.method != "vbll":
        raise SystemExit(f"{run}: uq is {result.config.uq.method!r}, not vbll")
    return result.backbone, result.head, result.task, result.config.template, result.config.max_length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="VBLL run folders, or zero-shot:<task>")
    parser.add_argument("--ood", nargs="*", default=[], help="shifted tasks to score with each run's head")
    parser.add_argument("--limit", type=int, default=100, help="first N examples of each set (default %(default)s)")
    args = parser.parse_args()

    from dataclasses import replace

    from polar_vbll import get_task

    rows = []
    for run in args.runs:
        backbone, head, task, template, max_length = load(run)
        backbone.eval()
        for name in [task.name, *args.ood]:
            full = task if name == task.name else get_task(name, template)
            spec = replace(full, num_classes=task.num_classes)
            if spec.label_words() != task.label_words():
                continue  # another answer format (words vs letters): not a shift this head can score
            items = [i for i in full.load(full.eval_split) if len(i.choices) <= task.num_classes][: args.limit]
            parts = variance_parts(head, head_features(backbone, spec, items, max_length))
            rows.append({"run": run, "task": name, "split": spec.eval_split, **parts})
            print(f"{run} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in parts.items()), flush=True)
    machine = machine_info()
    command = "python benchmarks/vbll_variance.py " + " ".join(args.runs)
    command += (" --ood " + " ".join(args.ood) if args.ood else "") + f" --limit {args.limit}"
    lines = [
        "# Where the VBLL head's logit variance comes from (SmolLM2-135M, dequantized 4-bit GGUF)",
        "",
        "Medians over the first examples of each set's evaluation split (at most as many choices as the run has "
        "classes). φᵀSφ: the weights' logit variance (mean over classes, epistemic); σ²: the logit noise "
        "(aleatoric); share: φᵀSφ / (φᵀSφ + σ²). The last two columns are what φᵀSφ would be with the posterior "
        "at vbll's initialization (standard deviations 1/d) and at the prior s₀ I. `zero-shot:<task>` is the "
        "embedded model with an untrained head.",
        "",
        "| run | set | n | ‖φ‖² | φᵀSφ | σ² | share | at vbll init | at prior |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['task']} ({r['split']}) | {r['n']} | {r['feature_sq_norm']:.0f} | "
            f"{r['weight_var']:.4f} | {r['noise_var']:.4f} | {r['weight_share']:.2f} | "
            f"{r['weight_var_at_vbll_init']:.4f} | {r['weight_var_at_prior']:.2f} |"
        )
    write_results(RESULTS / "vbll_variance", {"rows": rows}, lines, machine, command)


if __name__ == "__main__":
    main()
