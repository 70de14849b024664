"""Every fit report carries the untrained model's figures on the same examples, and warns when fine-tuning hurt."""

import json

import pytest

from polar_vbll.engine import evaluate_run, fit, refine
from polar_vbll.engine.zero_shot import fine_tune_warning
from polar_vbll.evaluation import evaluate
from tests.engine.test_fit import config, task_dir  # noqa: F401  (fixture)


@pytest.mark.parametrize("adapter", ["polar", "pissa"])
def test_the_report_holds_the_zero_shot_model_scored_on_the_same_examples(adapter, tiny_dir, task_dir, tmp_path):  # noqa: F811
    run = fit(config(tiny_dir, task_dir, adapter=adapter, uq="map", steps=2), tmp_path / "run", progress=False)
    reference = evaluate(str(tiny_dir), str(task_dir), "validation", batch_size=8, max_length=64, progress=False)
    zero = run.report["zero_shot"]
    for key in ("cls/acc", "cal/ece", "cls/nll"):
        assert zero[key] == pytest.approx(reference.metrics[key], abs=1e-5)
    assert json.loads((tmp_path / "run" / "zero_shot.json").read_text()) == zero
    assert "| zero-shot |" in (tmp_path / "run" / "report.md").read_text()
    # a refinement keeps the reference; evaluating the run elsewhere drops it (other examples)
    refined = refine(tmp_path / "run", tmp_path / "ts", laplace=True, progress=False)
    assert refined.report["zero_shot"] == zero
    assert "zero_shot" not in evaluate_run(tmp_path / "run", progress=False)


def test_no_zero_shot_when_switched_off(tiny_dir, task_dir, tmp_path):  # noqa: F811
    run = fit(config(tiny_dir, task_dir, uq="map", steps=1, zero_shot=False), tmp_path / "run", progress=False)
    assert "zero_shot" not in run.report and not (tmp_path / "run" / "zero_shot.json").exists()


def test_the_warning_names_what_got_worse():
    zero = {"cls/acc": 0.8, "cls/nll": 0.5}
    assert fine_tune_warning(zero, {"cls/acc": 0.9, "cls/nll": 0.4}) is None
    assert fine_tune_warning(zero, {"cls/acc": 0.7, "cls/nll": 0.4}) == (
        "fine-tuning did not help: accuracy 0.7000 below zero-shot 0.8000"
    )
    warning = fine_tune_warning(zero, {"cls/acc": 0.7, "cls/nll": 0.6})
    assert warning is not None and "NLL 0.6000 above zero-shot 0.5000" in warning and "\n" not in warning
