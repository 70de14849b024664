"""Every adapter trains with every uncertainty head through ``fit``; runs reload exactly and resume exactly."""

import json

import pytest
import torch

from polar_vbll.adapters import adapter_state_dict
from polar_vbll.engine import FitConfig, evaluate_run, fit
from polar_vbll.errors import PolarVBLLError
from tests.engine.test_fit import assert_resume_is_exact, config, log_lines, task_dir  # noqa: F401  (fixture)

OPTIONS = {
    "pissa": {},
    "corda": {"corda_samples": 8},
    "s2ft": {"s2ft_head_ratio": 0.25, "s2ft_channel_ratio": 0.1},
    "lisa": {"lisa_layers": 1, "lisa_interval": 2},
    "ilora": {"ilora_experts": 2, "ilora_load_balance": 0.1},
    "emtal": {"emtal_experts": 2},
}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POLAR_VBLL_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("uq", ["map", "vbll"])
@pytest.mark.parametrize("adapter", list(OPTIONS))
def test_adapter_with_head_trains_and_reloads_to_its_report(adapter, uq, tiny_dir, task_dir, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    result = fit(config(tiny_dir, task_dir, adapter=adapter, uq=uq, steps=4, **OPTIONS[adapter]), run, progress=False)
    assert result.report["method"]["adapter"] == adapter
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["method"] == adapter
    again = evaluate_run(run, progress=False)
    assert again["metrics"] == result.report["metrics"]
    if adapter == "corda":
        assert len(list((tmp_path / "cache" / "corda").glob("*.safetensors"))) == 1  # reused on the next run


@pytest.mark.parametrize("adapter", ["corda", "s2ft", "lisa", "ilora", "emtal"])
def test_resume_is_exact(adapter, tiny_dir, task_dir, tmp_path):  # noqa: F811
    options = {"adapter": adapter, "uq": "map", **OPTIONS[adapter]}
    assert_resume_is_exact(config(tiny_dir, task_dir, **options), tmp_path, kill_at=5)


def test_adapter_options_reach_the_adapter_and_are_validated():
    from polar_vbll.adapters import LoraConfig, PissaConfig, S2FTConfig

    assert FitConfig(adapter="s2ft", seed=3).adapter == S2FTConfig(seed=3, dropout=0.0)  # the run's seed unless given
    assert FitConfig(adapter={"method": "s2ft", "seed": 5}, seed=3).adapter.seed == 5
    nested = FitConfig(adapter={"method": "pissa", "r": 4, "target_modules": ["q_proj"]})
    assert nested.adapter == PissaConfig(r=4, target_modules=["q_proj"], dropout=0.0)
    flat = FitConfig.from_dict({"adapter": "pissa", "r": 4, "target_modules": ["q_proj"], "pissa_niter": 2})
    assert flat.adapter == PissaConfig(r=4, target_modules=["q_proj"], niter=2, dropout=0.0)
    assert FitConfig(adapter="lora", uq="mc_dropout").adapter.dropout == 0.1  # the uq method's default
    assert FitConfig(adapter={"method": "lora", "dropout": 0.3}, uq="mc_dropout").adapter.dropout == 0.3
    assert FitConfig(adapter=LoraConfig(r=2), uq="mc_dropout").adapter == LoraConfig(r=2, dropout=0.1)
    with pytest.raises(PolarVBLLError, match=r"adapter.dropout: uq 'mc_dropout' needs dropout > 0"):
        FitConfig(adapter=LoraConfig(dropout=0.0), uq="mc_dropout")
    with pytest.raises(PolarVBLLError, match=r"head_ratio must lie in \(0, 1\]"):
        FitConfig.from_dict({"adapter": "s2ft", "s2ft_head_ratio": 0.0})
    with pytest.raises(PolarVBLLError, match="FitConfig.adapter.mode: expected one of 'ipm', 'kpm', got 'all'"):
        FitConfig.from_dict({"adapter": "corda", "corda_mode": "all"})
    with pytest.raises(PolarVBLLError, match="FitConfig.pissa_niter: not an option of adapter 'lora'"):
        FitConfig.from_dict({"adapter": "lora", "pissa_niter": 2})
    FitConfig.from_dict({"adapter": "lora", "pissa_niter": 0, "theta": "full"})  # defaults of others: 0.2 files
    with pytest.raises(PolarVBLLError, match="unknown option.* niter for FitConfig.adapter"):
        FitConfig(adapter={"method": "lora", "niter": 2})


def test_export_lora_from_the_command_line(tiny_dir, task_dir, tmp_path):  # noqa: F811
    from polar_vbll.adapters import load_adapter
    from polar_vbll.cli import main
    from polar_vbll.engine import load_run
    from polar_vbll.models import load_backbone

    fit(config(tiny_dir, task_dir, adapter="pissa", uq="map", steps=3), tmp_path / "run", progress=False)
    assert main(["export-lora", str(tmp_path / "run"), str(tmp_path / "lora")]) == 0
    trained = load_run(tmp_path / "run").backbone
    original = load_backbone(str(tiny_dir))
    load_adapter(original.model, tmp_path / "lora")
    ids = torch.randint(3, 400, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(original.features(ids, mask), trained.features(ids, mask), atol=1e-5, rtol=1e-5)
    with pytest.raises(SystemExit):
        main(["export-lora"])


@pytest.mark.parametrize(
    ("adapter", "uq"),
    [
        ("lora", "mc_dropout"),
        ("polar", "ensemble"),
        ("dora", "temperature"),
        ("s2ft", "mc_dropout"),
        ("lora", "blob"),
        ("polar", "blob"),
        ("pissa", "blob"),
        ("lora", "scalabl"),
        ("polar", "scalabl"),
        ("pissa", "tfb"),
        ("polar", "tfb"),
        ("lora", "laplace"),
        ("s2ft", "laplace"),
        ("ilora", "laplace"),
        ("ilora", "mc_dropout"),
        ("emtal", "temperature"),
    ],
)
def test_uq_methods_train_and_reload_to_their_report(adapter, uq, tiny_dir, task_dir, tmp_path):  # noqa: F811
    cheap = {"ensemble": {"size": 2}, "mc_dropout": {"samples": 3}, "blob": {"samples": 3}, "scalabl": {"samples": 3}}
    cheap["tfb"] = {"samples": 3, "search_steps": 2}
    options = {"calibration_size": 6, **OPTIONS.get(adapter, {})}
    if uq == "tfb":  # its anchor examples: a sample of 8 training examples (no held-out ones here)
        options["laplace_samples"] = 8
    uq_config = {"method": uq, **cheap.get(uq, {})}
    result = fit(
        config(tiny_dir, task_dir, adapter=adapter, uq=uq_config, steps=3, **options), tmp_path / "run", progress=False
    )
    again = evaluate_run(tmp_path / "run", progress=False)
    assert again["metrics"] == result.report["metrics"]
    assert result.report["metrics"]["unc/epistemic_mean"] > 0 or uq == "temperature"
    if uq == "laplace":
        assert result.report["posterior"]["prior_precision"] > 0 and result.report["posterior"]["examples"] == 24
    if uq == "temperature":
        assert result.report["calibration"]["held_out"] == 6 and result.report["calibration"]["temperature"] > 0
        assert float(result.head.temperature) == result.report["calibration"]["temperature"] != 1.0


def test_temperature_on_top_of_vbll_and_held_out_examples_are_not_trained_on(tiny_dir, task_dir, tmp_path):  # noqa: F811
    from polar_vbll.data import get_task
    from polar_vbll.engine.build import training_items

    cfg = config(tiny_dir, task_dir, temperature_scaling=True, calibration_size=6, steps=2)
    train, held = training_items(get_task(str(task_dir)), cfg)
    assert len(train) == 18 and len(held) == 6 and not {id(x) for x in train} & {id(x) for x in held}
    result = fit(cfg, tmp_path / "run", progress=False)
    assert result.report["calibration"]["temperature"] > 0


def test_blob_posterior_mean_and_its_training_log(tiny_dir, task_dir, tmp_path):  # noqa: F811
    result = fit(
        config(tiny_dir, task_dir, adapter="lora", uq="blob", blob_samples=0, steps=3), tmp_path / "r", progress=False
    )
    assert result.report["metrics"]["unc/epistemic_mean"] == pytest.approx(0.0, abs=1e-6)  # one deterministic pass
    logs = log_lines(tmp_path / "r")
    assert all(entry["kl"] > 0 for entry in logs) and logs[0]["kl_weight"] < logs[1]["kl_weight"]
    rho = [v for k, v in adapter_state_dict(result.backbone.model).items() if k.endswith("blob_rho")]
    assert len(rho) == 4  # q and v of 2 blocks


def test_bad_uq_adapter_combinations(tiny_dir, task_dir, tmp_path):  # noqa: F811
    with pytest.raises(PolarVBLLError, match="uq 'ensemble' needs an adapter with shared_base .*'pissa' does not"):
        fit(config(tiny_dir, task_dir, adapter="pissa", uq="ensemble", steps=1), tmp_path / "a", progress=False)
    with pytest.raises(
        PolarVBLLError,
        match=r"uq 'mc_dropout' needs an adapter with wraps_linear \(wraps nn.Linear modules.*'lisa' does not",
    ):
        fit(config(tiny_dir, task_dir, adapter="lisa", uq="mc_dropout", steps=1), tmp_path / "b", progress=False)
    with pytest.raises(PolarVBLLError, match="calibration_size=100 leaves no training examples of 24"):
        fit(config(tiny_dir, task_dir, uq="temperature", calibration_size=100), tmp_path / "c", progress=False)


def test_corda_covariances_are_cached_and_reused(tiny_dir, task_dir, tmp_path, monkeypatch):  # noqa: F811
    import polar_vbll.adapters.corda as corda

    options = {"adapter": "corda", "uq": "map", "steps": 1, **OPTIONS["corda"]}
    first = fit(config(tiny_dir, task_dir, **options), tmp_path / "a", progress=False)

    def no_recompute(*args, **kwargs):
        raise AssertionError("covariances were recomputed instead of read from the cache")

    monkeypatch.setattr(corda, "collect_covariances", no_recompute)
    second = fit(config(tiny_dir, task_dir, **options), tmp_path / "b", progress=False)
    assert second.report["metrics"] == first.report["metrics"]
    with pytest.raises(AssertionError, match="recomputed"):  # other settings, another cache entry
        fit(config(tiny_dir, task_dir, **{**options, "corda_samples": 4}), tmp_path / "c", progress=False)
