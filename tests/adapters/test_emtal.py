"""EMTAL: balanced k-means experts, per-expert updates against the dense ΔW they stand for, the router's effect and
its fading schedule, merging after fading into the base architecture, exact save/load, and the refusals."""

import pytest
import torch

from polar_vbll.adapters import (
    adapter_layers,
    adapters_on_step,
    balanced_kmeans,
    inject_adapters,
    load_adapter,
    make_config,
    merge_adapters,
    merge_and_unload,
    save_adapter,
)
from polar_vbll.errors import PolarVBLLError
from polar_vbll.models import tiny_llama

IDS = torch.randint(3, 400, (3, 9), generator=torch.Generator().manual_seed(0))


def adapted(seed: int = 0, router: bool = True, **options) -> torch.nn.Module:
    """A tiny Llama (fixed base) with EMTAL, B (and the routers) made non-zero."""
    torch.manual_seed(123)
    model = tiny_llama(500)
    inject_adapters(model, make_config("emtal", **{"experts": 4, **options}))
    with torch.no_grad():
        for part in ("lora_B", "router") if router else ("lora_B",):  # one stream each
            gen = torch.Generator().manual_seed(seed + 1)
            for name, p in model.named_parameters():
                if p.requires_grad and part in name:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def fade(model, total: int = 10) -> None:
    for step in range(total):
        adapters_on_step(model, step, total)


def test_balanced_kmeans_gives_equal_experts_that_partition_the_channels_and_beat_a_random_split():
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 6, generator=gen) * 5
    points = centers.repeat_interleave(8, 0) + 0.1 * torch.randn(32, 6, generator=gen)
    shuffled = torch.randperm(32, generator=gen)
    groups = balanced_kmeans(points[shuffled], 4, iterations=10, seed=0)
    assert groups.shape == (4, 8)
    assert sorted(groups.flatten().tolist()) == list(range(32))
    found = {frozenset(shuffled[g].div(8, rounding_mode="floor").tolist()) for g in groups}
    assert found == {frozenset({k}) for k in range(4)}  # the planted clusters, exactly

    def spread(groups):
        inputs = points[shuffled]
        return sum(float(((inputs[g] - inputs[g].mean(0)) ** 2).sum()) for g in groups)

    assert spread(groups) < spread(torch.randperm(32, generator=gen).reshape(4, 8))
    assert torch.equal(groups, balanced_kmeans(points[shuffled], 4, iterations=10, seed=0))  # deterministic
    with pytest.raises(PolarVBLLError, match="30 channels do not split into 4 equal experts"):
        balanced_kmeans(torch.randn(30, 3), 4, 5, 0)


def test_every_ffn_is_split_into_equal_balanced_experts():
    model = adapted()
    layers = adapter_layers(model)
    assert sorted({n.rsplit(".", 1)[1] for n in layers}) == ["down_proj", "gate_proj", "up_proj"]
    for name, layer in layers.items():
        assert layer.channels.shape == (4, 16)  # tiny intermediate size 64
        assert sorted(layer.channels.flatten().tolist()) == list(range(64)), name
        partner = layers[name.rsplit(".", 1)[0] + ".down_proj"]
        assert torch.equal(layer.channels, partner.channels) and layer.router is partner.router


def test_each_layer_s_update_equals_its_dense_delta_weight():
    model = adapted()
    for layer in adapter_layers(model).values():
        x = torch.randn(2, 5, layer.in_features)
        torch.testing.assert_close(layer.delta(x), x @ layer.delta_weight().T, atol=1e-5, rtol=1e-5)
        dense = layer.delta_weight()
        for e, channels in enumerate(layer.channels):  # expert e's rank-r update sits on its own channels
            block = layer.lora_B[e] @ layer.lora_A[e] * layer.scaling
            torch.testing.assert_close(dense[channels] if layer.side == "rows" else dense[:, channels], block)


def test_router_starts_neutral_then_routes_per_token_and_fades_to_one():
    torch.manual_seed(123)
    base = tiny_llama(500)
    with torch.no_grad():
        reference = base(IDS).logits
    inject_adapters(base, make_config("emtal", experts=4))
    with torch.no_grad():
        torch.testing.assert_close(base(IDS).logits, reference, atol=1e-6, rtol=1e-6)  # B = 0, W_r = 0
    model = adapted()
    router = next(layer.router for layer in adapter_layers(model).values())
    with torch.no_grad():
        routed = model(IDS).logits
    assert router.weights.shape == (3, 9, 4) and float(router.weights.std()) > 0
    torch.testing.assert_close(router.weights.sum(-1), torch.full((3, 9), 4.0))  # E · softmax
    alphas = []
    for step in range(10):
        adapters_on_step(model, step, 10)
        alphas.append(float(router.alpha))
    assert alphas == pytest.approx([1.0] * 8 + [0.5, 0.0])  # fade_start 0.8 of 10 steps
    unrouted = adapted(router=False)  # the same experts without a router: what the faded model computes
    fade(unrouted)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, unrouted(IDS).logits, atol=1e-6, rtol=1e-6)
        assert not torch.allclose(routed, model(IDS).logits)


def test_after_fading_merged_equals_unmerged_with_the_base_architecture():
    model = adapted()
    with pytest.raises(
        PolarVBLLError, match=r"merges after its router has faded \(alpha = 0\); this one is at alpha = 1$"
    ):
        merge_adapters(model)
    fade(model)
    with torch.no_grad():
        unmerged = model(IDS).logits
    merged = merge_and_unload(model)
    torch.manual_seed(123)
    base = tiny_llama(500)
    assert not adapter_layers(merged)
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in base.parameters())
    assert [type(m) for m in merged.modules()] == [type(m) for m in base.modules()]  # the base forward, no more
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, unmerged, atol=1e-5, rtol=1e-5)


def test_save_and_load_reproduce_outputs_bit_for_bit(tmp_path):
    model = adapted(fade_start=0.5)
    adapters_on_step(model, 6, 10)  # mid-fade: alpha 0.6
    save_adapter(model, tmp_path / "emtal")
    torch.manual_seed(123)
    fresh = tiny_llama(500)
    assert load_adapter(fresh, tmp_path / "emtal") == make_config("emtal", experts=4, fade_start=0.5)
    with torch.no_grad():
        assert torch.equal(fresh(IDS).logits, model(IDS).logits)
    layers = adapter_layers(fresh)
    assert all(float(layer.router.alpha) == pytest.approx(0.6) for layer in layers.values())


def test_bad_options_are_refused_in_one_line():
    with pytest.raises(PolarVBLLError, match="must list up_proj and down_proj"):
        make_config("emtal", target_modules=["q_proj"])
    with pytest.raises(PolarVBLLError, match="64 channels, not a multiple of experts=5"):
        inject_adapters(tiny_llama(500), make_config("emtal", experts=5))
    with pytest.raises(PolarVBLLError, match=r"fade_start must lie in \[0, 1\]"):
        make_config("emtal", fade_start=1.5)
    with pytest.raises(PolarVBLLError, match="an ensemble needs an adapter that .*'emtal' does not"):
        inject_adapters(tiny_llama(500), make_config("emtal"), members=2)
