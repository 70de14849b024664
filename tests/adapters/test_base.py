import json

import pytest
import torch

from polar_vbll.adapters import (
    ADAPTERS,
    adapter_layers,
    adapter_state_dict,
    count_trainable,
    inject_adapters,
    load_adapter,
    make_config,
    merge_adapters,
    save_adapter,
    unmerge_adapters,
)
from polar_vbll.errors import PolarVBLLError
from polar_vbll.models import tiny_llama

METHODS = ["lora", "dora", "polar", "pissa"]
IDS = torch.randint(3, 400, (2, 9), generator=torch.Generator().manual_seed(0))


def perturbed(method: str, seed: int = 1, **options):
    """A tiny Llama with an adapter whose update is non-zero (random factors)."""
    model = tiny_llama(500)
    inject_adapters(model, make_config(method, r=4, **options))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and ("lora_B" in name or "polar_theta" in name or "magnitude" in name):
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def test_registry_lists_the_methods():
    assert set(METHODS) <= set(ADAPTERS.names())


@pytest.mark.parametrize("method", METHODS)
def test_initial_update_is_zero(method):
    base = tiny_llama(500)
    with torch.no_grad():
        expected = base(IDS).logits
    inject_adapters(base, make_config(method, r=4))
    with torch.no_grad():
        torch.testing.assert_close(base(IDS).logits, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_merge_equals_unmerged_forward_and_unmerge_restores(method):
    model = perturbed(method)
    layer = next(iter(adapter_layers(model).values()))
    original = layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        unmerged = model(IDS).logits
        merge_adapters(model)
        assert not torch.allclose(layer.base_layer.weight, original)
        torch.testing.assert_close(model(IDS).logits, unmerged, atol=1e-5, rtol=1e-5)
        unmerge_adapters(model)
        torch.testing.assert_close(layer.base_layer.weight, original, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(model(IDS).logits, unmerged, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip_is_bit_identical(method, tmp_path):
    model = perturbed(method)
    with torch.no_grad():
        expected = model(IDS).logits
    save_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    fresh = tiny_llama(500)  # same seed: the same base weights, as a fresh load would give
    config = load_adapter(fresh, tmp_path / "adapter")
    assert config.method == method and config.r == 4
    with torch.no_grad():
        assert torch.equal(fresh(IDS).logits, expected)
    assert adapter_state_dict(fresh).keys() == adapter_state_dict(model).keys()


def test_trainable_parameter_counts():
    # tiny Llama: 2 layers, q_proj 32->32, v_proj 32->16 (2 kv heads of 8)
    expected = {
        "lora": 2 * (4 * 32 + 32 * 4 + 4 * 32 + 16 * 4),
        "dora": 2 * (4 * 32 + 32 * 4 + 32 + 4 * 32 + 16 * 4 + 16),
        "polar": 2 * (32 * 4 + 32 * 4 + 16 + 16 * 4 + 32 * 4 + 16),
    }
    for method, count in expected.items():
        model = tiny_llama(500)
        inject_adapters(model, make_config(method, r=4))
        trainable, total = count_trainable(model)
        assert trainable == count, method
        assert total == sum(p.numel() for p in tiny_llama(500).parameters()) + count
    model = tiny_llama(500)
    inject_adapters(model, make_config("polar", r=4, theta="diagonal"))
    assert count_trainable(model)[0] == 2 * (32 * 4 + 32 * 4 + 4 + 16 * 4 + 32 * 4 + 4)


def test_regex_targets_and_bad_targets():
    model = tiny_llama(500)
    names = inject_adapters(model, make_config("lora", r=2, target_modules=r"model\.layers\.0\.mlp\..*_proj"))
    assert names == [f"model.layers.0.mlp.{n}_proj" for n in ("gate", "up", "down")]
    with pytest.raises(PolarVBLLError, match="the model already has a 'lora' adapter"):
        inject_adapters(model, make_config("lora", r=2, target_modules=["gate_proj"]))
    with pytest.raises(
        PolarVBLLError,
        match="match no module of LlamaForCausalLM; its Linear modules are named: down_proj, gate_proj, k_proj",
    ):
        inject_adapters(tiny_llama(500), make_config("lora", target_modules=["x_proj"]))
    with pytest.raises(PolarVBLLError, match="target model.layers.0.input_layernorm is LlamaRMSNorm, not nn.Linear"):
        inject_adapters(tiny_llama(500), make_config("lora", target_modules=["input_layernorm"]))
    with pytest.raises(PolarVBLLError, match=r"r=17 exceeds min\(in, out\)=16 of model.layers.0.self_attn.v_proj"):
        inject_adapters(tiny_llama(500), make_config("polar", r=17))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"r": 0}, "r must be a positive integer"),
        ({"dropout": 1.0}, "dropout must lie in"),
        ({"target_modules": []}, "target_modules is empty"),
    ],
)
def test_bad_config_values(options, match):
    with pytest.raises(PolarVBLLError, match=match):
        make_config("lora", **options)
    with pytest.raises(PolarVBLLError, match="theta must be 'full' or 'diagonal'"):
        make_config("polar", theta="lower")
    with pytest.raises(PolarVBLLError, match="unknown adapter 'lorax'"):
        make_config("lorax")


def test_bad_adapter_folders(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    with pytest.raises(PolarVBLLError, match="adapter_config.json: not found"):
        load_adapter(tiny_llama(500), folder)
    (folder / "adapter_config.json").write_text('{\n  "method": "lora",\n  "r": 4,\n}')
    with pytest.raises(PolarVBLLError, match=r"adapter_config.json:4: malformed JSON"):
        load_adapter(tiny_llama(500), folder)
    (folder / "adapter_config.json").write_text(json.dumps({"method": "lora", "rank": 4}))
    with pytest.raises(PolarVBLLError, match="unknown field\\(s\\) rank for adapter 'lora'"):
        load_adapter(tiny_llama(500), folder)
    save_adapter(perturbed("lora"), folder)
    with pytest.raises(PolarVBLLError, match="adapter weights do not fit this model"):
        load_adapter(tiny_llama(500, num_hidden_layers=3), folder)


def test_polar_factors_stay_fp32_on_a_bf16_base():
    model = tiny_llama(500).to(torch.bfloat16)
    inject_adapters(model, make_config("polar", r=4))
    layer = next(iter(adapter_layers(model).values()))
    assert layer.polar_X.dtype == layer.polar_Y.dtype == layer.polar_theta.dtype == torch.float32
    assert model(IDS).logits.dtype == torch.bfloat16


def test_adapter_on_the_trimmed_answer_head(tiny):
    """The answer head is an nn.Linear, so any adapter can target it (the Bayesian-LoRA protocol adapts the head)."""
    holder = torch.nn.Module()
    holder.head = tiny.answer_head([5, 7, 9])
    features = torch.randn(4, tiny.hidden_size)
    with torch.no_grad():
        before = holder.head(features)
    assert inject_adapters(holder, make_config("polar", r=3, target_modules=["head"])) == ["head"]
    with torch.no_grad():
        torch.testing.assert_close(holder.head(features), before)
    assert count_trainable(holder)[0] == 3 * 3 + tiny.hidden_size * 3 + 3 * 3
