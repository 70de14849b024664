"""TFB: the noise of its Gaussian against the closed form, σ = 0 is MAP, the σ search, save/load and resume."""

import math

import pytest
import torch

from polar_vbll.adapters import adapter_layers, inject_adapters, make_config
from polar_vbll.engine import evaluate_run, fit, load_run, refine
from polar_vbll.engine.inference import evaluate_components
from polar_vbll.errors import PolarVBLLError
from polar_vbll.models import tiny_backbone
from polar_vbll.uq import TFBConfig, TFBHead
from tests.engine.test_fit import assert_resume_is_exact, config, task_dir  # noqa: F401  (fixture)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["lora", "polar"])
def test_the_noise_is_the_official_gaussian_on_the_factor(kind):
    """The official parametrization: A' = VᵀA with B = U D Vᵀ, std σ / D_i on row i of A' (LoRA); Θ with std σ
    (PoLAR, X orthonormal). A draw adds s · B V ΔA' x (s · X ΔΘ Yᵀ x) to the output, whose variance per output j is
    s² σ² ‖x‖² Σ_i U_ji² (s² σ² ‖Yᵀx‖² Σ_i X_ji²): the flipout draws must have it."""
    torch.manual_seed(0)
    backbone = tiny_backbone()
    inject_adapters(backbone.model, make_config(kind, r=3, alpha=6.0))
    layer = next(iter(adapter_layers(backbone.model).values()))
    with torch.no_grad():
        if kind == "lora":
            layer.lora_B.normal_()
        else:
            layer.polar_theta.normal_()
    head = TFBHead(torch.zeros(2, 32), TFBConfig())
    head.attach(backbone)
    sigma = 0.3
    head.tfb_sigma.fill_(sigma)
    x = torch.randn(1, layer.in_features).expand(4, -1)
    mean = layer(x)
    generator = torch.Generator().manual_seed(1)
    with head.backbone_sample(backbone, 0, generator):  # one draw of the noise per forward (flipout)
        noise = torch.cat([layer(x) - mean for _ in range(10000)])  # 40000 draws
    if kind == "lora":
        u, d, _ = torch.linalg.svd(layer.lora_B, full_matrices=False)
        basis, inner = u * (d / (d + 1e-6)), x[0]
    else:
        basis, inner = layer.polar_X, x[0] @ layer.polar_Y
    expected = (basis**2).sum(1) * (layer.scaling * sigma) ** 2 * inner.pow(2).sum()
    torch.testing.assert_close(noise.var(0), expected, rtol=0.05, atol=0)
    assert noise.mean(0).abs().max() < 4 * (expected / len(noise)).sqrt().max()


@torch.no_grad()
def test_attaching_again_keeps_one_noise_hook_per_layer():
    draws = []
    for attachments in (1, 2):
        torch.manual_seed(0)
        backbone = tiny_backbone()
        inject_adapters(backbone.model, make_config("lora", r=3))
        layer = next(iter(adapter_layers(backbone.model).values()))
        layer.lora_B.normal_()
        head = TFBHead(torch.zeros(2, 32), TFBConfig())
        for _ in range(attachments):
            head.attach(backbone)
        head.tfb_sigma.fill_(0.3)
        with head.backbone_sample(backbone, 0, torch.Generator().manual_seed(1)):
            draws.append(layer(torch.ones(4, layer.in_features)))
    assert torch.equal(draws[0], draws[1])


def test_tfb_refuses_adapters_without_a_gaussian_factor():
    backbone = tiny_backbone()
    inject_adapters(backbone.model, make_config("dora", r=2))
    with pytest.raises(PolarVBLLError, match=r"tfb needs an adapter with gaussian_factor .*DoraLinear"):
        TFBHead(torch.zeros(2, 32), TFBConfig()).attach(backbone)


def test_sigma_zero_is_the_map_run_exactly(tiny_dir, task_dir, tmp_path):  # noqa: F811
    options = {"uq": "map", "steps": 3, "calibration_holdout": True, "calibration_size": 6}
    source = fit(config(tiny_dir, task_dir, **options), tmp_path / "map", progress=False)
    refined = refine(tmp_path / "map", tmp_path / "tfb", tfb=True, progress=False)
    assert refined.report["tfb"]["sigma"] > 0 and refined.report["metrics"] != source.report["metrics"]
    run = load_run(tmp_path / "tfb")
    run.head.tfb_sigma.zero_()
    again = evaluate_components(run.backbone, run.head, run.task, run.config)
    assert source.evaluation is not None
    assert torch.equal(torch.as_tensor(again["probs"]), torch.as_tensor(source.evaluation["probs"]))
    assert evaluate_run(tmp_path / "tfb", progress=False)["metrics"] == refined.report["metrics"]  # saved σ


@pytest.mark.parametrize("criterion", ["accuracy", "nll"])
def test_the_search_meets_its_tolerance_and_grows_with_it(criterion, tiny_dir, task_dir, tmp_path):  # noqa: F811
    options = {"uq": "map", "steps": 3, "calibration_holdout": True, "calibration_size": 6}
    fit(config(tiny_dir, task_dir, **options), tmp_path / "map", progress=False)
    found = []
    for tolerance in (0.001, 0.05, 0.5):
        tfb = {"tfb_criterion": criterion, "tfb_tolerance": tolerance, "tfb_sigma_max": 2.0}
        refined = refine(tmp_path / "map", tmp_path / f"tfb{tolerance}", tfb=True, progress=False, **tfb)
        report = refined.report["tfb"]
        assert report["degradation"] <= tolerance and report["anchor_examples"] == 6
        found.append(report["sigma"])
    assert found == sorted(found) and found[-1] > found[0]


@pytest.mark.parametrize(
    ("sigma_max", "tolerance", "sigma", "note"),
    [(1.0, 0.3, 0.296875, None), (0.2, 0.3, 0.2, "--tfb-sigma-max"), (1.0, 1e-3, 0.0, "MAP model")],
)
def test_the_search_evaluates_each_sigma_once_and_explains_its_ends(sigma_max, tolerance, sigma, note, monkeypatch):
    """A degradation equal to σ (probabilities of the pseudo-label exp(−σ)): bisection keeps the largest σ of its
    grid below the tolerance, reports the degradation measured there without measuring it again (one reference
    pass, then at most search_steps + 1 noisy ones), and a search that ends at either end of [0, σ_max] says so."""
    head = TFBHead(torch.zeros(2, 4), TFBConfig(criterion="nll", tolerance=tolerance, sigma_max=sigma_max))
    calls = []

    def anchor_probs(backbone, batches, value, seed=0):
        calls.append(value)
        head.tfb_sigma.fill_(value)
        kept = torch.tensor(math.exp(-value), dtype=torch.float64)
        return torch.stack([kept, 1 - kept])[None].float()

    monkeypatch.setattr(head, "anchor_probs", anchor_probs)
    found = head.post_hoc(None, [{}], 1)
    assert found["sigma"] == pytest.approx(sigma) and head.tfb_sigma.item() == pytest.approx(sigma)
    assert found["degradation"] == pytest.approx(sigma, abs=1e-6) and found["degradation"] <= tolerance
    assert len(calls) == len(set(calls)) <= head.config.search_steps + 2
    assert (note is None) == ("note" not in found) and (note is None or note in found["note"])


def test_a_tfb_fit_resumes_bit_identically(tiny_dir, task_dir, tmp_path):  # noqa: F811
    options = {"uq": {"method": "tfb", "search_steps": 3, "samples": 2}, "laplace_samples": 8}
    resumed = assert_resume_is_exact(config(tiny_dir, task_dir, **options), tmp_path, kill_at=3)
    assert resumed.report["tfb"]["sigma"] == load_run(tmp_path / "full").head.tfb_sigma.item()


def test_refine_tfb_from_the_command_line(tiny_dir, task_dir, tmp_path):  # noqa: F811
    import json

    from polar_vbll.cli import main

    fit(config(tiny_dir, task_dir, uq="map", steps=2, laplace_samples=8), tmp_path / "run", progress=False)
    argv = ["refine", str(tmp_path / "run"), "--out", str(tmp_path / "tfb"), "--tfb", "--tfb-samples", "3"]
    assert main([*argv, "--tfb-search-steps", "2", "--tfb-criterion", "nll", "--quiet"]) == 0
    saved = json.loads((tmp_path / "tfb" / "config.json").read_text())
    assert saved["uq"] == {**TFBConfig(samples=3, search_steps=2, criterion="nll").to_dict()}
    assert saved["post_hoc"] == ["tfb"]
    report = json.loads((tmp_path / "tfb" / "report.json").read_text())
    assert report["tfb"]["anchor_examples"] == 8  # no held-out examples: a seeded sample of laplace_samples
