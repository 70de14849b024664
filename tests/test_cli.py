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

    from polar_vbll.adapters import ADAPTERS
    from polar_vbll.cli import build_parser
    from polar_vbll.cli.commands import fit_options
    from polar_vbll.config import FitConfig
    from polar_vbll.uq import UQ_METHODS

    parser = build_parser()
    fit_parser = parser._subparsers._group_actions[0].choices["fit"]
    flags = {flag for action in fit_parser._actions for flag in action.option_strings}
    for f in fields(FitConfig):  # every option, and every option of every registered method, has a flag
        assert "--" + f.name.replace("_", "-") in flags, f.name
    top_level = {f.name for f in fields(FitConfig)}  # seed: the adapter's is the run's
    adapter_fields = [f.name for method in ADAPTERS for f in fields(ADAPTERS.get(method).config)]
    shared_by_adapters = {name for name in adapter_fields if adapter_fields.count(name) > 1}
    assert {"r", "alpha", "target_modules", "dropout", "experts"} <= shared_by_adapters
    for registry, shared in ((ADAPTERS, shared_by_adapters), (UQ_METHODS, set())):
        section = "adapter" if registry is ADAPTERS else "uq"
        listed = FitConfig.help()[section].split("(")[1].split(")")[0].split(", ")
        own = [name for name in registry if registry.get(name).config.__module__.startswith("polar_vbll.")]
        assert sorted(listed) == sorted(own), section  # the help names every method the package registers
        for method in registry:
            for f in fields(registry.get(method).config):
                if f.name in top_level:
                    continue
                flag = f.name if f.name in shared else f"{method}_{f.name}"
                assert "--" + flag.replace("_", "-") in flags, (method, f.name)

    def config(line: str) -> FitConfig:
        return FitConfig.from_dict(fit_options(parser.parse_args(["fit", *line.split()])))

    cfg = config(
        "--adapter s2ft --uq temperature --dropout 0.2 --calibration-size 4 --s2ft-head-ratio 0.5 "
        "--target-modules o_proj down_proj --steps 7"
    )
    assert cfg.adapter.to_dict() == {
        "method": "s2ft",
        "target_modules": ["o_proj", "down_proj"],
        "dropout": 0.2,
        "head_ratio": 0.5,
        "channel_ratio": 0.01,
        "selection": "random",
        "seed": 0,
    }
    assert cfg.uq.method == "temperature" and cfg.post_hoc == ["temperature"] and cfg.calibration_size == 4
    assert cfg.steps == 7
    assert config("--adapter lisa --no-lisa-train-embeddings").adapter.train_embeddings is False
    assert config("--adapter dora --uq ensemble --ensemble-size 2").uq.size == 2
    # today's spellings of options that moved into a method's table
    assert config("--uq laplace --la-subset last_layer").uq.subset == "last_layer"
    assert config("--uq mc_dropout --mc-samples 3").uq.samples == 3
    assert config("--uq mc_dropout --mc-dropout-samples 4").uq.samples == 4
    assert config("--theta diagonal").adapter.theta == "diagonal"
    assert config("--adapter corda --corda-task boolq").adapter.covariance_task == "boolq"
    assert config("--uq blob --blob-samples 0").uq.samples == 0
    assert config("--vbll-prior-scale 2 --laplace").uq.prior_scale == 2.0
    assert config("--laplace --temperature-scaling --calibration-holdout").post_hoc == [
        "last_layer_laplace",
        "temperature",
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--adapter lora --pissa-niter 2", "--pissa-niter: not an option of adapter 'lora'"),
        ("--uq map --ensemble-size 4", "--ensemble-size: not an option of uq 'map'"),
        ("--uq mc_dropout --mc-samples 0", "--mc-dropout-samples: must be >= 1, got 0"),  # its name today
        ("--adapter s2ft --s2ft-head-ratio 0", r"S2FTConfig.head_ratio must lie in \(0, 1\]"),
        ("--uq map --laplace", "--post-hoc: uq 'map' takes the post-hoc steps temperature, not last_layer_laplace"),
        ("--post-hoc temperature laplace_lora", "uq 'vbll' takes .*, not laplace_lora"),
        ("--post-hoc nope", "not nope"),
        ("--uq laplace --post-hoc temperature laplace_lora", r"temperature\) must come last"),
    ],
)
def test_a_flag_of_another_method_or_out_of_range_is_one_line(capsys, line, message):
    assert main(["fit", "--out", "never-written", *line.split()]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err


def test_flags_are_parsed_by_the_fields_annotations():
    import argparse
    from typing import Literal

    from polar_vbll.cli.flags import flag_options

    assert flag_options(bool | None) == {"action": argparse.BooleanOptionalAction}
    assert flag_options(list[int]) == {"nargs": "+", "action": "extend", "type": int}
    assert flag_options(list[str] | None) == {"nargs": "+", "action": "extend", "type": str}
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default=None, **flag_options(str | list[str]))
    assert parser.parse_args(["--task", "a", "--task", "b", "c"]).task == ["a", "b", "c"]  # repeated flags add up
    assert parser.parse_args([]).task is None
    assert flag_options(Literal["ipm", "kpm"]) == {"type": str, "choices": ["ipm", "kpm"]}
    assert flag_options(Literal["geoopt", "landing", "adamw"] | None)["choices"] == ["geoopt", "landing", "adamw"]
    assert flag_options(float | None) == {"type": float} and flag_options(int) == {"type": int}
