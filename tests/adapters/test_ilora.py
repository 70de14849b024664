"""iLoRA: K = 1 is LoRA, gates on the simplex that depend on their own instance only, exact save/load, the
representation against Hugging Face's hidden states, the load-balancing term against its closed form, K-FAC's
linear maps against autograd, and the refusals (merge, ensembles, BLoB)."""

import pytest
import torch

from polar_vbll.adapters import (
    adapter_auxiliary_loss,
    adapter_layers,
    inject_adapters,
    load_adapter,
    make_config,
    merge_adapters,
    save_adapter,
)
from polar_vbll.engine import FitConfig
from polar_vbll.errors import PolarVBLLError
from polar_vbll.models import tiny_llama

IDS = torch.randint(3, 400, (3, 9), generator=torch.Generator().manual_seed(0))


def adapted(method: str, seed: int = 0, **options) -> torch.nn.Module:
    """A tiny Llama (fixed base) with ``method``, initialized from ``seed``, B and the router made non-zero."""
    torch.manual_seed(123)
    model = tiny_llama(500)
    torch.manual_seed(seed)
    inject_adapters(model, make_config(method, r=4, **options))
    with torch.no_grad():
        for part in ("lora_B", "router"):  # one stream each, so that LoRA's B equal iLoRA's
            gen = torch.Generator().manual_seed(seed + 1)
            for name, p in model.named_parameters():
                if p.requires_grad and part in name:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def gate(model):
    return next(iter(adapter_layers(model).values())).instance_gate


def test_one_expert_is_lora_exactly_outputs_and_gradients():
    lora, ilora = adapted("lora"), adapted("ilora", experts=1, gate_layer=1)
    lora_out, ilora_out = lora(IDS).logits, ilora(IDS).logits
    assert torch.equal(lora_out, ilora_out)
    lora_out.square().mean().backward()
    ilora_out.square().mean().backward()
    lora_params = {n: p for n, p in lora.named_parameters() if p.requires_grad}
    ilora_params = {n: p for n, p in ilora.named_parameters() if p.requires_grad}
    assert {n for n in ilora_params if "router" not in n} == set(lora_params)
    for name, p in lora_params.items():
        assert torch.equal(p, ilora_params[name]) and torch.equal(p.grad, ilora_params[name].grad), name
    assert all(float(p.grad.abs().max()) == 0 for n, p in ilora_params.items() if "router" in n)  # softmax of one


def test_parameter_count_is_lora_of_rank_r_plus_the_router():
    lora, ilora = adapted("lora"), adapted("ilora", experts=2)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(ilora) - count(lora) == 2 * (32 + 1)  # one router (K, d) + bias for the whole model, d = 32


@pytest.mark.parametrize("top_k", [None, 1, 2])
def test_gate_lies_on_the_simplex_and_top_k_keeps_k(top_k):
    model = adapted("ilora", experts=4, top_k=top_k)
    model(IDS)
    gates = gate(model).gates
    assert gates.shape == (3, 4) and bool((gates >= 0).all())
    torch.testing.assert_close(gates.sum(-1), torch.ones(3))
    assert bool(((gates > 0).sum(-1) == (top_k or 4)).all())
    assert gates.std() > 0  # the router is non-zero: instances get different mixtures


def test_gate_and_output_of_an_instance_depend_on_that_instance_only():
    model = adapted("ilora", experts=2)
    other = IDS.clone()
    other[1:] = torch.randint(3, 400, other[1:].shape, generator=torch.Generator().manual_seed(7))
    first = model(IDS).logits
    first_gates = gate(model).gates
    second = model(other).logits
    torch.testing.assert_close(gate(model).gates[0], first_gates[0], atol=1e-6, rtol=0)
    assert not torch.allclose(gate(model).gates[1:], first_gates[1:])
    torch.testing.assert_close(second[0], first[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer", [0, 1])  # HF's last entry (layer 2 here) has the final norm applied; ours does not
def test_representation_is_the_masked_mean_of_the_frozen_models_hidden_state(layer):
    base = tiny_llama(500)
    mask = torch.ones_like(IDS)
    mask[0, :3] = 0  # left padding
    with torch.no_grad():
        hidden = base(IDS, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
    expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    inject_adapters(base, make_config("ilora", r=4, experts=2, gate_layer=layer))
    with torch.no_grad():
        for name, p in base.named_parameters():
            if "lora_B" in name:
                p.normal_()  # the representation must not see the adapters
        got = gate(base).representation(base.get_decoder(), (), {"input_ids": IDS, "attention_mask": mask})
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_save_and_load_reproduce_outputs_bit_for_bit(tmp_path):
    model = adapted("ilora", experts=2, gate_layer=1, top_k=1)
    save_adapter(model, tmp_path / "ilora")
    torch.manual_seed(123)
    fresh = tiny_llama(500)
    config = load_adapter(fresh, tmp_path / "ilora")
    assert config == make_config("ilora", r=4, experts=2, gate_layer=1, top_k=1)
    with torch.no_grad():
        assert torch.equal(fresh(IDS).logits, model(IDS).logits)


def test_load_balancing_term_against_its_closed_form_and_its_gradient_reaches_the_router():
    model = adapted("ilora", experts=4, load_balance=0.5)
    instance_gate = gate(model)
    instance_gate.gates = torch.full((6, 4), 0.25)
    assert float(instance_gate.balance_loss()) == pytest.approx(0.0, abs=1e-7)  # equal use
    instance_gate.gates = torch.nn.functional.one_hot(torch.zeros(6, dtype=torch.long), 4).float()
    assert float(instance_gate.balance_loss()) == pytest.approx(3.0)  # one expert takes all: K − 1
    model(IDS)
    mean = instance_gate.gates.mean(0)
    term = adapter_auxiliary_loss(model)
    assert term.item() == pytest.approx(0.5 * (4 * (mean**2).sum().item() - 1), rel=1e-6)
    term.backward()
    assert float(instance_gate.router.weight.grad.abs().sum()) > 0
    assert adapter_auxiliary_loss(adapted("ilora", experts=4)) is None  # off by default


def test_kfac_linear_maps_give_autograd_gradients():
    model = adapted("ilora", experts=2)
    layer = next(iter(adapter_layers(model).values()))
    seen = {}

    def keep(module, inputs, output):
        if output.requires_grad:  # not the gate's frozen representation pass
            seen["x"] = inputs[0]
            output.register_hook(lambda grad: seen.update(go=grad))

    layer.register_forward_hook(keep)
    model(IDS).logits.square().mean().backward()
    for linear_map in layer.linear_maps():
        a, g = linear_map.inputs_and_grads(seen["x"], seen["go"])
        expected = linear_map.weight.grad
        torch.testing.assert_close(
            g.reshape(-1, g.shape[-1]).T @ a.reshape(-1, a.shape[-1]), expected, atol=1e-6, rtol=1e-4
        )


def test_refusals_name_the_reason():
    model = adapted("ilora", experts=2)
    with pytest.raises(PolarVBLLError, match="iLoRA's ΔW depends on each input's gate"):
        merge_adapters(model)
    with pytest.raises(PolarVBLLError, match="no gate for this batch; call the model"):
        fresh = adapted("ilora", experts=2)
        next(iter(adapter_layers(fresh).values()))(torch.zeros(2, 5, 32))
    with pytest.raises(PolarVBLLError, match="an ensemble needs an adapter that .*'ilora' does not"):
        inject_adapters(tiny_llama(500), make_config("ilora", r=4, experts=2), members=2)
    with pytest.raises(PolarVBLLError, match="needs an adapter with gaussian_factor .*'ilora' does not"):
        FitConfig(adapter="ilora", uq="blob")
    with pytest.raises(PolarVBLLError, match="experts must be a positive divisor of r=8, got 3"):
        make_config("ilora", experts=3)
    with pytest.raises(PolarVBLLError, match=r"top_k must lie in \[1, experts=4\], got 5"):
        make_config("ilora", top_k=5)
    with pytest.raises(PolarVBLLError, match="gate_layer=9 exceeds the model's 2 layers"):
        inject_adapters(tiny_llama(500), make_config("ilora", r=4, experts=2, gate_layer=9))
