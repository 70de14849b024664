"""The OOD protocol on a tiny model: train on a 4-choice task, detect a 3-5-choice task and another 4-choice one."""

import json
import re

import pytest

from polar_vbll.cli import main
from polar_vbll.engine import FitConfig, evaluate_run, fit
from polar_vbll.errors import PolarVBLLError
from tests.conftest import write_jsonl

ANIMALS = ["dog", "cat", "cow", "owl", "bee", "ant"]


@pytest.fixture
def ood_setup(tiny_dir, tmp_path):
    def mc(n, offset, n_choices):
        return [
            {
                "question": f"Which one is a {ANIMALS[(i + offset) % 6]}?",
                "choices": [ANIMALS[(i + offset + k) % 6] for k in range(n_choices(i))],
                "answer": 0,
            }
            for i in range(n)
        ]

    write_jsonl(tmp_path / "id" / "train.jsonl", mc(16, 0, lambda i: 4))
    write_jsonl(tmp_path / "id" / "validation.jsonl", mc(12, 1, lambda i: 4))
    write_jsonl(tmp_path / "shifted.jsonl", mc(9, 2, lambda i: 3 + i % 3))  # 3, 4 or 5 choices
    write_jsonl(
        tmp_path / "far.jsonl",
        [{"question": "x" * (5 + i), "choices": ["1", "2", "3", "4"], "answer": 1} for i in range(7)],
    )
    config = FitConfig(
        model=str(tiny_dir), task=str(tmp_path / "id"), steps=2, batch_size=4, max_length=64, eval_batch_size=8
    )
    fit(config, tmp_path / "run", progress=False)
    return tmp_path


def test_ood_report_counts_dropped_items_and_scores_every_criterion(ood_setup):
    tmp = ood_setup
    report = evaluate_run(
        tmp / "run", ood=[str(tmp / "shifted.jsonl"), str(tmp / "far.jsonl")], out=tmp / "ood", progress=False
    )
    shifted, far = report["ood"]["shifted"], report["ood"]["far"]
    assert (shifted["n"], shifted["n_total"]) == (6, 9)  # the three 5-choice items are dropped
    assert (far["n"], far["n_total"]) == (7, 7)
    assert set(shifted["detection"]) == {"msp", "entropy", "max_logit", "energy", "mutual_info", "pred_variance"}
    assert set(shifted["detection"]["msp"]) == {"ood/auroc", "ood/aupr_in", "ood/aupr_out", "ood/fpr95"}
    assert shifted["best_criterion"] in shifted["detection"] and "cal/ece" in far["metrics"]
    page = (tmp / "ood" / "report.html").read_text()
    pngs = sorted(p.name for p in (tmp / "ood").glob("*.png"))
    assert pngs == ["ood_hist.png", "ood_roc.png", "reliability.png", "risk_coverage.png"]
    assert len(re.findall(r'<img alt="[^"]+" src="data:image/png;base64,[A-Za-z0-9+/=]{100,}">', page)) == 4
    assert all((tmp / "ood" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in pngs)
    assert "## Out-of-distribution" in (tmp / "ood" / "report.md").read_text()
    assert json.loads((tmp / "ood" / "report.json").read_text())["ood_best_criterion"] in shifted["detection"]


def test_ood_from_the_command_line_and_errors(ood_setup, capsys):
    tmp = ood_setup
    assert main(["evaluate", str(tmp / "run"), "--ood", str(tmp / "far.jsonl"), "--quiet"]) == 0
    assert "OOD far: 7/7 kept" in capsys.readouterr().out
    assert main(["evaluate", "--task", "sst2", "--ood", "arc_e"]) == 2
    assert "--ood needs a RUN_DIR" in capsys.readouterr().err
    with pytest.raises(PolarVBLLError, match="answers with"):
        evaluate_run(tmp / "run", ood=["sst2"], progress=False)
