"""bf16 against fp32 on the real model, every variant in one invocation on the same inputs.

Variants: ``fp32``; ``bf16, fp32 base`` (autocast over the backbone, fp32 master state, the frozen base weights kept
in fp32 and cast on every pass); ``bf16`` (the same with the frozen base Linear weights stored in bf16: ``fit``'s
default under ``--precision bf16``). For LoRA-MAP and PoLAR-VBLL on SST-2 (the ``make demo`` recipe: batch 16,
r 8 on q_proj, v_proj):

- **Step time**, split into forward (loss), backward and optimizer, median over ``--reps`` steps on the same seeded
  batches, the variants interleaved step by step so that a change of machine load hits them alike. LoRA-MAP's step
  is the joint one; PoLAR-VBLL's is split into its adapter step (backward through the backbone) and its head step
  (features without a backward pass).
- **Evaluation throughput**: ``predict`` (100 logit samples) over the first ``--eval-n`` validation sentences in
  batches of 32, median of ``--eval-reps`` interleaved passes.
- **Peak memory**: each variant in a fresh process (``--reps`` training steps, then one evaluation pass), the peak
  resident memory sampled every 5 ms after the model has loaded: the process's own (anonymous) and with the pages of
  the file-mapped weights.
- **Quality**: ACC / ECE / NLL after the ``make demo`` recipe (100 steps, evaluation on the 872 validation
  sentences) for each variant, with its training time.

Writes ``benchmarks/results/precision.{json,md}``.

    python benchmarks/precision.py                    # ≈ 30 min on 2 CPU cores
    python benchmarks/precision.py --parts memory     # one part again, the others kept from the recorded results
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, run_worker, write_results  # noqa: E402

MODEL = "smollm2-135m"
DEMO = {"model": MODEL, "task": "sst2", "steps": 100, "batch_size": 16, "seed": 0}
METHODS = {
    "LoRA-MAP": {"adapter": "lora", "uq": "map"},
    "PoLAR-VBLL": {"adapter": "polar", "uq": "vbll", "vbll_head_phase": "stochastic"},  # as recorded
}
VARIANTS = {
    "fp32": {"precision": "fp32"},
    "bf16, fp32 base": {"precision": "bf16", "base_dtype": "fp32"},
    "bf16": {"precision": "bf16"},  # the frozen base weights stored in bf16 (the default under bf16 compute)
}
REFERENCE = "fp32"
GOALS = {"step": 0.5, "eval": 0.5, "acc_pt": 0.5, "ece": 0.01}


class Trainer:
    """One method × variant built as ``fit`` builds it, whose steps are timed in three parts."""

    def __init__(self, method: str, variant: str):
        import torch

        from polar_vbll.adapters import adapter_parameters
        from polar_vbll.engine import FitConfig
        from polar_vbll.engine.build import build_components, training_items
        from polar_vbll.optim import build_optimizer

        self.config = FitConfig.from_dict({**DEMO, **METHODS[method], **VARIANTS[variant]})
        self.backbone, self.task, self.head = build_components(self.config)
        self.items = training_items(self.task, self.config)[0]
        weight_decay = self.head.adapter_weight_decay if self.config.weight_decay is None else self.config.weight_decay
        self.adapter_params = adapter_parameters(self.backbone.model)
        self.adapter_opt = build_optimizer(
            self.adapter_params,
            self.config.optimizer,
            lr=self.config.lr_adapter,
            weight_decay=weight_decay,
            landing_lambda=self.config.landing_lambda,
        )
        self.head_opt = torch.optim.Adam(self.head.parameters(), lr=self.config.lr_head)

    def batch(self, step: int) -> dict:
        from polar_vbll.data import encoded_batches
        from polar_vbll.engine.schedule import batch_indices

        idx = batch_indices(step, self.config.batch_size, len(self.items), self.config.seed)
        chosen = [self.items[i] for i in idx]
        return next(
            encoded_batches(
                self.backbone.tokenizer, self.task, chosen, self.config.max_length, len(idx), sort_by_length=False
            )
        )[1]

    def step(self, batch: dict, train_backbone: bool = True) -> dict[str, float]:
        """(forward, backward, optimizer) seconds of one training step."""
        self.backbone.train()
        self.head.train()
        start = time.perf_counter()
        loss = self.head.training_loss(self.backbone, batch, train_backbone=train_backbone).loss
        forward = time.perf_counter()
        self.adapter_opt.zero_grad(set_to_none=True)
        self.head_opt.zero_grad(set_to_none=True)
        loss.backward()
        backward = time.perf_counter()
        self.head_opt.step()
        if train_backbone:
            self.adapter_opt.step()
        end = time.perf_counter()
        return {"forward_s": forward - start, "backward_s": backward - forward, "optimizer_s": end - backward}

    def evaluate(self, n: int) -> float:
        from polar_vbll.engine.inference import predict

        items = self.task.load(self.task.eval_split)[:n]
        start = time.perf_counter()
        predict(self.backbone, self.head, self.task, items, 32, self.config.max_length, n_samples=100)
        return time.perf_counter() - start


def step_kinds(method: str) -> list[tuple[str, bool]]:
    """(name, train_backbone) of the steps a method takes: PoLAR-VBLL alternates an adapter and a head step."""
    return [("adapter", True), ("head", False)] if method == "PoLAR-VBLL" else [("joint", True)]


def timings(args) -> dict:
    """Median step parts and evaluation times of every method × variant, interleaved."""
    results: dict = {}
    for method in METHODS:
        trainers = {variant: Trainer(method, variant) for variant in VARIANTS}
        batches = [trainers[REFERENCE].batch(step) for step in range(args.reps + 1)]
        for kind, train_backbone in step_kinds(method):
            parts: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
            for index, batch in enumerate(batches):
                for variant, trainer in trainers.items():
                    timed = trainer.step(batch, train_backbone)
                    if index:  # the first step warms up (oneDNN kernels, allocator)
                        parts[variant].append(timed)
                    print(f"{method} {kind} step {index} {variant}: {sum(timed.values()):.2f} s", flush=True)
            for variant, steps in parts.items():
                entry = results.setdefault(method, {}).setdefault(variant, {}).setdefault("steps", {})
                entry[kind] = {key: statistics.median(s[key] for s in steps) for key in steps[0]}
                entry[kind]["total_s"] = statistics.median(sum(s.values()) for s in steps)
        evals: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        for trainer in trainers.values():
            trainer.evaluate(32)  # warm-up
        for _ in range(args.eval_reps):
            for variant, trainer in trainers.items():
                evals[variant].append(trainer.evaluate(args.eval_n))
        for variant, times in evals.items():
            results[method][variant]["eval_s"] = statistics.median(times)
            results[method][variant]["eval_examples_per_s"] = args.eval_n / statistics.median(times)
        del trainers
    return results


def levers(args) -> dict:
    """Other speed levers, one at a time, on LoRA-MAP's joint step in bf16 with a bf16 base: attention
    implementation, thread count, and ``torch.compile`` of each decoder layer (its compile time and its steady step)."""
    import torch

    results: dict = {}
    trainers = {"eager attention": Trainer("LoRA-MAP", "bf16")}
    trainers["sdpa attention"] = Trainer("LoRA-MAP", "bf16")
    trainers["sdpa attention"].backbone.model.set_attn_implementation("sdpa")
    batches = [trainers["eager attention"].batch(step) for step in range(args.reps + 1)]
    threads = torch.get_num_threads()
    timed: dict[str, list[float]] = {}
    for index, batch in enumerate(batches):
        for name, trainer in trainers.items():
            for count in sorted({1, threads}):
                torch.set_num_threads(count)
                key = f"{name}, {count} thread{'s' * (count > 1)}"
                total = sum(trainer.step(batch).values())
                if index:
                    timed.setdefault(key, []).append(total)
        torch.set_num_threads(threads)
    results["steps"] = {key: statistics.median(times) for key, times in timed.items()}
    compiled = trainers["eager attention"]
    decoder = compiled.backbone.decoder
    for index, layer in enumerate(list(decoder.layers)):
        decoder.layers[index] = torch.compile(layer, dynamic=True)
    start = time.perf_counter()
    compiled.step(batches[0])
    results["compile_first_step_s"] = time.perf_counter() - start
    steps = [sum(compiled.step(batch).values()) for batch in batches[1:]]
    results["steps"][f"eager attention, {threads} threads, torch.compile per layer"] = statistics.median(steps)
    return results


#: operator groups of the profile table: the matmuls that bf16 speeds up, and what it does not
OP_GROUPS = {
    "matmul (mm, bmm, addmm)": ("aten::mm", "aten::bmm", "aten::addmm", "aten::matmul"),
    "attention kernel (sdpa)": ("aten::_scaled_dot_product_flash_attention_for_cpu",),
    "dtype casts and copies": ("aten::copy_", "aten::_to_copy"),
    "elementwise (mul, add, silu, pow, ...)": ("aten::mul", "aten::add", "aten::add_", "aten::silu", "aten::pow"),
}


def profile(args) -> dict:
    """Self CPU time by operator group of one LoRA-MAP joint step per variant (torch.profiler, after 2 warm-ups):
    where a bf16 step's time goes, against fp32's."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    results: dict = {}
    for variant in VARIANTS:
        trainer = Trainer("LoRA-MAP", variant)
        batch = trainer.batch(0)
        for _ in range(2):
            trainer.step(batch)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.step(batch)
        self_ms = {event.key: event.self_cpu_time_total / 1000 for event in prof.key_averages()}
        groups = {}
        for group, names in OP_GROUPS.items():
            groups[group] = sum(ms for key, ms in self_ms.items() if key in names or key.startswith(names[0] + "_"))
        total = sum(self_ms.values())
        groups["everything else"] = total - sum(groups.values())
        results[variant] = {"total_ms": total, "groups_ms": groups}
    return results


def _rss_mb() -> dict[str, float]:
    """Resident memory (MB): ``anon`` (the process's own: activations, gradients, converted weights) and ``file``
    (pages mapped from files: the safetensors weights, which the loader maps lazily and the kernel may drop)."""
    with open("/proc/self/status") as handle:
        fields = dict(line.split(":", 1) for line in handle if line.startswith(("RssAnon", "RssFile")))
    return {key: int(fields[name].split()[0]) / 1024 for key, name in (("anon", "RssAnon"), ("file", "RssFile"))}


def _allocated_mb() -> float:
    """Bytes the C allocator has handed out and not taken back (glibc ``mallinfo2``: heap in use + mmapped blocks,
    over all arenas), in MB: what the tensors hold, without the freed memory that the allocator keeps for reuse."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
        ] + [("keepcost", ctypes.c_size_t)]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20


def memory_worker(method: str, variant: str, reps: int, eval_n: int) -> dict:
    """Peak memory (sampled every 5 ms) while ``reps`` steps and one evaluation pass run, after the model has loaded:
    allocated by the process (``_allocated_mb``), its own resident pages, and those with the file-mapped weights."""
    trainer = Trainer(method, variant)
    loaded = _rss_mb()
    loaded_allocated = _allocated_mb()
    peak = {"anon": loaded["anon"], "total": loaded["anon"] + loaded["file"], "allocated": loaded_allocated}
    running = True

    def sample():
        while running:
            now = _rss_mb()
            peak["anon"] = max(peak["anon"], now["anon"])
            peak["total"] = max(peak["total"], now["anon"] + now["file"])
            peak["allocated"] = max(peak["allocated"], _allocated_mb())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    for step in range(reps):
        for _, train_backbone in step_kinds(method):
            trainer.step(trainer.batch(step), train_backbone)
    trainer.evaluate(eval_n)
    running = False
    thread.join()
    return {
        "allocated_after_load_mb": loaded_allocated,
        "peak_allocated_mb": peak["allocated"],
        "anon_after_load_mb": loaded["anon"],
        "peak_anon_mb": peak["anon"],
        "peak_total_mb": peak["total"],
    }


def memory(args) -> dict:
    """Each method × variant in ``--memory-repeats`` fresh processes, in turn; the median of each figure."""
    flags = ["--reps", str(args.reps), "--eval-n", str(args.eval_n)]
    runs: dict = {}
    for _ in range(args.memory_repeats):
        for method in METHODS:
            for variant in VARIANTS:
                result = run_worker(__file__, "--worker", method, variant, *flags)
                runs.setdefault(method, {}).setdefault(variant, []).append(result)
    return {
        method: {
            variant: {key: statistics.median(r[key] for r in results) for key in results[0]}
            for variant, results in variants.items()
        }
        for method, variants in runs.items()
    }


def quality(args) -> dict:
    """ACC / ECE / NLL and training time after the ``make demo`` recipe, for each method × variant."""
    with tempfile.TemporaryDirectory() as out:
        return _quality(Path(out))


def _quality(out: Path) -> dict:
    from polar_vbll.engine import FitConfig, fit

    results: dict = {}
    for method, options in METHODS.items():
        for variant, precision in VARIANTS.items():
            print(f"quality: {method} {variant}", flush=True)
            config = FitConfig.from_dict({**DEMO, **options, **precision})
            run = fit(config, out / f"{method}-{variant}".replace(" ", ""), overwrite=True, progress=False)
            metrics = run.report["metrics"]
            results.setdefault(method, {})[variant] = {
                "acc": metrics["cls/acc"],
                "ece": metrics["cal/ece"],
                "nll": metrics["cls/nll"],
                "train_s": run.report["timings"]["train_s"],
                "eval_s": run.report["timings"]["eval_s"],
            }
    return results


def markdown(data: dict, args) -> list[str]:
    ref = REFERENCE
    lines = [
        "# bf16 against fp32 (SmolLM2-135M, dequantized 4-bit GGUF; SST-2, batch 16, r 8 on q_proj, v_proj)",
        "",
        f"Median over {args.reps} interleaved steps on the same batches; ratios are to fp32 in the same run. "
        "bf16 = autocast over the backbone (adapters, head, optimizer states and curvature stay fp32) with the frozen "
        "base Linear weights stored in bf16 (the default under bf16); fp32 base = those weights kept in fp32 and cast "
        "on every pass.",
        "",
        "## Step time",
        "",
        "| method | step | variant | forward s | backward s | optimizer s | total s | ÷ fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, variants in data["timings"].items():
        for kind in variants[ref]["steps"]:
            base = variants[ref]["steps"][kind]["total_s"]
            for variant, entry in variants.items():
                s = entry["steps"][kind]
                lines.append(
                    f"| {method} | {kind} | {variant} | {s['forward_s']:.3f} | {s['backward_s']:.3f} | "
                    f"{s['optimizer_s']:.4f} | {s['total_s']:.3f} | {s['total_s'] / base:.2f} |"
                )
    lines += [
        "",
        f"## Evaluation ({args.eval_n} validation sentences, batch 32, 100 logit samples; median of {args.eval_reps})",
        "",
        "| method | variant | examples / s | time ÷ fp32 |",
        "|---|---|---|---|",
    ]
    for method, variants in data["timings"].items():
        for variant, entry in variants.items():
            ratio = entry["eval_s"] / variants[ref]["eval_s"]
            lines.append(f"| {method} | {variant} | {entry['eval_examples_per_s']:.1f} | {ratio:.2f} |")
    lines += [
        "",
        f"## Peak memory ({args.reps} steps and one evaluation pass in a fresh process; median of "
        f"{data['memory_repeats']} processes)",
        "",
        "Allocated = what the C allocator has handed out (tensors: activations, gradients, optimizer state, converted "
        "weights), without freed memory it keeps for reuse; own = anonymous resident pages; with files = plus the "
        "pages of the safetensors weights, which the loader maps from disk (the kernel may drop them).",
        "",
        "| method | variant | allocated after load MB | peak allocated MB | ÷ fp32 | peak own MB | ÷ fp32 | "
        "peak with files MB | ÷ fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, variants in data["memory"].items():
        for variant, m in variants.items():
            cells = [f"{m['allocated_after_load_mb']:.0f}"]
            for key in ("peak_allocated_mb", "peak_anon_mb", "peak_total_mb"):
                cells += [f"{m[key]:.0f}", f"{m[key] / variants[ref][key]:.2f}"]
            lines.append(f"| {method} | {variant} | " + " | ".join(cells) + " |")
    if data.get("quality"):
        lines += [
            "",
            "## Quality after the `make demo` recipe (100 steps; 872 validation sentences)",
            "",
            "| method | variant | ACC | ECE | NLL | train s | train ÷ fp32 |",
            "|---|---|---|---|---|---|---|",
        ]
        for method, variants in data["quality"].items():
            for variant, q in variants.items():
                ratio = q["train_s"] / variants[ref]["train_s"]
                lines.append(
                    f"| {method} | {variant} | {q['acc']:.4f} | {q['ece']:.4f} | {q['nll']:.4f} | "
                    f"{q['train_s']:.0f} | {ratio:.2f} |"
                )
    levers = data["levers"]
    reference = levers["steps"][f"eager attention, {data['machine_threads']} threads"]
    lines += [
        "",
        "## Other levers (LoRA-MAP joint step, bf16)",
        "",
        "| setting | step s | ÷ the default |",
        "|---|---|---|",
    ]
    lines += [f"| {key} | {value:.3f} | {value / reference:.2f} |" for key, value in levers["steps"].items()]
    lines += [
        "",
        f"torch.compile of each decoder layer: the first step took {levers['compile_first_step_s']:.0f} s "
        "(compilation); evaluation (no gradients), the head phase, ensemble members and BLoB's sampling each "
        "compile again.",
    ]
    if data.get("profile"):
        variants = data["profile"]
        lines += [
            "",
            "## Where a step's time goes (LoRA-MAP joint step, torch.profiler self CPU time, ms)",
            "",
            "| operators | " + " | ".join(variants) + " |",
            "|---|" + "---|" * len(variants),
        ]
        for group in next(iter(variants.values()))["groups_ms"]:
            lines.append(f"| {group} | " + " | ".join(f"{v['groups_ms'][group]:.0f}" for v in variants.values()) + " |")
        lines.append("| **total** | " + " | ".join(f"{v['total_ms']:.0f}" for v in variants.values()) + " |")
    lines += ["", "## Goals", ""] + [f"- {line}" for line in goal_lines(data)]
    return lines


def goal_lines(data: dict) -> list[str]:
    """Each goal of the precision issue, met or missed, for bf16 against fp32."""
    lines = []
    for method, variants in data["timings"].items():
        for variant in (v for v in variants if v != REFERENCE):
            for kind, s in variants[variant]["steps"].items():
                ratio = s["total_s"] / variants[REFERENCE]["steps"][kind]["total_s"]
                verdict = "met" if ratio <= GOALS["step"] else "missed"
                lines.append(f"{method} {kind} step, {variant}: {ratio:.2f}× fp32 (goal ≤ {GOALS['step']}): {verdict}")
            ratio = variants[variant]["eval_s"] / variants[REFERENCE]["eval_s"]
            verdict = "met" if ratio <= GOALS["eval"] else "missed"
            lines.append(f"{method} evaluation, {variant}: {ratio:.2f}× fp32 (goal ≤ {GOALS['eval']}): {verdict}")
    for method, variants in data["memory"].items():
        for variant in (v for v in variants if v != REFERENCE):
            ratio = variants[variant]["peak_allocated_mb"] / variants[REFERENCE]["peak_allocated_mb"]
            verdict = "met" if ratio <= 1 else "missed"
            lines.append(f"{method} peak memory, {variant}: {ratio:.2f}× fp32 (goal ≤ 1): {verdict}")
    for method, variants in (data.get("quality") or {}).items():
        for variant in (v for v in variants if v != REFERENCE):
            d_acc = 100 * abs(variants[variant]["acc"] - variants[REFERENCE]["acc"])
            d_ece = abs(variants[variant]["ece"] - variants[REFERENCE]["ece"])
            ok = d_acc <= GOALS["acc_pt"] and d_ece <= GOALS["ece"]
            lines.append(
                f"{method} quality, {variant}: |ΔACC| {d_acc:.2f} pt (goal ≤ {GOALS['acc_pt']}), |ΔECE| {d_ece:.4f} "
                f"(goal ≤ {GOALS['ece']}): {'met' if ok else 'missed'}"
            )
    return lines


#: the parts of the benchmark, each with the settings it records besides its own results
PARTS = {"timings": (), "levers": (), "profile": (), "memory": ("memory_repeats",), "quality": ()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--eval-n", type=int, default=256, help="validation sentences per evaluation pass")
    parser.add_argument("--eval-reps", type=int, default=3, help="evaluation passes per variant")
    parser.add_argument("--memory-repeats", type=int, default=3, help="fresh processes per variant for memory")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=list(PARTS),
        default=list(PARTS),
        help="measure only these; the others are kept from the recorded results of the same settings",
    )
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import json

        print(json.dumps(memory_worker(*args.worker, args.reps, args.eval_n)))
        return
    import json

    import torch

    settings = {"reps": args.reps, "eval_n": args.eval_n, "eval_reps": args.eval_reps}
    data: dict = {"goals": GOALS, **settings, "memory_repeats": args.memory_repeats}
    data["machine_threads"] = torch.get_num_threads()
    recorded_path = RESULTS / "precision.json"
    recorded = json.loads(recorded_path.read_text()) if recorded_path.exists() else {}
    recorded.setdefault("eval_reps", 3)  # results written before it was recorded used 3
    kept = [p for p in PARTS if p not in args.parts]
    unusable = [p for p in kept if p not in recorded or any(recorded.get(k) != v for k, v in settings.items())]
    if unusable:
        raise SystemExit(f"no recorded {', '.join(unusable)} with these settings: add them to --parts")
    for part in PARTS:
        if part in kept:
            data[part] = recorded[part]
            data.update({k: recorded[k] for k in PARTS[part] if k in recorded})
        else:
            data[part] = globals()[part](args)
    command = shlex.join(["python", "benchmarks/precision.py", *sys.argv[1:]])
    write_results(RESULTS / "precision", data, markdown(data, args), machine_info(), command)


if __name__ == "__main__":
    main()
