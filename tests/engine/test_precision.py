"""bf16 training: it tracks fp32, keeps PoLAR on its manifold and every master state in fp32, is recorded, resumes
exactly, and works with every adapter and uncertainty method."""

import json

import pytest
import torch
from safetensors import safe_open

from polar_vbll.adapters import adapter_state_dict
from polar_vbll.cli import main
from polar_vbll.engine import FitConfig, evaluate_run, fit, refine
from polar_vbll.errors import PolarVBLLError
from polar_vbll.fields import ConfigFieldError
from polar_vbll.models import precision
from tests.engine.test_fit import assert_resume_is_exact, config, log_lines, task_dir  # noqa: F401  (fixture)

#: |loss_bf16 − loss_fp32| per step of the same 6-step run, relative to the fp32 loss: bf16 keeps 8 mantissa bits
#: (rounding ≈ 0.4 % per op); on the tiny model the largest deviation measured was 4e-4 (PoLAR-VBLL) and 2e-4
#: (LoRA-MAP), so 5e-3 leaves a 10x margin and still fails a run whose bf16 path diverges
LOSS_TOLERANCE = 5e-3


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POLAR_VBLL_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize(("adapter", "uq"), [("polar", "vbll"), ("lora", "map")])
def test_bf16_fit_tracks_the_fp32_loss(adapter, uq, tiny_dir, task_dir, tmp_path):  # noqa: F811
    runs = {
        p: fit(config(tiny_dir, task_dir, adapter=adapter, uq=uq, precision=p), tmp_path / p, progress=False)
        for p in ("fp32", "bf16")
    }
    fp32, bf16 = (log_lines(tmp_path / p) for p in ("fp32", "bf16"))
    for a, b in zip(fp32, bf16, strict=True):
        assert abs(a["loss"] - b["loss"]) <= LOSS_TOLERANCE * abs(a["loss"]), (a, b)
    assert [a["loss"] for a in fp32] != [b["loss"] for b in bf16]  # it really computed in bf16
    assert abs(runs["bf16"].report["metrics"]["cls/nll"] - runs["fp32"].report["metrics"]["cls/nll"]) <= 0.05


def test_bf16_keeps_polar_on_the_stiefel_manifold_and_master_state_in_fp32(tiny_dir, task_dir, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    result = fit(config(tiny_dir, task_dir, adapter="polar", uq="vbll", precision="bf16"), run, progress=False)
    state = adapter_state_dict(result.backbone.model)
    factors = [v for k, v in state.items() if k.endswith(("polar_X", "polar_Y"))]
    assert factors and all(v.dtype == torch.float32 for v in state.values())
    for factor in factors:
        gram = factor.T @ factor
        assert torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0])) <= 1e-5
    assert all(p.dtype == torch.float32 for p in result.head.parameters())
    with safe_open(str(run / "checkpoint" / "state.safetensors"), "pt") as handle:  # optimizer moments
        dtypes = {handle.get_tensor(key).dtype for key in handle.keys() if key.startswith("state.optimizers")}
    assert dtypes == {torch.float32}


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_resolved_and_recorded_in_the_config_and_report(native, monkeypatch, tiny_dir, task_dir, tmp_path):  # noqa: F811
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: native)
    expected = "bf16" if native else "fp32"
    run = tmp_path / "run"
    result = fit(config(tiny_dir, task_dir, uq="map", steps=2, precision="auto"), run, progress=False)
    assert result.config.precision == expected
    assert json.loads((run / "config.json").read_text())["precision"] == expected
    report = json.loads((run / "report.json").read_text())
    assert report["settings"]["precision"] == expected == report["model"]["precision"]
    assert report["config"]["precision"] == expected
    assert report["config"]["base_dtype"] == (expected if native else None)  # bf16 compute stores the base in bf16
    assert report["model"]["base_dtype"] == expected == report["settings"]["base_dtype"]


def test_bf16_resume_is_exact(tiny_dir, task_dir, tmp_path):  # noqa: F811
    options = {"adapter": "polar", "uq": "vbll", "precision": "bf16"}
    resumed = assert_resume_is_exact(config(tiny_dir, task_dir, **options), tmp_path, kill_at=3)
    assert resumed.config.precision == "bf16" and resumed.config.base_dtype == "bf16"


ADAPTER_OPTIONS = {
    "pissa": {},
    "dora": {},
    "corda": {"corda_samples": 8},
    "s2ft": {"s2ft_head_ratio": 0.25, "s2ft_channel_ratio": 0.1},
    "lisa": {"lisa_layers": 1, "lisa_interval": 2},
    "ilora": {"ilora_experts": 2},
    "emtal": {"emtal_experts": 2},
}


@pytest.mark.parametrize(
    ("adapter", "uq"),
    [(adapter, "map") for adapter in ADAPTER_OPTIONS]
    + [("lora", uq) for uq in ("mc_dropout", "ensemble", "laplace", "blob", "scalabl", "tfb", "temperature")]
    + [("polar", "blob"), ("polar", "laplace")],
)
def test_every_adapter_and_method_trains_in_bf16(adapter, uq, tiny_dir, task_dir, tmp_path):  # noqa: F811
    options = {"adapter": adapter, "uq": uq, "steps": 2, "laplace_samples": 8, "calibration_size": 6}
    options.update(ADAPTER_OPTIONS.get(adapter, {}))  # base_dtype unset: bf16 but for LISA, which trains the base
    result = fit(config(tiny_dir, task_dir, precision="bf16", **options), tmp_path / "run", progress=False)
    assert result.config.base_dtype == (None if adapter == "lisa" else "bf16")
    metrics = result.report["metrics"]
    assert 0.0 <= metrics["cls/acc"] <= 1.0 and torch.isfinite(torch.tensor(metrics["cls/nll"]))
    assert evaluate_run(tmp_path / "run", progress=False)["metrics"] == metrics


def test_evaluate_and_refine_take_another_precision(tiny_dir, task_dir, tmp_path):  # noqa: F811
    options = {"uq": "map", "steps": 2, "calibration_holdout": True, "calibration_size": 6}
    run = fit(config(tiny_dir, task_dir, precision="bf16", **options), tmp_path / "run", progress=False)
    same = evaluate_run(tmp_path / "run", progress=False)
    assert same["metrics"] == run.report["metrics"] and same["settings"]["precision"] == "bf16"
    fp32 = evaluate_run(tmp_path / "run", progress=False, precision="fp32")
    assert fp32["settings"]["precision"] == "fp32" == fp32["model"]["precision"]
    assert fp32["settings"]["base_dtype"] == "fp32"
    assert fp32["metrics"]["cls/nll"] == pytest.approx(run.report["metrics"]["cls/nll"], abs=0.05)
    assert fp32["metrics"] != run.report["metrics"]
    refined = refine(tmp_path / "run", tmp_path / "ts", temperature_scaling=True, precision="fp32", progress=False)
    assert refined.config.precision == "fp32"
    assert json.loads((tmp_path / "ts" / "config.json").read_text())["precision"] == "fp32"
    argv = ["evaluate", str(tmp_path / "run"), "--precision", "fp32", "--out", str(tmp_path / "e"), "--quiet"]
    assert main(argv) == 0
    assert json.loads((tmp_path / "e" / "report.json").read_text())["metrics"] == fp32["metrics"]


def test_precision_options_are_validated(tiny_dir, task_dir, capsys):  # noqa: F811
    with pytest.raises(ConfigFieldError, match="base_dtype: bf16 needs precision bf16"):
        FitConfig(base_dtype="bf16")
    with pytest.raises(ConfigFieldError, match="lisa trains the base's own"):
        FitConfig(adapter="lisa", precision="bf16", base_dtype="bf16")
    assert FitConfig(precision="bf16", base_dtype="fp32").base_dtype == "fp32"  # asked for: kept
    with pytest.raises(PolarVBLLError, match="precision"):
        FitConfig.from_dict({"precision": "fp16"})
    with pytest.raises(SystemExit) as exit_code:
        main(["fit", "--precision", "fp16"])
    assert exit_code.value.code == 2
    assert "argument --precision: invalid choice: 'fp16'" in capsys.readouterr().err
