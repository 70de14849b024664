"""GPU throughput: PoLAR-VBLL and LoRA-MAP training steps on a Llama-2-7B-shaped model with random weights (no
download), bf16 base weights (adapters and head in fp32), batch 4 × 300 tokens: tokens/s and model-FLOPs
utilization (MFU), on one GPU or data-parallel on N (``torchrun --nproc_per_node N benchmarks/gpu_throughput.py``:
each process a GPU, gradients averaged by the all-reduce ``fit`` uses, tokens/s summed over the processes), with
and without gradient checkpointing (``--gradient-checkpointing`` adds its rows).

Model FLOPs per token (N = parameters of the decoder blocks, L layers, s tokens, d hidden size): an adapter step
is a forward (2N + 4Lsd) plus a backward through the activations (2N + 8Lsd), as the frozen base weights get no
gradient; a VBLL head-only step is a forward without a graph (2N + 4Lsd). Adapter and head FLOPs are left out.
MFU = model FLOPs per second ÷ the device's dense bf16 peak. Steps come from the library (``build_components``,
``head.training_loss``, ``build_optimizer``), in ``fit``'s order of phases. Runs only where CUDA is present
(``--device cpu --shape tiny`` checks the script, also under torchrun on gloo). A checkpointed step recomputes the
forward in the backward pass: its MFU counts model FLOPs only, not the recomputation. Writes
``benchmarks/results/gpu_throughput.{json,md}`` (the main process).

    python benchmarks/gpu_throughput.py --steps 13 --warmup 3 --gradient-checkpointing
    torchrun --nproc_per_node 8 benchmarks/gpu_throughput.py --steps 13 --warmup 3 --gradient-checkpointing
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, STOCHASTIC_VBLL, machine_info, write_results  # noqa: E402

SHAPES = {
    "llama-2-7b": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000
    ),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=512),
}
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0}  # dense, SXM where it applies
# the step kernels: adapter and head-only steps (the exact head phase's solves are timed by head_phase.py)
METHODS = {"LoRA-MAP": ("lora", "map"), "PoLAR-VBLL": ("polar", STOCHASTIC_VBLL)}


def random_backbone(shape: str, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    from polar_vbll.models import Backbone
    from polar_vbll.models.tiny import tiny_tokenizer

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, pad_token_id=0, bos_token_id=1)
    default = torch.get_default_dtype()
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    # label words of BoolQ (" yes", " no") are single tokens of the tiny tokenizer; their ids index the random head
    return Backbone(model, tiny_tokenizer(), f"random {shape}", source="random init (no download)")


def flops_per_token(model, seq_len: int) -> tuple[float, float]:
    """(model FLOPs per token of an adapter step, of a head-only step)."""
    blocks = model.model.layers
    n = sum(p.numel() for p in blocks.parameters() if p.ndim == 2 and not p.requires_grad)  # frozen weight matrices
    layers, d = len(blocks), model.config.hidden_size
    forward = 2 * n + 4 * layers * seq_len * d
    return forward + 2 * n + 8 * layers * seq_len * d, forward


def measure(
    method: str,
    shape: str,
    device: str,
    steps: int,
    warmup: int,
    batch: int,
    seq_len: int,
    checkpointing: bool = False,
) -> dict:
    """Median step times of ``method`` per phase on this process's ``device``; under several processes each step's
    gradients are averaged over them (:class:`~polar_vbll.distributed.Ranks`) and tokens/s counts every process."""
    from polar_vbll.adapters import adapter_parameters
    from polar_vbll.config import FitConfig
    from polar_vbll.distributed import current_ranks
    from polar_vbll.engine.build import build_components
    from polar_vbll.engine.schedule import phase_of
    from polar_vbll.optim import build_optimizer

    adapter, uq = METHODS[method]
    config = FitConfig(model=f"random-{shape}", task="boolq", adapter=adapter, uq=uq, batch_size=batch)
    backbone, task, head = build_components(config, random_backbone(shape, device, torch.bfloat16))
    head.to(device)
    ranks = current_ranks()
    if checkpointing:
        backbone.enable_gradient_checkpointing()
    params = adapter_parameters(backbone.model)
    adapter_opt = build_optimizer(params, config.optimizer, lr=config.lr_adapter, weight_decay=0.0)
    head_opt = torch.optim.Adam(head.parameters(), lr=config.lr_head)
    generator = torch.Generator().manual_seed(0)
    vocab = backbone.model.config.vocab_size
    batch_data = {
        "input_ids": torch.randint(3, vocab, (batch, seq_len), generator=generator).to(device),
        "attention_mask": torch.ones(batch, seq_len, dtype=torch.long, device=device),
        "labels": torch.randint(0, task.num_classes, (batch,), generator=generator).to(device),
        "choice_mask": None,
    }
    adapter_flops, head_flops = flops_per_token(backbone.model, seq_len)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    backbone.train()
    head.train()
    times = {"adapter": [], "head": [], "joint": []}
    for step in range(steps):
        phase = phase_of(step, config)
        sync()
        start = time.perf_counter()
        loss = head.training_loss(backbone, batch_data, train_backbone=phase != "head").loss
        adapter_opt.zero_grad(set_to_none=True)
        head_opt.zero_grad(set_to_none=True)
        loss.backward()
        ranks.mean_gradients_([*params, *head.parameters()])
        if phase in ("head", "joint"):
            head_opt.step()
        if phase in ("adapter", "joint"):
            adapter_opt.step()
        sync()
        if step >= warmup:
            times[phase].append(time.perf_counter() - start)
    tokens = batch * seq_len * ranks.size
    result: dict = {"processes": ranks.size, "gradient_checkpointing": checkpointing, "phases": {}}
    for phase, values in times.items():
        if values:
            step_s = statistics.median(values)
            flops = (head_flops if phase == "head" else adapter_flops) * tokens
            result["phases"][phase] = {"step_s": step_s, "tokens_per_s": tokens / step_s, "flops_per_s": flops / step_s}
    cycle = result["phases"].values()
    cycle_s = sum(p["step_s"] for p in cycle)
    result["tokens_per_s"] = tokens * len(cycle) / cycle_s
    result["flops_per_s"] = sum(p["flops_per_s"] * p["step_s"] for p in cycle) / cycle_s
    result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return result


def peak_flops(device: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(0)
    return next((tflops * 1e12 for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="llama-2-7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=13)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=300)
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="measure each method with checkpointing too"
    )
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: known GPUs)")
    parser.add_argument("--out", default=str(RESULTS / "gpu_throughput"), help="JSON and Markdown path stem")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_throughput: no CUDA device here (use --device cpu --shape tiny to check the script)")

    from polar_vbll.distributed import current_ranks

    ranks = current_ranks()
    device = f"cuda:{ranks.rank % torch.cuda.device_count()}" if args.device == "cuda" else args.device
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    peak = peak_flops(device, args.peak_tflops)
    rows = {}
    for checkpointing in (False, True) if args.gradient_checkpointing else (False,):
        for method in METHODS:
            name = method + (", checkpointed" if checkpointing else "")
            rows[name] = measure(
                method, args.shape, device, args.steps, args.warmup, args.batch_size, args.seq_len, checkpointing
            )
            rows[name]["mfu"] = rows[name]["flops_per_s"] / (peak * ranks.size) if peak else None
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    if not ranks.main:
        return
    ref = rows["LoRA-MAP"]["tokens_per_s"]
    machine = machine_info()
    launcher = f"torchrun --nproc_per_node {ranks.size}" if ranks.size > 1 else "python"
    command = (
        f"{launcher} benchmarks/gpu_throughput.py --shape {args.shape} --device {args.device} --steps {args.steps} "
        f"--warmup {args.warmup} --batch-size {args.batch_size} --seq-len {args.seq_len}"
        + (" --gradient-checkpointing" if args.gradient_checkpointing else "")
    )
    lines = [
        f"# Training throughput, {args.shape}-shaped random model, bf16, batch {args.batch_size} × {args.seq_len} "
        f"per device, {ranks.size} device(s)",
        "",
        f"Median step time after {args.warmup} warm-up steps ({args.steps} in all); PoLAR-VBLL alternates a "
        "head-only step and an adapter step (tokens/s over one cycle). Model FLOPs as in the script's docstring; "
        + (
            f"MFU against a dense bf16 peak of {peak / 1e12:.1f} TFLOP/s per device." if peak else "MFU: no peak known."
        ),
        "",
        "| method | tokens/s | ÷ LoRA-MAP | MFU | phases: step s (tokens/s) | peak memory GiB per device |",
        "|---|---|---|---|---|---|",
    ]
    for method, row in rows.items():
        phases = ", ".join(f"{p} {v['step_s']:.3f} ({v['tokens_per_s']:.0f})" for p, v in row["phases"].items())
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
        memory = f"{row['peak_memory_gb']:.1f}" if row["peak_memory_gb"] is not None else "n/a"
        lines.append(
            f"| {method} | {row['tokens_per_s']:.0f} | {row['tokens_per_s'] / ref:.3f} | {mfu} | {phases} | {memory} |"
        )
    write_results(Path(args.out), {"peak_flops": peak, "rows": rows}, lines, machine, command)


if __name__ == "__main__":
    main()
