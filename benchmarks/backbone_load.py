"""Time to get the embedded model: first build of the cache (GGUF -> fp32 safetensors) and cached reloads.

Target: cached reload (verification included) < 3 s on 2 cores. Writes ``benchmarks/results/backbone_load.{json,md}``.

    python benchmarks/backbone_load.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, write_results  # noqa: E402

TARGET_RELOAD_S = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["POLAR_VBLL_CACHE"] = tmp  # a cold cache of our own, removed afterwards
        from polar_vbll.models import load_backbone

        start = time.perf_counter()
        load_backbone(args.model)
        build_s = time.perf_counter() - start
        reloads = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            load_backbone(args.model)
            reloads.append(time.perf_counter() - start)
    reload_s = statistics.median(reloads)
    command = f"python benchmarks/backbone_load.py --model {args.model} --repeats {args.repeats}"
    result = {
        "model": args.model,
        "first_build_s": build_s,
        "cached_reload_s": reloads,
        "cached_reload_median_s": reload_s,
        "target_reload_s": TARGET_RELOAD_S,
        "met": reload_s < TARGET_RELOAD_S,
    }
    lines = [
        "# Embedded model load time",
        "",
        "| measure | seconds | target |",
        "|---|---|---|",
        f"| first build (GGUF dequantize -> fp32 safetensors cache) | {build_s:.1f} | |",
        f"| cached reload, sha256 verification included (median of {args.repeats}) | {reload_s:.2f} | "
        f"< {TARGET_RELOAD_S:.0f} ({'met' if result['met'] else 'NOT met'}) |",
    ]
    write_results(RESULTS / "backbone_load", result, lines, machine_info(), command)


if __name__ == "__main__":
    main()
