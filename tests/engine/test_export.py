"""``export``: a served model folder that gives the run's probabilities without the adapter code."""

import json

import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from polar_vbll.cli import main
from polar_vbll.engine import export_run, fit, load_exported, load_run, predict_run
from polar_vbll.errors import PolarVBLLError
from tests.engine.test_fit import config, task_dir  # noqa: F401  (task_dir is a fixture)

QUESTIONS = [
    {"question": "Is red a colour?", "choices": ["no", "yes"]},
    {"question": "Is tree a colour?", "choices": ["no", "yes"], "answer": 0},
    {"question": "Is sky a colour?", "choices": ["no", "yes"]},
]


@pytest.mark.parametrize(
    ("adapter", "uq"),
    [("polar", "vbll"), ("lora", "map"), ("dora", "map"), ("pissa", "vbll"), ("corda", "map"), ("s2ft", "map"),
     ("emtal", "map"), ("polar", "temperature")],
)  # fmt: skip
def test_the_export_predicts_the_runs_probabilities(adapter, uq, tiny_dir, task_dir, tmp_path):  # noqa: F811
    options = {"calibration_size": 6} if uq == "temperature" else {}
    run = fit(config(tiny_dir, task_dir, adapter=adapter, uq=uq, steps=3, **options), tmp_path / "run", progress=False)
    out = export_run(run.out, tmp_path / "export")
    expected = predict_run(load_run(run.out, precision="fp32"), QUESTIONS)
    exported = load_exported(out).predict(QUESTIONS)
    np.testing.assert_allclose(exported.probs, expected.probs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(exported.uncertainty["total"], expected.uncertainty["total"], atol=1e-5, rtol=0)
    plain = AutoModelForCausalLM.from_pretrained(out / "model")  # transformers alone reads the merged model
    assert not any("lora" in name or "polar" in name for name, _ in plain.named_parameters())
    card = (out / "README.md").read_text()
    assert f"{adapter} + {uq} on" in card and "## Metrics on the run's evaluation split" in card


def test_export_keeps_the_conformal_thresholds_and_refuses_adapter_sampling_heads(tiny_dir, task_dir, tmp_path):  # noqa: F811
    from polar_vbll.engine.decisions import conformalize_run

    run = fit(config(tiny_dir, task_dir, calibration_holdout=True, calibration_size=8, steps=2), tmp_path / "run",
              progress=False)  # fmt: skip
    conformalize_run(run.out, alpha=0.2, progress=False)
    assert main(["export", str(run.out), str(tmp_path / "export")]) == 0
    rows = load_exported(tmp_path / "export").predict(QUESTIONS).rows()
    assert all("set" in row and "abstain" in row for row in rows)
    dropout = fit(config(tiny_dir, task_dir, uq="mc_dropout", steps=1), tmp_path / "dropout", progress=False)
    with pytest.raises(PolarVBLLError, match="^uq 'mc_dropout' predicts through the adapter's layers"):
        export_run(dropout.out, tmp_path / "dropout-export")
    assert not (tmp_path / "dropout-export").exists()


def test_a_partial_or_corrupt_export_fails_in_one_line(tiny_dir, task_dir, tmp_path):  # noqa: F811
    run = fit(config(tiny_dir, task_dir, steps=1), tmp_path / "run", progress=False)
    out = export_run(run.out, tmp_path / "export")
    (out / "head.safetensors").write_bytes((out / "head.safetensors").read_bytes()[:40])
    with pytest.raises(PolarVBLLError, match="head.safetensors"):
        load_exported(out)
    (out / "model" / "config.json").unlink()
    with pytest.raises(PolarVBLLError, match=r"not a complete polar-vbll export \(model/config.json missing\)"):
        load_exported(out)
    record = json.loads((out / "polar_vbll_export.json").read_text())
    assert record["source_run"] == str(run.out) and record["command"].startswith("polar-vbll export")
