"""S2FT: co-permutation keeps the function, only the selected block trains, fuse ≡ unfused, exact save/load."""

import pytest
import torch

from polar_vbll.adapters import (
    adapter_layers,
    adapter_state_dict,
    count_trainable,
    inject_adapters,
    load_adapter,
    load_adapter_state,
    make_config,
    merge_adapters,
    save_adapter,
    unmerge_adapters,
)
from polar_vbll.errors import PolarVBLLError
from polar_vbll.models import tiny_llama

IDS = torch.randint(3, 400, (2, 9), generator=torch.Generator().manual_seed(0))
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def s2ft_model(targets=ALL, **options):
    model = tiny_llama(500, num_attention_heads=4, num_key_value_heads=2)
    options = {"head_ratio": 0.5, "channel_ratio": 0.25, **options}
    inject_adapters(model, make_config("s2ft", target_modules=targets, **options))
    return model


@pytest.mark.parametrize("selection", ["random", "weight_norm"])
@pytest.mark.parametrize("targets", [["o_proj", "down_proj"], ALL, ["q_proj"]])
def test_permuted_model_with_zero_update_is_the_base_model(selection, targets):
    with torch.no_grad():
        expected = tiny_llama(500)(IDS).logits
        model = s2ft_model(targets, selection=selection)
        perms = [layer.s2ft_perm for layer in adapter_layers(model).values()]
        assert any(not torch.equal(p, torch.arange(len(p))) for p in perms)  # something was permuted
        torch.testing.assert_close(model(IDS).logits, expected, atol=1e-5, rtol=1e-5)


def test_selected_heads_form_the_first_block_and_stay_with_their_kv_group():
    model = s2ft_model(ALL, head_ratio=0.75, seed=3)  # 3 of 4 heads, groups of 2
    layers = adapter_layers(model)
    q = layers["model.layers.0.self_attn.q_proj"]
    k = layers["model.layers.0.self_attn.k_proj"]
    head_order = q.s2ft_perm.reshape(4, 8)[:, 0] // 8
    group_order = k.s2ft_perm.reshape(2, 8)[:, 0] // 8
    assert torch.equal(head_order // 2, group_order.repeat_interleave(2))  # head i uses kv group i // 2
    assert q.s2ft_delta.shape == (24, 32) and k.s2ft_delta.shape == (16, 32)
    assert layers["model.layers.0.self_attn.o_proj"].s2ft_delta.shape == (32, 24)
    assert layers["model.layers.0.mlp.down_proj"].s2ft_delta.shape == (32, 16)


def test_only_the_selected_block_receives_gradients_and_changes():
    model = s2ft_model(["o_proj", "down_proj"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith("s2ft_delta") for n in trainable)
    before = {n: layer.base_layer.weight.detach().clone() for n, layer in adapter_layers(model).items()}
    model(IDS).logits.pow(2).mean().backward()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    opt.step()
    merge_adapters(model)
    for name, layer in adapter_layers(model).items():
        change = (layer.base_layer.weight - before[name]).abs()
        k = 0 if layer.s2ft_delta is None else layer.s2ft_delta.shape[1]
        assert change[:, k:].max() == 0, name
        if k:
            assert change[:, :k].max() > 0, name
    assert count_trainable(s2ft_model(["o_proj", "down_proj"]))[0] == 2 * (32 * 16 + 32 * 16)


def test_fuse_equals_unfused_forward_and_unfuse_restores():
    model = s2ft_model()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=0.1)
        unfused = model(IDS).logits
        weights = {n: m.base_layer.weight.clone() for n, m in adapter_layers(model).items()}
        merge_adapters(model)
        torch.testing.assert_close(model(IDS).logits, unfused, atol=1e-5, rtol=1e-5)
        unmerge_adapters(model)
        for name, layer in adapter_layers(model).items():
            torch.testing.assert_close(layer.base_layer.weight, weights[name], atol=1e-6, rtol=1e-6)


def test_save_load_reapplies_the_permutation(tmp_path):
    model = s2ft_model(seed=7)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=0.1)
        expected = model(IDS).logits
    save_adapter(model, tmp_path / "s2ft")
    fresh = tiny_llama(500)
    load_adapter(fresh, tmp_path / "s2ft")
    with torch.no_grad():
        assert torch.equal(fresh(IDS).logits, expected)
    other = s2ft_model(seed=1)  # already permuted differently (a resumed run): re-permuted from there
    load_adapter_state(other, adapter_state_dict(model))
    with torch.no_grad():
        torch.testing.assert_close(other(IDS).logits, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"head_ratio": 0.0}, r"head_ratio must lie in \(0, 1\]"),
        ({"channel_ratio": 1.5}, r"channel_ratio must lie in \(0, 1\]"),
        ({"target_modules": ["lm_head"]}, "lm_head has no coupled partner"),
        ({"selection": "magnitude"}, "selection must be 'random' or 'weight_norm'"),
    ],
)
def test_bad_s2ft_config(options, match):
    with pytest.raises(PolarVBLLError, match=match):
        make_config("s2ft", **options)


def test_target_without_partner_in_the_model():
    model = tiny_llama(500)
    del model.model.layers[0].mlp.gate_proj
    with pytest.raises(PolarVBLLError, match="down_proj has no coupled partner gate_proj in LlamaMLP"):
        inject_adapters(model, make_config("s2ft", target_modules=["down_proj"]))
