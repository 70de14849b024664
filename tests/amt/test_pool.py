"""AMT end to end on a tiny model: a pool meta-tuned on two toy source tasks, saved and loaded bit for bit, merged
on a target's support into a plain LoRA whose ΔW is the weighted sum of the members', then fitted few-shot from it."""

from __future__ import annotations

import json

import pytest
import torch

from polar_vbll.adapters import adapter_layers, adapter_state_dict, inject_adapters, load_adapter_state
from polar_vbll.adapters.files import load_adapter
from polar_vbll.amt.adapt import MergeOptions, adapt
from polar_vbll.amt.pool import PoolConfig, build_pool, load_pool
from polar_vbll.cli import main
from polar_vbll.data import get_task
from polar_vbll.engine import fit
from polar_vbll.engine.build import training_items
from polar_vbll.errors import PolarVBLLError
from polar_vbll.models import load_backbone
from tests.engine.test_fit import config, task_dir  # noqa: F401  (a fixture)
from tests.engine.test_multitask import kind_dir  # noqa: F401  (a fixture)


@pytest.fixture
def pool_config(tiny_dir, task_dir, kind_dir):  # noqa: F811
    return PoolConfig(
        model=str(tiny_dir), sources=[str(task_dir), str(kind_dir)], epsilons=[0.0, 0.2, 0.2], gammas=[0.0, 0.0, 0.05],
        r=2, alpha=2.0, steps=3, shots=2, queries=2, lr=1e-2, attack_steps=2, max_length=64, precision="fp32",
    )  # fmt: skip


def test_a_pool_trains_one_member_per_level_and_loads_bit_for_bit(pool_config, tmp_path):
    pool = build_pool(pool_config, tmp_path / "pool", progress=False)
    assert len(pool.members) == 3 and [m["epsilon"] for m in pool.log] == [0.0, 0.2, 0.2]
    first, second, third = pool.members
    assert any(not torch.equal(first[k], second[k]) for k in first if k.endswith("lora_A"))  # the attack mattered
    assert any(not torch.equal(second[k], third[k]) for k in first if k.endswith("lora_A"))  # so did γ
    backbone = load_backbone(pool_config.model)
    inject_adapters(backbone.model, pool_config.adapter)
    load_adapter_state(backbone.model, third)
    assert all(torch.equal(v, third[k]) for k, v in adapter_state_dict(backbone.model).items())
    again = load_pool(tmp_path / "pool")
    assert all(torch.equal(a[k], b[k]) for a, b in zip(again.members, pool.members) for k in a)
    stamp = (tmp_path / "pool" / "members" / "0" / "adapter_model.safetensors").stat().st_mtime_ns
    build_pool(pool_config, tmp_path / "pool", progress=False)  # the same config: finished members are kept
    assert (tmp_path / "pool" / "members" / "0" / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(PolarVBLLError, match="another config"):
        build_pool(PoolConfig(**{**vars(pool_config), "steps": 4}), tmp_path / "pool", progress=False)


def test_the_merge_is_a_plain_lora_whose_update_is_the_weighted_members_and_fit_starts_from_it(
    pool_config,
    tiny_dir,
    task_dir,  # noqa: F811
    tmp_path,
):
    pool = build_pool(pool_config, tmp_path / "pool", progress=False)
    record = adapt(tmp_path / "pool", str(task_dir), tmp_path / "merged", shots=2, options=MergeOptions(top_k=2))
    weights = {int(k): w for k, w in record["weights"].items()}
    assert len(weights) == 2 and sum(weights.values()) == pytest.approx(1.0)
    assert record["support"] == 4  # 2 shots × 2 classes
    merged = load_backbone(pool_config.model)
    load_adapter(merged.model, tmp_path / "merged" / "adapter")
    s = pool_config.alpha / pool_config.r
    for name, layer in adapter_layers(merged.model).items():
        members = pool.members
        b0, a0 = members[0][f"{name}.init_B"], members[0][f"{name}.init_A"]
        expected = sum(w * s * (members[k][f"{name}.lora_B"] @ members[k][f"{name}.lora_A"] - b0 @ a0)
                       for k, w in weights.items())  # fmt: skip
        assert torch.allclose(layer.delta_weight(), expected, atol=1e-5), name
    # few-shot fit from the merged adapter, on the same support the merge scored
    options = json.loads((tmp_path / "merged" / "amt.json").read_text())["adapter"]
    start = str(tmp_path / "merged" / "adapter")
    run_config = config(tiny_dir, task_dir, adapter=options, adapter_init=start, train_shots=2, uq="map", steps=1,
                        lr_adapter=1e-12)  # fmt: skip
    items, _ = training_items(get_task(str(task_dir)), run_config)
    assert sorted(i.answer for i in items) == [0, 0, 1, 1]
    result = fit(run_config, tmp_path / "run", progress=False)
    trained = adapter_state_dict(result.backbone.model)
    for key, value in adapter_state_dict(merged.model).items():  # a negligible step away from the merge
        assert torch.allclose(trained[key], value, atol=1e-6), key
    with pytest.raises(PolarVBLLError, match="FitConfig.adapter_init"):
        fit(config(tiny_dir, task_dir, adapter="lora", adapter_init=str(tmp_path / "merged" / "adapter")),
            tmp_path / "bad", progress=False)  # fmt: skip


def test_the_command_line_builds_and_merges_a_pool(tiny_dir, task_dir, kind_dir, tmp_path, capsys):  # noqa: F811
    flags = ["--model", str(tiny_dir), "--sources", str(task_dir), "--sources", str(kind_dir), "--epsilons", "0", "0.1"]
    flags += ["--gammas", "0", "0.01", "--r", "2", "--alpha", "2", "--steps", "2", "--shots", "1", "--queries", "1"]
    flags += ["--max-length", "64", "--precision", "fp32", "--quiet", "--out", str(tmp_path / "pool")]
    assert main(["amt", "pool", *flags]) == 0
    assert "member 1: ε 0.1, γ 0.01" in capsys.readouterr().out
    assert main(["amt", "adapt", str(tmp_path / "pool"), "--task", str(task_dir), "--shots", "2", "--top-k", "1",
                 "--out", str(tmp_path / "merged")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "polar-vbll fit --task" in out and "--adapter-init" in out
    assert json.loads((tmp_path / "merged" / "adapter" / "adapter_config.json").read_text())["r"] == 4  # (1 + 1) r
