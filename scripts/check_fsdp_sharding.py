"""Feasibility check for sharding the frozen base (not used by ``fit`` yet): PyTorch's FSDP2 ``fully_shard`` on
each decoder layer and the decoder, the adapter's parameters left whole (``ignored_params``), must give the same
adapter gradients as the unsharded model. Writes ``OUT/{plain,sharded}.safetensors`` and prints the largest gap.

    python scripts/check_fsdp_sharding.py MODEL_DIR TASK_DIR OUT plain
    torchrun --standalone --nproc_per_node 2 scripts/check_fsdp_sharding.py MODEL_DIR TASK_DIR OUT sharded
    python scripts/check_fsdp_sharding.py MODEL_DIR TASK_DIR OUT compare

Measured (2026-12-05, tiny random Llama, PoLAR adapter, 2 gloo processes on CPU): 12 adapter gradients, largest gap 0.0.
"""

import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from polar_vbll.config import FitConfig
from polar_vbll.data import encoded_batches
from polar_vbll.distributed import current_ranks
from polar_vbll.engine.build import build_components


def main() -> None:
    model, task_dir, out, mode = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    if mode == "compare":
        plain, sharded = (load_file(str(out / f"{name}.safetensors")) for name in ("plain", "sharded"))
        assert plain.keys() == sharded.keys()
        print(len(plain), "gradients, largest gap", max(float((plain[k] - sharded[k]).abs().max()) for k in plain))
        return
    ranks = current_ranks()
    config = FitConfig(model=model, task=task_dir, adapter="polar", uq="map", batch_size=4)
    backbone, task, head = build_components(config)
    _, batch = next(encoded_batches(backbone.tokenizer, task, task.load("train")[:4], 64, 4, sort_by_length=False))
    if mode == "sharded":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (ranks.size,))
        trained = {p for p in backbone.model.parameters() if p.requires_grad}
        for layer in backbone.decoder.layers:
            fully_shard(layer, mesh=mesh, ignored_params=trained)
        fully_shard(backbone.decoder, mesh=mesh, ignored_params=trained)  # the root the forward goes through
    backbone.train()
    head.training_loss(backbone, batch).loss.backward()
    grads = {
        name.replace("_fsdp_wrapped_module.", ""): p.grad.contiguous()
        for name, p in backbone.model.named_parameters()
        if p.requires_grad and p.grad is not None
    }
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
        save_file(grads, str(out / f"{mode}.safetensors"))


if __name__ == "__main__":
    main()
