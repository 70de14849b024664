"""Our LoRA and DoRA against PEFT's, with the same weights copied in."""

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model

from polar_vbll.adapters import adapter_layers, inject_adapters, make_config, merge_adapters
from polar_vbll.models import tiny_llama

IDS = torch.randint(3, 400, (3, 11), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_outputs_and_merged_weights_equal_peft(method):
    ours = tiny_llama(500)
    inject_adapters(ours, make_config(method, r=4, alpha=8))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in adapter_layers(ours).values():
            layer.lora_B.normal_(generator=gen)
            if method == "dora":
                layer.magnitude.mul_(1 + 0.1 * torch.randn(layer.magnitude.shape, generator=gen))
    peft_model = get_peft_model(
        tiny_llama(500),
        PeftLoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=method == "dora", lora_dropout=0.0
        ),
    )
    peft_state = peft_model.state_dict()
    copied = {}
    for name, layer in adapter_layers(ours).items():
        prefix = f"base_model.model.{name}."
        copied[prefix + "lora_A.default.weight"] = layer.lora_A.detach()
        copied[prefix + "lora_B.default.weight"] = layer.lora_B.detach()
        if method == "dora":
            copied[prefix + "lora_magnitude_vector.default.weight"] = layer.magnitude.detach()
    assert set(copied) == {k for k in peft_state if "lora_" in k}
    peft_model.load_state_dict(copied, strict=False)
    with torch.no_grad():
        expected = peft_model(IDS).logits
        torch.testing.assert_close(ours(IDS).logits, expected, atol=1e-5, rtol=1e-5)
        peft_merged = peft_model.merge_and_unload()
        merge_adapters(ours)
        for name, layer in adapter_layers(ours).items():
            torch.testing.assert_close(
                layer.base_layer.weight, peft_merged.get_submodule(name).weight, atol=1e-5, rtol=1e-5
            )
        torch.testing.assert_close(ours(IDS).logits, expected, atol=1e-5, rtol=1e-5)


def test_lora_init_distribution_matches_peft():
    ours = tiny_llama(500)
    inject_adapters(ours, make_config("lora", r=4))
    peft_model = get_peft_model(tiny_llama(500), PeftLoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    a_ours = torch.cat([layer.lora_A.flatten() for layer in adapter_layers(ours).values()])
    a_peft = torch.cat([v.flatten() for k, v in peft_model.state_dict().items() if "lora_A" in k])
    bound = 1 / 32**0.5  # kaiming_uniform(a=√5) on fan_in 32
    assert a_ours.abs().max() <= bound and a_peft.abs().max() <= bound
    assert abs(a_ours.std() - a_peft.std()) < 0.2 * a_peft.std()
    assert all((layer.lora_B == 0).all() for layer in adapter_layers(ours).values())
