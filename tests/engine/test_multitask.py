"""Multi-task fits: the step schedule, one adapter with a head per task, per-task run folders, resume, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from polar_vbll.cli import main
from polar_vbll.engine import FitConfig, evaluate_run, fit, load_run, refine
from polar_vbll.engine.multitask import task_schedule, task_shares
from polar_vbll.errors import PolarVBLLError
from tests.conftest import write_jsonl
from tests.engine.test_fit import WORDS, assert_resume_is_exact, config, task_dir  # noqa: F401  (a fixture)

KINDS = ["colour", "colour", "colour", "animal", "animal", "other", "other", "other"]


def kind_rows(n, offset):
    """Rows of a 3-class toy task: is the word a colour, an animal or neither?"""
    choices = ["colour", "animal", "other"]
    return [
        {
            "question": f"What is {WORDS[(i + offset) % 8]}?",
            "choices": choices,
            "answer": choices.index(KINDS[(i + offset) % 8]),
        }
        for i in range(n)
    ]


@pytest.fixture
def kind_dir(tmp_path):
    write_jsonl(tmp_path / "kind" / "train.jsonl", kind_rows(40, 1))
    write_jsonl(tmp_path / "kind" / "validation.jsonl", kind_rows(6, 2))
    return tmp_path / "kind"


def multi(tiny_dir, task_dir, kind_dir, **options):  # noqa: F811
    return config(tiny_dir, task_dir, **{"task": [str(task_dir), str(kind_dir)], "uq": "map", **options})


@pytest.mark.parametrize("sampling", ["balanced", "proportional", "temperature"])
def test_the_schedule_keeps_every_prefix_within_one_step_of_its_shares(sampling):
    sizes = [24, 40, 7]
    shares = task_shares(sizes, sampling, 2.0)
    expected = {
        "balanced": [1, 1, 1],
        "proportional": sizes,
        "temperature": [n**0.5 for n in sizes],
    }[sampling]
    assert np.allclose(shares, np.array(expected) / sum(expected))
    tasks, local = task_schedule(tuple(shares), 200)
    counts = np.zeros(3)
    for step, (task, own) in enumerate(zip(tasks, local)):
        assert own == counts[task]  # a task's local steps are 0, 1, 2, ... in order
        counts[task] += 1
        assert np.all(np.abs(counts - (step + 1) * np.array(shares)) < 1 + 1e-9)
    longer = task_schedule(tuple(shares), 300)
    assert longer[0][:200] == tasks and longer[1][:200] == local  # an extended run keeps its steps
    assert task_schedule((1.0,), 5) == ((0,) * 5, tuple(range(5)))  # one task: the single-task steps


def test_a_list_of_one_task_is_the_single_task_run(task_dir):  # noqa: F811
    assert FitConfig(task=[str(task_dir)]).task == str(task_dir)
    assert FitConfig(task=["sst2", "boolq"], uq="map").task_names == ["sst2", "boolq"]


@pytest.mark.parametrize(
    "options, field",
    [
        ({"uq": "mc_dropout"}, "task"),
        ({"uq": "ensemble"}, "task"),
        ({"uq": "map", "template": "plain"}, "template"),
        ({"uq": "map", "task_sampling": "temperature", "task_temperature": 0.0}, "task_temperature"),
    ],
)
def test_a_multi_task_config_refuses_what_cannot_be_per_task(options, field):
    with pytest.raises(PolarVBLLError, match=f"FitConfig.{field}"):
        FitConfig(task=["sst2", "boolq"], **options)
    with pytest.raises(PolarVBLLError, match="distinct"):
        FitConfig(task=["sst2", "sst2"], uq="map")


def test_a_multi_task_fit_writes_a_run_per_task_and_their_means(tiny_dir, task_dir, kind_dir, tmp_path):  # noqa: F811
    run = fit(multi(tiny_dir, task_dir, kind_dir, steps=8), tmp_path / "run", progress=False)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert list(report["tasks"]) == ["toy", "kind"]
    assert {name: entry["steps"] for name, entry in report["tasks"].items()} == {"toy": 4, "kind": 4}  # balanced
    logged = [json.loads(line)["task"] for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert logged == ["toy", "kind"] * 4
    for key in ("cls/acc", "cal/ece", "cls/nll"):
        assert report["metrics"][key] == pytest.approx(np.mean([e["metrics"][key] for e in report["tasks"].values()]))
    assert "## Tasks" in (tmp_path / "run" / "report.md").read_text()
    # each task folder is a complete single-task run: its report scores its own head on its own task
    for name, classes in (("toy", 2), ("kind", 3)):
        folder = tmp_path / "run" / "tasks" / name
        own = json.loads((folder / "report.json").read_text())
        assert own["metrics"] == report["tasks"][name]["metrics"] and own["multi_task_run"] == str(tmp_path / "run")
        assert len((folder / "train_log.jsonl").read_text().splitlines()) == 4
        assert run.tasks[name].head.linear.weight.shape[0] == classes
        again = evaluate_run(tmp_path / "run", task=name, progress=False)
        assert again["metrics"] == own["metrics"]  # the run of that task, reloaded
    # the adapter is shared: both task folders hold the same weights
    first, second = (load_run(tmp_path / "run", task=name) for name in ("toy", str(kind_dir)))
    for key, value in first.backbone.model.state_dict().items():
        assert torch.equal(value, second.backbone.model.state_dict()[key]), key
    # one load, every head over one backbone: predict picks the task's head
    loaded = load_run(tmp_path / "run")
    assert loaded.tasks["kind"].backbone is loaded.tasks["toy"].backbone
    for name in ("toy", "kind"):
        probs = loaded.predict(task=name, limit=4).probs
        assert np.allclose(probs, run.tasks[name].evaluation["probs"][:4], atol=1e-6)
    with pytest.raises(PolarVBLLError, match="multi-task run of toy, kind; no task given"):
        loaded.predict(limit=2)
    with pytest.raises(PolarVBLLError, match="no task given"):
        evaluate_run(tmp_path / "run", progress=False)
    with pytest.raises(PolarVBLLError, match="refine one task's run folder"):
        refine(tmp_path / "run", tmp_path / "refined", temperature_scaling=True)


def test_a_step_moves_its_own_task_head_only(tiny_dir, task_dir, kind_dir, tmp_path):  # noqa: F811
    """A step of one task leaves the other task's head where it was (its gradients reach its own head only); read
    from the checkpoint written after every step, which holds every head."""
    heads = {}

    def snapshot(step, logs):
        heads[step] = (logs["task"], load_file(tmp_path / "run" / "checkpoint" / "head.safetensors"))

    run_config = multi(tiny_dir, task_dir, kind_dir, steps=5, checkpoint_every=1)
    fit(run_config, tmp_path / "run", progress=False, callbacks=[snapshot])
    owner = {"heads.0.": "toy", "heads.1.": "kind"}
    for step in (2, 3, 4, 5):
        task, after = heads[step]
        before = heads[step - 1][1]
        moved = {key[:8] for key in after if not torch.equal(after[key], before[key])}
        assert [owner[prefix] for prefix in moved] == [task], (step, task, moved)


def test_a_multi_task_run_resumes_exactly_with_the_exact_vbll_head(tiny_dir, task_dir, kind_dir, tmp_path):  # noqa: F811
    options = {
        "uq": {"method": "vbll", "solve_every": 2, "solve_buffer": 16},
        "steps": 6,
        "task_sampling": "proportional",
    }
    resumed = assert_resume_is_exact(multi(tiny_dir, task_dir, kind_dir, **options), tmp_path, kill_at=3)
    full = json.loads((tmp_path / "full" / "report.json").read_text())
    assert resumed.report["tasks"].keys() == full["tasks"].keys()
    for name, entry in full["tasks"].items():
        assert resumed.report["tasks"][name]["metrics"] == entry["metrics"]
        assert "head_phase" in entry  # each task's head solved on the final adapter's features
    logged = [json.loads(line) for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert {"toy/head_buffer", "kind/head_buffer"} <= set(logged[0])  # every head solved at step 0
    assert [line["task"] for line in logged].count("kind") == 4  # proportional: 40 vs 24 examples, 6 steps


def test_the_command_line_takes_repeated_tasks(tiny_dir, task_dir, kind_dir, tmp_path, capsys):  # noqa: F811
    flags = ["--model", str(tiny_dir), "--steps", "2", "--batch-size", "2", "--max-length", "64", "--quiet"]
    flags += ["--task", str(task_dir), "--task", str(kind_dir), "--uq", "map", "--out", str(tmp_path / "run")]
    main(["fit", *flags])
    out = capsys.readouterr().out
    assert "toy: acc" in out and "kind: acc" in out and "tasks/<task>/" in out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["task"] == [str(task_dir), str(kind_dir)]
    main(["evaluate", str(tmp_path / "run"), "--task", "kind", "--quiet"])
    assert "kind / validation: 6 examples" in capsys.readouterr().out
