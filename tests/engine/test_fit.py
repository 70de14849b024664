import json

import pytest
import torch

from polar_vbll.adapters import DoraConfig, LoraConfig, adapter_state_dict
from polar_vbll.cli import main
from polar_vbll.engine import FitConfig, evaluate_run, fit, load_run
from polar_vbll.engine.schedule import batch_indices, warmup_linear
from polar_vbll.errors import PolarVBLLError
from polar_vbll.models import load_backbone
from tests.conftest import write_jsonl

WORDS = ["red", "blue", "green", "dog", "cat", "sky", "sun", "tree"]


def toy_rows(n, offset):
    """Rows of the toy task: is the word a colour?"""
    return [
        {
            "question": f"Is {WORDS[(i + offset) % 8]} a colour?",
            "choices": ["no", "yes"],
            "answer": int((i + offset) % 8 < 3),
        }
        for i in range(n)
    ]


@pytest.fixture
def task_dir(tmp_path):
    write_jsonl(tmp_path / "toy" / "train.jsonl", toy_rows(24, 0))
    write_jsonl(tmp_path / "toy" / "validation.jsonl", toy_rows(8, 3))
    return tmp_path / "toy"


def config(tiny_dir, task_dir, **options):
    base = dict(
        model=str(tiny_dir),
        task=str(task_dir),
        steps=6,
        batch_size=4,
        max_length=64,
        checkpoint_every=2,
        log_every=2,
        eval_batch_size=8,
        lr_adapter=1e-2,
        lr_head=1e-2,
    )
    return FitConfig.from_dict({**base, **options})


def log_lines(run):
    """The run's training log, less its wall-clock seconds (``*_s``, e.g. an exact head phase's), which differ from
    one run to the next."""
    lines = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if not k.endswith("_s")} for line in lines]


def assert_resume_is_exact(run_config: FitConfig, tmp_path, kill_at: int):
    """Train ``run_config`` straight through, and again interrupted after step ``kill_at`` and resumed: the logs,
    metrics and adapter weights must be identical. Returns the resumed run."""
    full = fit(run_config, tmp_path / "full", progress=False)

    def kill(step, logs):
        if step == kill_at:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        fit(run_config, tmp_path / "killed", progress=False, callbacks=[kill])
    resumed = fit(out=tmp_path / "killed", resume=True, progress=False)
    assert resumed.report["metrics"] == full.report["metrics"]

    assert log_lines(tmp_path / "killed") == log_lines(tmp_path / "full")
    expected = adapter_state_dict(full.backbone.model)
    assert adapter_state_dict(resumed.backbone.model).keys() == expected.keys()
    for key, value in adapter_state_dict(resumed.backbone.model).items():
        assert torch.equal(value, expected[key]), key
    return resumed


def test_polar_vbll_run_folder_and_alternation(tiny_dir, task_dir, tmp_path):
    backbone = load_backbone(str(tiny_dir))
    snapshots = []

    def snapshot(step, logs):
        snapshots.append((logs["phase"], {k: v.clone() for k, v in adapter_state_dict(backbone.model).items()}))

    stochastic = {"method": "vbll", "head_phase": "stochastic"}  # the exact phase (the default) has no head steps
    fit(
        config(tiny_dir, task_dir, uq=stochastic),
        tmp_path / "run",
        backbone=backbone,
        progress=False,
        callbacks=[snapshot],
    )
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {
        "config.json",
        "train_log.jsonl",
        "checkpoint",
        "adapter",
        "head.safetensors",
        "report.json",
        "report.md",
    }
    report = json.loads((run / "report.json").read_text())
    assert set(report["metrics"]) >= {"cls/acc", "cal/ece", "cls/nll", "cls/brier", "unc/epistemic_mean"}
    assert report["method"] == {"adapter": "polar", "uq": "vbll", "optimizer": "geoopt"}
    assert report["diagnostics"]["adapter/orth_error_max"] < 1e-5
    logs = log_lines(run)
    assert [entry["phase"] for entry in logs] == ["head", "adapter"] * 3
    assert all(entry["kl"] == pytest.approx(entry["kl_mean"] + entry["kl_cov"]) for entry in logs)
    assert "adapter/stable_rank_mean" in logs[1]
    # head steps leave the adapter untouched, adapter steps move it
    for (phase, state), (_, before) in zip(snapshots[1:], snapshots[:-1]):
        changed = any(not torch.equal(state[k], before[k]) for k in state)
        assert changed == (phase == "adapter"), phase


def test_resume_after_a_kill_ends_exactly_like_an_uninterrupted_run(tiny_dir, task_dir, tmp_path):
    full = fit(config(tiny_dir, task_dir), tmp_path / "full", progress=False)

    def kill_at_five(step, logs):
        if step == 5:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        fit(config(tiny_dir, task_dir), tmp_path / "killed", progress=False, callbacks=[kill_at_five])
    assert len(log_lines(tmp_path / "killed")) == 5  # step 5 was logged after the step-4 checkpoint
    resumed = fit(out=tmp_path / "killed", resume=True, progress=False)
    assert resumed.report["settings"]["resumed_at_step"] == 4
    assert resumed.report["metrics"] == full.report["metrics"]
    assert log_lines(tmp_path / "killed") == log_lines(tmp_path / "full")
    for key, value in adapter_state_dict(full.backbone.model).items():
        assert torch.equal(value, adapter_state_dict(resumed.backbone.model)[key])


def test_map_lora_trains_jointly_with_weight_decay(tiny_dir, task_dir, tmp_path):
    result = fit(config(tiny_dir, task_dir, adapter="lora", uq="map", steps=3), tmp_path / "map", progress=False)
    assert [entry["phase"] for entry in log_lines(tmp_path / "map")] == ["joint"] * 3
    assert result.config.optimizer == "adamw" and result.head.adapter_weight_decay == 1e-5
    assert result.report["metrics"]["unc/epistemic_mean"] == pytest.approx(0.0, abs=1e-6)  # point head


def test_reloaded_run_evaluates_to_its_report(tiny_dir, task_dir, tmp_path):
    from polar_vbll.engine.inference import evaluate_components

    run = fit(config(tiny_dir, task_dir, steps=2), tmp_path / "run", progress=False)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    again = evaluate_run(tmp_path / "run", progress=False, out=tmp_path / "again")
    assert again["metrics"] == report["metrics"] and again["trained_on"] == "toy"
    loaded = load_run(tmp_path / "run")
    assert loaded.head.config.covariance == "dense" and loaded.evaluation is None
    # the fit's own evaluation (its probabilities, in the evaluated order) is the reloaded run's
    evaluation = evaluate_components(loaded.backbone, loaded.head, loaded.task, loaded.config)
    assert run.evaluation is not None and run.evaluation["metrics"] == report["metrics"]
    assert torch.equal(torch.as_tensor(run.evaluation["probs"]), torch.as_tensor(evaluation["probs"]))
    with pytest.raises(PolarVBLLError, match="answers with"):
        evaluate_run(tmp_path / "run", task="sst2", progress=False)


def test_cli_fit_and_evaluate(tiny_dir, task_dir, tmp_path, capsys):
    args = [
        "fit",
        "--model",
        str(tiny_dir),
        "--task",
        str(task_dir),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--max-length",
        "64",
        "--vbll-covariance",
        "diagonal",
        "--out",
        str(tmp_path / "cli"),
        "--quiet",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "polar-vbll on" in out and "cal/ece" in out
    saved = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert saved["uq"]["covariance"] == "diagonal" and saved["steps"] == 2
    assert json.loads((tmp_path / "cli" / "report.json").read_text())["command"] == "polar-vbll " + " ".join(args)
    assert main(["evaluate", str(tmp_path / "cli"), "--quiet"]) == 0
    assert main(args) == 2 and "already holds a run" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert main(["fit", "--resume", str(tmp_path / "cli"), "--quiet"]) == 0
    other = [a if a != "diagonal" else "dense" for a in args[:-3]] + ["--out", str(tmp_path / "cli2"), "--quiet"]
    assert main(other) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "cli"), str(tmp_path / "cli2"), "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    assert "| cli | polar-vbll |" in table and "| cli2 | polar-vbll |" in table and "**" in table
    assert (tmp_path / "cmp" / "comparison.md").read_text().strip() == table.strip()
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_config_files_and_errors(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('task = "boolq"\nsteps = 7\n[vbll]\ncovariance = "lowrank"\n')
    cfg = FitConfig.from_file(path, steps=9)
    assert (cfg.task, cfg.steps, cfg.uq.covariance, cfg.optimizer, cfg.alternate) == (
        "boolq",
        9,
        "lowrank",
        "geoopt",
        True,
    )
    nested = tmp_path / "nested.toml"
    nested.write_text('post_hoc = ["temperature"]\n[adapter]\nmethod = "lora"\nr = 4\n[uq]\nmethod = "map"\n')
    cfg = FitConfig.from_file(nested, adapter="lora", r=2)  # flags win over the file, its table stays
    assert cfg.adapter == LoraConfig(r=2, dropout=0.0) and cfg.uq.method == "map"
    assert cfg.post_hoc == ["temperature"] and cfg.calibration_holdout is True
    assert FitConfig.from_file(nested, adapter="dora").adapter == DoraConfig(dropout=0.0)  # another: its defaults
    again = tmp_path / "again.json"
    again.write_text(json.dumps(cfg.to_dict()))
    assert FitConfig.from_file(again) == cfg  # config.json round trip
    nested.write_text('[adapter]\nmethod = "lora"\nr = "four"\n')
    with pytest.raises(PolarVBLLError, match=r"nested.toml:3: FitConfig.adapter.r: expected an integer, got 'four'"):
        FitConfig.from_file(nested)
    path.write_text("stepz = 7\n")
    with pytest.raises(PolarVBLLError, match=r"c.toml:1: unknown option\(s\) stepz"):
        FitConfig.from_file(path)
    bad = tmp_path / "c.json"
    bad.write_text('{\n "steps": 3,\n}')
    with pytest.raises(PolarVBLLError, match=r"c.json:3: malformed JSON"):
        FitConfig.from_file(bad)
    with pytest.raises(PolarVBLLError, match="polar needs geoopt or landing"):
        FitConfig(adapter="polar", optimizer="adamw")
    with pytest.raises(PolarVBLLError, match="unknown uncertainty method 'laplace-x'"):
        FitConfig(uq="laplace-x")
    with pytest.raises(PolarVBLLError, match="no checkpoint"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.json").write_text(json.dumps(FitConfig().to_dict()))
        fit(out=tmp_path / "empty", resume=True)


def test_schedule_and_data_order():
    factor = warmup_linear(100, 0.1)
    assert [round(factor(s), 3) for s in (0, 9, 10, 55, 99)] == [0.1, 1.0, 1.0, 0.5, 0.011]
    seen = [i for step in range(6) for i in batch_indices(step, 4, 8, seed=0)]
    assert sorted(seen[:8]) == list(range(8)) and sorted(seen[8:16]) == list(range(8))
    assert seen[:8] != seen[8:16] and batch_indices(3, 4, 8, 0) == batch_indices(3, 4, 8, 0)


def test_post_hoc_laplace_changes_only_the_covariance(tiny_dir, task_dir, tmp_path):
    plain = fit(config(tiny_dir, task_dir, steps=2), tmp_path / "plain", progress=False)
    refined = fit(config(tiny_dir, task_dir, steps=2, laplace=True), tmp_path / "la", progress=False)
    torch.testing.assert_close(plain.head.guide.mean, refined.head.guide.mean)
    assert not torch.allclose(plain.head.guide.log_diag, refined.head.guide.log_diag)
    assert refined.report["config"]["post_hoc"] == ["last_layer_laplace"]
    with pytest.raises(PolarVBLLError, match="uq 'map' takes the post-hoc steps temperature, not last_layer_lap"):
        FitConfig.from_dict({"uq": "map", "laplace": True})
    with pytest.raises(PolarVBLLError, match="last_layer_laplace refines VBLL's posterior"):
        FitConfig(uq="map", post_hoc=["last_layer_laplace"])
    assert FitConfig(uq="laplace", post_hoc=["temperature"]).post_hoc == ["laplace_lora", "temperature"]


def test_gradient_checkpointing_trains_the_same_adapter(tiny_dir, task_dir, tmp_path):
    plain = fit(config(tiny_dir, task_dir, steps=3), tmp_path / "plain", progress=False)
    checkpointed = fit(
        config(tiny_dir, task_dir, steps=3, gradient_checkpointing=True), tmp_path / "ckpt", progress=False
    )
    assert (
        checkpointed.backbone.model.is_activation_checkpointing and not plain.backbone.model.is_activation_checkpointing
    )
    a, b = (adapter_state_dict(run.backbone.model) for run in (plain, checkpointed))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
