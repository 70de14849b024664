"""Resuming: after kill -9 (a torn log line, a torn checkpoint write), and extending a finished run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from polar_vbll.adapters import adapter_state_dict
from polar_vbll.atomic import recover_directory
from polar_vbll.cli import main
from polar_vbll.engine import FitConfig, fit
from polar_vbll.engine.schedule import warmup_linear
from polar_vbll.errors import PolarVBLLError
from tests.engine.test_fit import config, log_lines, task_dir  # noqa: F401  (task_dir is a fixture)

KILLED_RUN = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path

    import polar_vbll.engine.checkpoint as checkpoint
    from polar_vbll.engine import FitConfig, fit

    mode, out, options = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    callbacks = []
    if mode == "torn-log":  # killed while writing the log line of step 6 (the checkpoint is at step 4)
        def tear(step, logs):
            if step == 5:
                with (out / "train_log.jsonl").open("a") as handle:
                    handle.write('{"step": 6, "phase": "ad')
                os.kill(os.getpid(), signal.SIGKILL)
        callbacks.append(tear)
    else:  # killed halfway through writing the step-4 checkpoint
        write_state = checkpoint.save_state
        def torn(state, folder, name):
            if state["step"] == 4:
                (folder / f"{name}.safetensors").write_bytes(b"\\0" * 10)
                os.kill(os.getpid(), signal.SIGKILL)
            write_state(state, folder, name)
        checkpoint.save_state = torn
    fit(FitConfig.from_dict(options), out, progress=False, callbacks=callbacks)
    """
)


@pytest.mark.parametrize("mode", ["torn-log", "torn-checkpoint"])
def test_kill_9_then_resume_ends_like_an_uninterrupted_run(mode, tiny_dir, task_dir, tmp_path):  # noqa: F811
    options = config(tiny_dir, task_dir).to_dict()
    full = fit(FitConfig.from_dict(options), tmp_path / "full", progress=False)
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN)
    killed = tmp_path / "killed"
    done = subprocess.run([sys.executable, str(script), mode, str(killed), json.dumps(options)], capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    if mode == "torn-log":
        assert (killed / "train_log.jsonl").read_text().endswith('"phase": "ad')
    else:
        assert any(p.name.startswith(".checkpoint.") for p in killed.iterdir())  # the torn write, beside the old one
    resumed = fit(out=killed, resume=True, progress=False)
    assert resumed.report["settings"]["resumed_at_step"] == (4 if mode == "torn-log" else 2)
    assert resumed.report["metrics"] == full.report["metrics"]
    assert log_lines(killed) == log_lines(tmp_path / "full")
    assert not any(p.name.startswith(".checkpoint.") for p in killed.iterdir())
    for key, value in adapter_state_dict(full.backbone.model).items():
        assert torch.equal(value, adapter_state_dict(resumed.backbone.model)[key])


def test_a_swap_cut_between_its_renames_is_undone(tmp_path):
    """atomic_directory moves the old folder aside, then renames the new one in; a kill in between is repaired."""
    aside = tmp_path / ".checkpoint.abc123.old" / "checkpoint"
    aside.mkdir(parents=True)
    (aside / "state.json").write_text("{}")
    (tmp_path / ".checkpoint.def456.tmp").mkdir()
    recover_directory(tmp_path / "checkpoint")
    assert (tmp_path / "checkpoint" / "state.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def test_more_steps_extend_a_finished_run_by_a_new_cycle(tiny_dir, task_dir, tmp_path, capsys):  # noqa: F811
    """`fit --resume RUN --steps 8` on a 4-step run equals a fresh 8-step run whose schedule restarts at step 4."""
    fit(config(tiny_dir, task_dir, steps=4), tmp_path / "run", progress=False)
    assert main(["fit", "--resume", str(tmp_path / "run"), "--steps", "8", "--quiet"]) == 0
    extended = json.loads((tmp_path / "run" / "config.json").read_text())
    assert extended["steps"] == 8 and extended["lr_restarts"] == [4]
    fresh = fit(config(tiny_dir, task_dir, steps=8, lr_restarts=[4]), tmp_path / "fresh", progress=False)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["metrics"] == fresh.report["metrics"] and report["settings"]["resumed_at_step"] == 4
    assert log_lines(tmp_path / "run") == log_lines(tmp_path / "fresh")
    lrs = [entry["lr_adapter"] for entry in log_lines(tmp_path / "run")]
    assert lrs[3] < lrs[4] and lrs[4] == pytest.approx(1e-2)  # decayed, then warmed up again (1-step warm-up)
    assert main(["fit", "--resume", str(tmp_path / "run"), "--steps", "6"]) == 2
    assert "--steps: 6 is fewer than the run's 8" in capsys.readouterr().err


def test_schedule_with_restarts():
    factor = warmup_linear(20, 0.1, restarts=[10])
    assert [round(factor(s), 3) for s in (0, 5, 9, 10, 11, 19)] == [1.0, 0.556, 0.111, 1.0, 1.0, 0.111]
    assert [warmup_linear(100, 0.1)(s) for s in range(100)] == [warmup_linear(100, 0.1, [])(s) for s in range(100)]
    with pytest.raises(PolarVBLLError, match=r"lr_restarts: must be increasing steps in \(0, steps=10\)"):
        FitConfig(steps=10, lr_restarts=[5, 3])


def test_resume_keeps_what_a_user_added_and_reads_an_old_run(tiny_dir, task_dir, tmp_path):  # noqa: F811
    """A run written before the marker existed resumes (and is marked now); --overwrite keeps the user's notes."""
    fit(config(tiny_dir, task_dir, steps=2), tmp_path / "run", progress=False)
    (tmp_path / "run" / ".polar-vbll.json").unlink()  # as written by polar-vbll 0.1.0,
    (tmp_path / "run" / "zero_shot.json").unlink()  # which had neither the marker nor the zero-shot reference
    fit(out=tmp_path / "run", resume=True, progress=False)
    assert json.loads((tmp_path / "run" / ".polar-vbll.json").read_text())["kind"] == "run"
    (tmp_path / "run" / "notes.md").write_text("mine")
    fit(config(tiny_dir, task_dir, steps=2, seed=1), tmp_path / "run", overwrite=True, progress=False)
    assert (tmp_path / "run" / "notes.md").read_text() == "mine"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["seed"] == 1


def test_a_run_folder_written_by_0_1_0_loads_and_evaluates(tiny_dir, task_dir, tmp_path):  # noqa: F811
    """Before this version: no marker, no lr_restarts in config.json, versions without polar_vbll."""
    from polar_vbll.engine import evaluate_run, load_run

    result = fit(config(tiny_dir, task_dir, steps=2), tmp_path / "old", progress=False)
    (tmp_path / "old" / ".polar-vbll.json").unlink()
    saved = json.loads((tmp_path / "old" / "config.json").read_text())
    del saved["lr_restarts"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
    report = json.loads((tmp_path / "old" / "report.json").read_text())
    report["versions"].pop("polar_vbll")
    (tmp_path / "old" / "report.json").write_text(json.dumps(report))
    assert load_run(tmp_path / "old").config.lr_restarts == []
    assert evaluate_run(tmp_path / "old", progress=False)["metrics"] == result.report["metrics"]
