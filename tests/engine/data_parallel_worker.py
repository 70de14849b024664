"""The worker of tests/engine/test_step.py: one fit, resume or exact head phase, in this process (the test calls
:func:`run`) or in each process of a torchrun launch (``python -m torch.distributed.run ... data_parallel_worker.py
MODE OUT OPTIONS``)."""

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from polar_vbll.distributed import current_ranks
from polar_vbll.engine import FitConfig, fit
from polar_vbll.engine.checkpoint import FitInterrupted


def run(mode: str, out: Path, options: dict) -> None:
    """``fit`` (stopped after step ``options["stop_at"]`` when given), ``resume``, or ``features``: the exact head
    phase's cached features of the training split and the head solved on them, saved by the main process."""
    options = dict(options)
    if mode == "fit":
        stop = options.pop("stop_at", None)

        def interrupt(step, logs):
            if step == stop:
                raise KeyboardInterrupt("stopped")

        try:
            fit(FitConfig.from_dict(options), out, progress=False, callbacks=[interrupt])
        except FitInterrupted:
            pass
    elif mode == "resume":
        fit(out=out, resume=True, progress=False, **options)
    else:
        from polar_vbll.engine.build import build_components
        from polar_vbll.engine.head_phase import cached_features

        config = FitConfig.from_dict(options)
        backbone, task, head = build_components(config)
        items = task.load("train")
        features, labels, masks = cached_features(backbone, task, items, config.max_length, 4)
        head.solve(features, labels, masks, n_total=len(items))
        if current_ranks().main:
            tensors = {"features": features, **{f"head.{k}": v.contiguous() for k, v in head.state_dict().items()}}
            save_file(tensors, str(out))


if __name__ == "__main__":
    run(sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3]))
