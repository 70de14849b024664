"""Every adapter trains with every uncertainty head through ``fit``; runs reload exactly and resume exactly."""

import json

import pytest
import torch

from polar_vbll.adapters import adapter_state_dict
from polar_vbll.errors import PolarVBLLError
from polar_vbll.train import FitConfig, evaluate_run, fit
from tests.train.test_fit import config, log_lines, task_dir  # noqa: F401  (fixture)

OPTIONS = {
    "pissa": {},
    "corda": {"corda_samples": 8},
    "s2ft": {"s2ft_head_ratio": 0.25, "s2ft_channel_ratio": 0.1},
    "lisa": {"lisa_layers": 1, "lisa_interval": 2},
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


@pytest.mark.parametrize("adapter", ["corda", "s2ft", "lisa"])
def test_resume_is_exact(adapter, tiny_dir, task_dir, tmp_path):  # noqa: F811
    options = {"adapter": adapter, "uq": "map", **OPTIONS[adapter]}
    full = fit(config(tiny_dir, task_dir, **options), tmp_path / "full", progress=False)

    def kill_at_five(step, logs):
        if step == 5:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        fit(config(tiny_dir, task_dir, **options), tmp_path / "killed", progress=False, callbacks=[kill_at_five])
    resumed = fit(out=tmp_path / "killed", resume=True, progress=False)
    assert resumed.report["metrics"] == full.report["metrics"]
    assert log_lines(tmp_path / "killed") == log_lines(tmp_path / "full")
    expected = adapter_state_dict(full.backbone.model)
    assert adapter_state_dict(resumed.backbone.model).keys() == expected.keys()
    for key, value in adapter_state_dict(resumed.backbone.model).items():
        assert torch.equal(value, expected[key]), key


def test_adapter_options_reach_the_adapter_and_are_validated():
    assert FitConfig(adapter="s2ft").adapter_options() == {
        "head_ratio": 0.1,
        "channel_ratio": 0.01,
        "selection": "random",
        "seed": 0,
    }
    assert FitConfig(adapter="pissa", r=4, target_modules=["q_proj"]).adapter_options()["target_modules"] == ["q_proj"]
    with pytest.raises(PolarVBLLError, match=r"head_ratio must lie in \(0, 1\]"):
        FitConfig(adapter="s2ft", s2ft_head_ratio=0.0)
    with pytest.raises(PolarVBLLError, match="mode must be 'ipm' or 'kpm'"):
        FitConfig(adapter="corda", corda_mode="all")


def test_export_lora_from_the_command_line(tiny_dir, task_dir, tmp_path):  # noqa: F811
    from polar_vbll.adapters import load_adapter
    from polar_vbll.cli import main
    from polar_vbll.models import load_backbone
    from polar_vbll.train import load_run

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
