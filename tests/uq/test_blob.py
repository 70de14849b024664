"""BLoB: closed-form KL, flipout samples with the posterior's moments, the KL reweighting schedule."""

import math

import pytest
import torch
from torch import nn

from polar_vbll.adapters import LoraLinear, PolarLinear, make_config
from polar_vbll.errors import PolarVBLLError
from polar_vbll.uq import BlobHead, flipout_noise, kl_to_prior


def test_kl_matches_torch_closed_form():
    gen = torch.Generator().manual_seed(0)
    mean, sigma = torch.randn(4, 6, generator=gen), torch.rand(4, 6, generator=gen) + 0.01
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, sigma), torch.distributions.Normal(0.0, 0.2)
    ).sum()
    torch.testing.assert_close(kl_to_prior(mean, sigma).float(), expected)


@pytest.mark.parametrize("kind", ["lora", "polar"])
def test_flipout_samples_have_the_posterior_moments(kind):
    torch.manual_seed(0)
    base = nn.Linear(6, 5, bias=False)
    config = make_config(kind, r=3, alpha=3.0)
    layer = LoraLinear(base, config) if kind == "lora" else PolarLinear(base, config)
    with torch.no_grad():
        if kind == "lora":
            layer.lora_B.normal_()
            out_factor, mean_shape = layer.lora_B, layer.lora_A.shape
        else:
            layer.polar_theta.normal_()
            out_factor, mean_shape = layer.polar_X, layer.polar_theta.shape
    layer.blob_rho = nn.Parameter(torch.rand(mean_shape) * 0.5 + 0.5)
    x = torch.randn(1, 6)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        noise = torch.cat([flipout_noise(layer, x.expand(4, 6), gen) for _ in range(10000)])  # 40000 draws
        sigma2 = layer.blob_rho**4
        inner = x[0] if kind == "lora" else x[0] @ layer.polar_Y  # what the posterior factor multiplies
        # each example sees factor + σ ⊙ E ⊙ s rᵀ, i.e. N(factor, σ²): output variance Σ_k U_jk² Σ_i σ_ki² v_i²
        expected_var = (out_factor**2 @ (sigma2 @ inner**2)) * layer.scaling**2
    assert noise.mean(0).abs().max() < 4 * (expected_var / len(noise)).sqrt().max()
    torch.testing.assert_close(noise.var(0), expected_var, rtol=0.06, atol=0)


def test_kl_reweighting_sums_to_one_per_epoch_and_grows():
    head = BlobHead(torch.zeros(2, 4), n_train=40, batch_size=8)  # M = 5 batches per epoch
    weights = [head.kl_weight(step) for step in range(5)]
    assert weights == sorted(weights) and sum(weights) == pytest.approx(1 - 1 / (2**6 - 1) * 1, rel=1e-9)
    assert head.kl_weight(5) == weights[0]
    assert BlobHead(torch.zeros(2, 4), n_train=10**5, batch_size=1).kl_weight(10**5 - 1) == pytest.approx(0.5)
    assert math.isfinite(BlobHead(torch.zeros(2, 4), n_train=10**5, batch_size=1).kl_weight(0))


def test_blob_rejects_adapters_without_a_posterior_factor():
    from polar_vbll.adapters import inject_adapters
    from polar_vbll.models import tiny_backbone

    backbone = tiny_backbone()
    inject_adapters(backbone.model, make_config("dora", r=2))
    with pytest.raises(
        PolarVBLLError, match=r"blob needs an adapter with gaussian_factor .*; DoraLinear does not declare it"
    ):
        BlobHead(torch.zeros(2, 32), 10, 2).attach(backbone)
