"""``conformal``: a run's sets and abstention calibrated on examples it did not train on, stored, measured and used
by ``predict_run``."""

import json

import numpy as np
import pytest

from polar_vbll.cli import main
from polar_vbll.conformal import calibrate_abstention, calibrate_sets
from polar_vbll.engine import fit, predict_run
from polar_vbll.engine.build import training_items
from polar_vbll.engine.decisions import conformalize_run
from polar_vbll.engine.inference import predict
from polar_vbll.errors import PolarVBLLError
from polar_vbll.outputs import read_marker
from tests.conftest import write_jsonl
from tests.engine.test_fit import config, task_dir, toy_rows  # noqa: F401  (task_dir is a fixture)


@pytest.fixture
def held_out_run(tiny_dir, task_dir, tmp_path):  # noqa: F811
    write_jsonl(task_dir / "test.jsonl", toy_rows(10, 5))
    run = fit(config(tiny_dir, task_dir, calibration_holdout=True, calibration_size=10, steps=2), tmp_path / "run",
              progress=False)  # fmt: skip
    return run


def test_conformal_calibrates_on_the_held_out_examples_and_stores_what_it_measured(held_out_run):
    run = held_out_run
    with pytest.raises(PolarVBLLError, match="^--method aps: MAPIE scores two-class calibration labels with lac only"):
        conformalize_run(run.out, method="aps", progress=False)
    record = conformalize_run(run.out, alpha=0.2, method="lac", delta=0.2, progress=False)
    held_out = training_items(run.task, run.config)[1]
    probs = predict(run.backbone, run.head, run.task, held_out, 8, 64, run.config.seed)["probs"]
    labels = np.array([item.answer for item in held_out])
    assert record["sets"] == calibrate_sets(probs, labels, 0.2, "lac", seed=run.config.seed).to_dict()
    assert record["abstention"] == calibrate_abstention(probs, labels, 0.2, 0.2).to_dict()
    assert record["calibration"]["n"] == 10 and record["evaluation"]["split"] == "validation"
    measured = record["evaluation"]
    assert measured["n"] == 8 and 0 <= measured["set/coverage"] <= 1 and sum(measured["set/sizes"]) == pytest.approx(1)
    stored = json.loads((run.out / "conformal.json").read_text())
    assert stored["sets"] == record["sets"] and "conformal.json" in read_marker(run.out)["entries"]


def test_the_runs_report_shows_the_decisions_beside_its_plots(held_out_run):
    out = held_out_run.out
    plots_before = sorted(path.name for path in out.glob("*.png"))
    record = conformalize_run(out, alpha=0.2, delta=0.2, progress=False)
    report = json.loads((out / "report.json").read_text())
    assert report["decisions"] == json.loads((out / "conformal.json").read_text()) == record
    markdown, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "## Decisions (α = 0.2, δ = 0.2)" in markdown and "![Decisions" in markdown
    assert f"coverage {record['evaluation']['set/coverage']:.4f}" in markdown
    assert "LAC prediction sets" in page and page.count("<img") == len(plots_before) + 1
    png = (out / "decisions.png").read_bytes()
    assert png.startswith(b"\x89PNG") and sorted(path.name for path in out.glob("*.png")) == sorted(
        [*plots_before, "decisions.png"]
    )
    assert "decisions.png" in read_marker(out)["entries"]


def test_predict_run_gives_each_question_its_set_and_whether_it_abstains(held_out_run):
    run = held_out_run
    assert "set" not in predict_run(run.out).rows()[0]  # nothing stored yet
    conformalize_run(run.out, alpha=0.2, progress=False)
    predictions = predict_run(run.out)
    rows = predictions.rows()
    assert predictions.sets.shape == predictions.probs.shape and predictions.answered.shape == (8,)
    for row, chosen, answered in zip(rows, predictions.sets, predictions.answered, strict=True):
        words = [f"{word.strip()}: {text}" for word, text in zip(predictions.label_words, ["no", "yes"], strict=True)]
        assert row["set"] == ", ".join(word for word, c in zip(words, chosen, strict=True) if c)
        assert row["abstain"] is (not answered)


def test_conformal_from_the_command_line_with_a_calibration_split(held_out_run, capsys):
    out = held_out_run.out
    assert main(["conformal", str(out), "--calibration-split", "test", "--alpha", "0.2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "calibrated on split test: lac sets at α 0.2" in printed
    assert "validation, 8 examples: set coverage" in printed
    assert json.loads((out / "conformal.json").read_text())["command"].startswith("polar-vbll conformal ")


def test_conformal_refuses_training_examples_in_one_line(held_out_run, tiny_dir, task_dir, tmp_path):  # noqa: F811
    for split, match in (("train", "the run trained on that split"), ("validation", "also the evaluation split")):
        with pytest.raises(PolarVBLLError, match=f"^--calibration-split {split}: {match}"):
            conformalize_run(held_out_run.out, calibration_split=split, progress=False)
    plain = fit(config(tiny_dir, task_dir, steps=1), tmp_path / "plain", progress=False)
    with pytest.raises(PolarVBLLError, match="held no training examples out .* pass --calibration-split"):
        conformalize_run(plain.out, progress=False)
    (held_out_run.out / "conformal.json").write_text('{"sets": {}}')
    with pytest.raises(PolarVBLLError, match="conformal.json: not a conformal record written by `polar-vbll"):
        predict_run(held_out_run.out)
