import json
import re

import pytest

from polar_vbll.cli import main
from tests.conftest import write_jsonl

ROWS = [
    {"question": "Which is a colour?", "choices": ["red", "dog"], "answer": 0},
    {"question": "Pick the animal.", "choices": ["sky", "dog"], "answer": 1},
]


def test_data_list_shows_every_task_with_sizes(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "arc_e" in out and "train 2251, validation 570, test 2376" in out and "qa_oneline@1" in out


def test_data_show_prints_prompts_and_label_tokens(capsys, tiny_dir, tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", ROWS)
    assert main(["data", "show", str(path), "--model", str(tiny_dir), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "labels: ' A' -> token" in out and "question: Which is a colour? Choices: A. red. B. dog. Answer:" in out


def test_evaluate_from_the_command_line(capsys, tiny_dir, tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", ROWS)
    out_dir = tmp_path / "report"
    args = ["evaluate", "--model", str(tiny_dir), "--task", str(path), "--out", str(out_dir), "--quiet"]
    assert main(args) == 0
    report = json.loads((out_dir / "report.json").read_text())
    assert report["command"] == "polar-vbll " + " ".join(args) and report["n"] == 2
    assert "cls/acc" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([ROWS[0], {"question": "q", "choices": ["a", "b"], "answer": 9}], r"mine.jsonl:2: field 'answer': index 9"),
        (["{oops"], r"mine.jsonl:1: malformed JSON"),
    ],
)
def test_bad_data_gives_one_line_error(capsys, tiny_dir, tmp_path, rows, match):
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    capsys.readouterr()  # drop what the fixture printed
    assert main(["evaluate", "--model", str(tiny_dir), "--task", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("polar-vbll: error: ") and re.search(match, err)


def test_unknown_task(capsys):
    assert main(["evaluate", "--task", "nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_every_fit_option_has_a_working_flag():
    from dataclasses import fields

    from polar_vbll.cli import build_parser
    from polar_vbll.config import FitConfig

    args = build_parser().parse_args(
        "fit --adapter s2ft --uq temperature --temperature-scaling --dropout 0.2 --la-subset last_layer "
        "--blob-samples 0 --ensemble-size 2 --mc-samples 3 --calibration-size 4 --s2ft-head-ratio 0.5 "
        "--corda-task boolq --target-modules o_proj down_proj --no-lisa-train-embeddings".split()
    )
    options = {f.name: getattr(args, f.name) for f in fields(FitConfig) if f.name != "vbll"}
    config = FitConfig(**{k: v for k, v in options.items() if v is not None})
    assert config.temperature_scaling is True and config.dropout == 0.2 and config.la_subset == "last_layer"
    assert config.blob_samples == 0 and config.ensemble_size == 2 and config.calibration_size == 4
    assert config.target_modules == ["o_proj", "down_proj"] and config.lisa_train_embeddings is False
    assert config.adapter_options()["head_ratio"] == 0.5


def test_flags_are_parsed_by_the_fields_annotations():
    import argparse
    from typing import Literal

    from polar_vbll.cli.flags import flag_options

    assert flag_options(bool | None) == {"action": argparse.BooleanOptionalAction}
    assert flag_options(list[int]) == {"nargs": "+", "type": int}
    assert flag_options(list[str] | None) == {"nargs": "+", "type": str}
    assert flag_options(Literal["ipm", "kpm"]) == {"type": str, "choices": ["ipm", "kpm"]}
    assert flag_options(Literal["geoopt", "landing", "adamw"] | None)["choices"] == ["geoopt", "landing", "adamw"]
    assert flag_options(float | None) == {"type": float} and flag_options(int) == {"type": int}
