"""ScalaBL: its KL and predictive noise against closed forms, the parameter count, training, save/load, resume."""

import pytest
import torch

from polar_vbll.adapters import adapter_layers, inject_adapters, make_config
from polar_vbll.engine import evaluate_run
from polar_vbll.errors import PolarVBLLError
from polar_vbll.models import tiny_backbone
from polar_vbll.uq import ScalaBLHead
from polar_vbll.uq.scalabl import kl_to_standard_normal, posterior_std, row_norms_and_directions
from tests.engine.test_fit import assert_resume_is_exact, config, task_dir  # noqa: F401  (fixture)


def attached(kind: str, theta: str = "full"):
    torch.manual_seed(0)
    backbone = tiny_backbone()
    options = {"theta": theta} if kind == "polar" else {}
    inject_adapters(backbone.model, make_config(kind, r=3, alpha=6.0, **options))
    head = ScalaBLHead(torch.zeros(2, 32), n_train=16, batch_size=4)
    head.attach(backbone)
    backbone.eval()  # no training noise: only backbone_sample draws
    layers = list(adapter_layers(backbone.model).values())
    with torch.no_grad():
        for layer in layers:
            if kind == "lora":
                layer.lora_B.normal_()
            else:
                layer.polar_theta.normal_()
            layer.scalabl_log_sigma.uniform_(-1.5, -0.5)
    return backbone, head, layers


def test_kl_is_the_closed_form_over_the_row_norms():
    _, head, layers = attached("lora")
    expected = torch.zeros((), dtype=torch.float64)
    for layer in layers:
        norms = layer.lora_A.detach().norm(dim=1).double()
        q = torch.distributions.Normal(norms, posterior_std(layer).detach().double())
        expected += torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum()
    torch.testing.assert_close(head.kl_divergence(), expected)
    torch.testing.assert_close(
        kl_to_standard_normal(torch.zeros(3), torch.ones(3)), torch.zeros((), dtype=torch.float64)
    )


def test_row_norms_and_directions_rebuild_the_factor():
    mean = torch.randn(3, 5)
    norms, directions = row_norms_and_directions(mean)
    torch.testing.assert_close(norms[:, None] * directions, mean)
    torch.testing.assert_close(directions.norm(dim=1), torch.ones(3))
    diag_norms, signs = row_norms_and_directions(torch.tensor([-2.0, 0.5]))
    assert diag_norms.tolist() == [2.0, 0.5] and signs.tolist() == [-1.0, 1.0]


@torch.no_grad()
@pytest.mark.parametrize(("kind", "theta"), [("lora", "full"), ("polar", "full"), ("polar", "diagonal")])
def test_the_predictive_noise_has_the_posterior_variance(kind, theta):
    """A draw of s adds U diag(σ ⊙ ε) V̂ P x · scaling: per output j the variance is scaling² Σ_i U_ji² σ_i² (V̂_i·Px)²,
    and every example of a batch draws its own ε."""
    backbone, head, layers = attached(kind, theta)
    layer = layers[0]
    x = torch.randn(1, 1, layer.in_features).expand(4000, 2, -1)  # 4000 examples of 2 identical tokens
    mean = layer(x)
    with head.backbone_sample(backbone, 0, torch.Generator().manual_seed(1)):
        noise = layer(x) - mean
    factor = layer.gaussian_factor()
    _, directions = row_norms_and_directions(factor.mean)
    projected = factor.project_in(x[0, 0])
    coordinates = projected * directions if directions.dim() == 1 else directions @ projected
    expected = (factor.out_factor**2) @ (posterior_std(layer) ** 2 * coordinates**2) * factor.scaling**2
    torch.testing.assert_close(noise[:, 0].var(0), expected, rtol=0.08, atol=1e-12)
    torch.testing.assert_close(noise[:, 0], noise[:, 1])  # one weight sample per sequence
    assert not torch.allclose(noise[0, 0], noise[1, 0])  # and one per example


def test_scalabl_adds_r_parameters_per_layer_and_refuses_other_adapters():
    _, _, layers = attached("lora")
    assert all(layer.scalabl_log_sigma.shape == (3,) for layer in layers)
    backbone = tiny_backbone()
    inject_adapters(backbone.model, make_config("dora", r=2))
    with pytest.raises(PolarVBLLError, match=r"scalabl needs an adapter with gaussian_factor .*DoraLinear"):
        ScalaBLHead(torch.zeros(2, 32), 10, 2).attach(backbone)


def test_a_scalabl_fit_trains_saves_and_resumes_bit_identically(tiny_dir, task_dir, tmp_path):  # noqa: F811
    run_config = config(tiny_dir, task_dir, adapter="polar", uq={"method": "scalabl", "samples": 3})
    resumed = assert_resume_is_exact(run_config, tmp_path, kill_at=3)
    logs = (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()
    assert all('"kl"' in line for line in logs)
    assert evaluate_run(tmp_path / "full", progress=False)["metrics"] == resumed.report["metrics"]
    assert resumed.report["metrics"]["unc/epistemic_mean"] >= 0
