"""PiSSA and CorDA: initializations equal PEFT's, the residual keeps the model's function, and save/load/export
restore the residual base correctly."""

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from peft.tuners.lora.config import CordaConfig as PeftCordaConfig
from peft.tuners.lora.corda import preprocess_corda

from polar_vbll.adapters import (
    adapter_layers,
    collect_covariances,
    export_lora,
    inject_adapters,
    load_adapter,
    make_config,
    merge_adapters,
    save_adapter,
)
from polar_vbll.errors import PolarVBLLError
from polar_vbll.models import tiny_llama

IDS = torch.randint(3, 400, (3, 11), generator=torch.Generator().manual_seed(0))
TARGETS = ["q_proj", "v_proj"]


def run_samples(model, n=6):
    """A run_model callback: ``n`` single-sample forwards of different lengths."""
    gen = torch.Generator().manual_seed(5)

    def run():
        for i in range(n):
            model(torch.randint(3, 400, (1, 5 + i), generator=gen))
        return n

    return run


def covariances_for(model):
    names = [n for n, m in model.named_modules() if n.endswith(tuple(TARGETS))]
    return collect_covariances(model, names, run_samples(model))


def peft_factors(peft_model):
    state = peft_model.state_dict()
    return {
        k.removeprefix("base_model.model.")
        .replace(".lora_A.default.weight", ".lora_A")
        .replace(".lora_B.default.weight", ".lora_B"): v
        for k, v in state.items()
        if "lora_" in k
    }


def assert_same_init(ours, peft_model, factor_atol=1e-5):
    expected = peft_factors(peft_model)
    for name, layer in adapter_layers(ours).items():
        torch.testing.assert_close(layer.lora_A, expected[f"{name}.lora_A"], atol=factor_atol, rtol=1e-4)
        torch.testing.assert_close(layer.lora_B, expected[f"{name}.lora_B"], atol=factor_atol, rtol=1e-4)
        residual = peft_model.base_model.model.get_submodule(name).base_layer.weight
        torch.testing.assert_close(layer.base_layer.weight, residual, atol=1e-5, rtol=1e-5)


def test_pissa_init_equals_peft_and_keeps_the_function():
    base = tiny_llama(500)
    with torch.no_grad():
        expected = base(IDS).logits
    inject_adapters(base, make_config("pissa", r=4, alpha=8))
    peft_model = get_peft_model(
        tiny_llama(500), PeftLoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights="pissa")
    )
    assert_same_init(base, peft_model)
    with torch.no_grad():
        torch.testing.assert_close(base(IDS).logits, expected, atol=1e-5, rtol=1e-5)


def decaying_spectrum(model):
    """Give the target weights a fast-decaying spectrum so that randomized SVD finds the top-r subspace exactly."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(tuple(TARGETS)):
                out, inp = module.weight.shape
                u = torch.linalg.qr(torch.randn(out, out, generator=gen))[0]
                v = torch.linalg.qr(torch.randn(inp, inp, generator=gen))[0]
                k = min(out, inp)
                s = 4.0 ** -torch.arange(k, dtype=torch.float32)
                module.weight.copy_(u[:, :k] * s @ v[:, :k].T)
    return model


def test_pissa_randomized_svd_matches_peft_within_tolerance():
    ours = decaying_spectrum(tiny_llama(500))
    inject_adapters(ours, make_config("pissa", r=4, alpha=8, niter=4))
    peft_model = get_peft_model(
        decaying_spectrum(tiny_llama(500)),
        PeftLoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights="pissa_niter_4"),
    )
    expected = peft_factors(peft_model)
    for name, layer in adapter_layers(ours).items():
        # singular vectors are defined up to sign: compare the product and the residual
        ba = expected[f"{name}.lora_B"] @ expected[f"{name}.lora_A"]
        torch.testing.assert_close(layer.lora_B @ layer.lora_A, ba, atol=1e-5, rtol=1e-4)
        residual = peft_model.base_model.model.get_submodule(name).base_layer.weight
        torch.testing.assert_close(layer.base_layer.weight, residual, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["ipm", "kpm"])
def test_corda_init_equals_peft_with_the_same_covariance(mode, tmp_path):
    ours = tiny_llama(500)
    with torch.no_grad():
        expected = ours(IDS).logits
    covariances = covariances_for(ours)
    inject_adapters(ours, make_config("corda", r=4, alpha=8, mode=mode), covariances=covariances)
    theirs = tiny_llama(500)
    config = PeftLoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=TARGETS,
        init_lora_weights="corda",
        corda_config=PeftCordaConfig(corda_method=mode, covariance_file=str(tmp_path / "cov.pt")),
    )
    torch.save(covariances, tmp_path / "cov.pt")  # PEFT's own file format, written only for this comparison
    preprocess_corda(theirs, config)
    assert_same_init(ours, get_peft_model(theirs, config), factor_atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(ours(IDS).logits, expected, atol=1e-5, rtol=1e-5)


def test_collected_covariance_is_the_mean_scaled_gram_matrix():
    model = tiny_llama(500)
    inputs = []
    handle = model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, a, o: inputs.append(a[0][0]))
    covariances = covariances_for(model)
    handle.remove()
    direct = sum((x / x.abs().max()).T @ (x / x.abs().max()) for x in inputs) / len(inputs)
    torch.testing.assert_close(covariances["model.layers.0.self_attn.q_proj"], direct)


def test_corda_kpm_keeps_the_dominant_components_in_the_base():
    model = tiny_llama(500)
    covariances = covariances_for(model)
    inject_adapters(model, make_config("corda", r=2, mode="kpm"), covariances=covariances)
    layer = adapter_layers(model)["model.layers.0.self_attn.q_proj"]
    update = layer.scaling * layer.init_B @ layer.init_A
    assert torch.linalg.matrix_norm(update, 2) < torch.linalg.matrix_norm(layer.base_layer.weight, 2) / 5


def perturb(model):
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lora_A.add_(0.05 * torch.randn(layer.lora_A.shape, generator=gen))
            layer.lora_B.add_(0.05 * torch.randn(layer.lora_B.shape, generator=gen))
    return model


@pytest.mark.parametrize("method", ["pissa", "corda"])
def test_save_load_restores_the_residual_and_export_gives_plain_lora(method, tmp_path):
    model = tiny_llama(500)
    data = {"covariances": covariances_for(model)} if method == "corda" else {}
    inject_adapters(model, make_config(method, r=4, alpha=8), **data)
    perturb(model)
    with torch.no_grad():
        expected = model(IDS).logits
    save_adapter(model, tmp_path / "adapter")
    fresh = tiny_llama(500)  # the original weights, as a fresh load gives them
    load_adapter(fresh, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(fresh(IDS).logits, expected)
    export_lora(model, tmp_path / "lora")
    plain = tiny_llama(500)
    config = load_adapter(plain, tmp_path / "lora")
    assert config.method == "lora" and config.r == 8
    with torch.no_grad():
        torch.testing.assert_close(plain(IDS).logits, expected, atol=1e-5, rtol=1e-5)
        merge_adapters(plain)  # the merged original weights equal the merged residual weights
        merge_adapters(model)
        for name, layer in adapter_layers(model).items():
            merged = adapter_layers(plain)[name].base_layer.weight
            torch.testing.assert_close(layer.base_layer.weight, merged, atol=1e-5, rtol=1e-5)


def test_corda_needs_covariances_and_bad_options():
    with pytest.raises(PolarVBLLError, match="CorDA needs input covariances"):
        inject_adapters(tiny_llama(500), make_config("corda", r=2))
    with pytest.raises(PolarVBLLError, match="mode must be 'ipm' or 'kpm'"):
        make_config("corda", mode="top")
    with pytest.raises(PolarVBLLError, match="niter must be a non-negative integer"):
        make_config("pissa", niter=-1)
    with pytest.raises(PolarVBLLError, match="adapter 'lora' takes no initialization data"):
        inject_adapters(tiny_llama(500), make_config("lora", r=2), covariances={})
    with pytest.raises(PolarVBLLError, match="export_lora converts PiSSA/CorDA adapters"):
        model = tiny_llama(500)
        inject_adapters(model, make_config("lora", r=2))
        export_lora(model, "unused")
