"""Data-parallel steps: 2 processes (gloo, launched by torchrun as a user would) against 1, gradient accumulation,
resuming on another number of processes, and evaluation and the exact head phase shared out over processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from polar_vbll.cli import main
from polar_vbll.engine import FitConfig
from polar_vbll.engine.step import with_global_batch
from polar_vbll.errors import PolarVBLLError
from tests.conftest import write_jsonl
from tests.engine.data_parallel_worker import run
from tests.engine.test_fit import config, log_lines, task_dir, toy_rows  # noqa: F401  (task_dir is a fixture)


def launch(processes: int, *args: str) -> None:
    """The worker's ``run(*args)`` in this process, or in ``processes`` processes launched by torchrun (as a user
    would); ``-m`` first: the command line instead."""
    if processes == 1:
        if args[0] == "-m":
            assert main(list(args[2:])) == 0
        else:
            run(args[0], Path(args[1]), json.loads(args[2]))
        return
    target = ["-m", *args[1:]] if args[0] == "-m" else [str(Path(__file__).parent / "data_parallel_worker.py"), *args]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run([*launcher, *target], capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def fitted(tmp_path, name: str, processes: int, options: dict) -> dict:
    launch(processes, "fit", str(tmp_path / name), json.dumps(options))
    return run_state(tmp_path / name)


def run_state(run) -> dict:
    report = json.loads((run / "report.json").read_text())
    return {
        "adapter": load_file(str(run / "adapter" / "adapter_model.safetensors")),
        "head": load_file(str(run / "head.safetensors")),
        "metrics": report["metrics"],
        "log": log_lines(run),
        "settings": report["settings"],
    }


def assert_close(a: dict, b: dict, tol: float = 1e-4) -> None:
    for part in ("adapter", "head"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], atol=tol, rtol=tol, msg=f"{part} {key}")
    for key, value in a["metrics"].items():
        assert b["metrics"][key] == pytest.approx(value, abs=tol), key
    assert [line["step"] for line in a["log"]] == [line["step"] for line in b["log"]]
    for x, y in zip(a["log"], b["log"], strict=True):
        assert y["loss"] == pytest.approx(x["loss"], abs=tol) and y["acc_running"] == x["acc_running"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dir_module, task_dir_module):
    """PoLAR-VBLL (exact head phase every 2 steps, on the adapter steps' features) trained with a global batch of 4
    as 1 process × 4, 2 processes × 2, and 1 process × 2 × 2 accumulation passes."""
    tmp_path = tmp_path_factory.mktemp("data_parallel")
    options = config(
        tiny_dir_module,
        task_dir_module,
        adapter="polar",
        uq={"method": "vbll", "solve_every": 2, "solve_features": "steps", "solve_buffer": 8},
    ).to_dict()
    states = {
        "one": fitted(tmp_path, "one", 1, options),
        "two": fitted(tmp_path, "two", 2, {**options, "batch_size": 2}),
        "accumulated": fitted(tmp_path, "accumulated", 1, {**options, "batch_size": 2, "grad_accum": 2}),
    }
    return tmp_path, options, states


@pytest.fixture(scope="module")
def tiny_dir_module(tmp_path_factory):
    from polar_vbll.models import tiny_backbone

    path = tmp_path_factory.mktemp("tiny") / "tiny-model"
    backbone = tiny_backbone()
    backbone.model.save_pretrained(path)
    backbone.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def task_dir_module(tmp_path_factory):
    path = tmp_path_factory.mktemp("task") / "toy"
    write_jsonl(path / "train.jsonl", toy_rows(24, 0))
    write_jsonl(path / "validation.jsonl", toy_rows(8, 3))
    return path


def test_two_processes_and_accumulation_equal_one_process_with_the_same_global_batch(runs):
    _, _, states = runs
    assert_close(states["one"], states["two"])
    assert_close(states["one"], states["accumulated"])
    assert states["two"]["settings"]["processes"] == 2
    assert {s["settings"]["global_batch_size"] for s in states.values()} == {4}


@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)])
def test_a_stopped_run_resumes_on_another_number_of_processes(runs, first, then):
    tmp_path, options, states = runs
    out = tmp_path / f"stopped-{first}-{then}"
    launch(first, "fit", str(out), json.dumps({**options, "batch_size": 4 // first, "stop_at": 3}))
    assert not (out / "report.json").exists() and json.loads((out / "config.json").read_text())["grad_accum"] == 1
    launch(then, "resume", str(out), "{}")
    resumed = run_state(out)
    assert_close(states["one"], resumed)
    assert json.loads((out / "config.json").read_text())["grad_accum"] == (2 if then == 1 else 1)


def test_evaluation_under_two_processes_equals_one_process_exactly(runs):
    tmp_path, _, _ = runs
    reports = {}
    for processes in (1, 2):
        out = tmp_path / f"evaluated-{processes}"
        launch(processes, "-m", "polar_vbll", "evaluate", str(tmp_path / "one"), "--out", str(out), "--quiet")
        reports[processes] = json.loads((out / "report.json").read_text())
    assert reports[1]["metrics"] == reports[2]["metrics"]


def test_the_exact_head_phase_over_two_processes_equals_one_exactly(tmp_path, tiny_dir, task_dir):  # noqa: F811
    options = config(tiny_dir, task_dir, adapter="polar", uq="vbll").to_dict()
    for processes in (1, 2):
        launch(processes, "features", str(tmp_path / f"solved-{processes}.safetensors"), json.dumps(options))
    one, two = (load_file(str(tmp_path / f"solved-{n}.safetensors")) for n in (1, 2))
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_the_global_batch_is_recorded_and_kept_on_resume(tiny_dir, task_dir):  # noqa: F811
    base = config(tiny_dir, task_dir, batch_size=2, grad_accum=3)
    recorded = with_global_batch(base, 2)
    assert (recorded.global_batch_size, recorded.batch_size, recorded.grad_accum) == (12, 2, 3)
    for processes, micro, accum in [(1, 2, 6), (3, 2, 2), (6, 2, 1), (12, 1, 1)]:  # the run's global batch kept
        resumed = with_global_batch(recorded, processes)
        assert (resumed.batch_size, resumed.grad_accum) == (micro, accum)
    larger = FitConfig.from_dict({**recorded.to_dict(), "batch_size": 5})  # at most 5 per pass: 4 (share 12 / 1)
    assert (with_global_batch(larger, 1).batch_size, with_global_batch(larger, 1).grad_accum) == (4, 3)
    with pytest.raises(PolarVBLLError, match="global_batch_size: the run's global batch of 12 does not split over 5"):
        with_global_batch(recorded, 5)
    given = FitConfig.from_dict({**base.to_dict(), "global_batch_size": 8, "grad_accum": 1})
    assert with_global_batch(given, 2).grad_accum == 2  # a global batch given: the accumulation follows
