"""Inference cost of the VBLL predictive against a MAP forward on the same batch (embedded SmolLM2-135M).

Both run one backbone pass over the same batch; VBLL adds its Gaussian logits and a 1000-sample Monte-Carlo
softmax (and the closed-form probit variant is timed too). Target: VBLL ÷ MAP ≤ 1.05. Medians of ``--repeats``.
Writes ``benchmarks/results/vbll_inference.{json,md}``.

    python benchmarks/vbll_inference.py --batch-size 32 --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from polar_vbll import get_task, load_backbone
from polar_vbll.data import encoded_batches, label_token_ids
from polar_vbll.uq import PointHead, VBLLConfig, VBLLHead

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = load_backbone("smollm2-135m")
    task = get_task(args.task)
    init = backbone.lm_head.weight.detach()[label_token_ids(backbone.tokenizer, task.label_words())].clone()
    heads = {
        "map": PointHead(init, 1e-5),
        "vbll-mc1000": VBLLHead(init, 1000, VBLLConfig(predictive="mc", n_samples=1000)),
        "vbll-probit": VBLLHead(init, 1000, VBLLConfig(predictive="probit")),
    }
    items = task.load(task.eval_split)[: args.batch_size]
    _, batch = next(encoded_batches(backbone.tokenizer, task, items, batch_size=args.batch_size))
    times = {name: [] for name in heads}
    with torch.inference_mode():
        for repeat in range(args.repeats + 2):  # the first two are warm-up
            for name, head in heads.items():  # interleaved, so drifts in machine speed hit all alike
                start = time.perf_counter()
                features = backbone.features(batch["input_ids"], batch["attention_mask"])
                head.predict_probs(features, batch["choice_mask"])
                if repeat >= 2:
                    times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratios = {name: medians[name] / medians["map"] for name in heads}
    command = (
        f"python benchmarks/vbll_inference.py --task {args.task} --batch-size {args.batch_size} "
        f"--repeats {args.repeats}"
    )
    data = {
        "times_s": times,
        "median_s": medians,
        "ratio_to_map": ratios,
        "target": 1.05,
        "met": ratios["vbll-mc1000"] <= 1.05,
        "tokens": int(batch["attention_mask"].sum()),
    }
    lines = [
        "# VBLL predictive vs MAP forward (one evaluation batch, SmolLM2-135M, CPU)",
        "",
        f"{args.batch_size} {args.task} prompts ({int(batch['attention_mask'].sum())} tokens), backbone pass "
        f"included, median of {args.repeats} interleaved repeats.",
        "",
        "| head | median s | ÷ MAP |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {medians[name]:.4f} | {ratios[name]:.3f} |" for name in heads]
    lines += [
        "",
        f"Target VBLL (1000 MC samples) ≤ 1.05 × MAP: {'met' if ratios['vbll-mc1000'] <= 1.05 else 'NOT met'}.",
    ]
    write_results(RESULTS / "vbll_inference", data, lines, machine_info(), command)


if __name__ == "__main__":
    main()
