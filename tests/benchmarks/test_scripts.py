"""The benchmark scripts' own logic: table summaries, what the OOD table trains, FLOP counts and a GPU-throughput
step on a tiny CPU model."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
calibration = pytest.importorskip("calibration")
gpu_throughput = pytest.importorskip("gpu_throughput")
ood = pytest.importorskip("ood")
multitask = pytest.importorskip("multitask")
amt = pytest.importorskip("amt")
vbll_variance = pytest.importorskip("vbll_variance")
decisions = pytest.importorskip("decisions")
abstention_sensitivity = pytest.importorskip("abstention_sensitivity")


def _cell(key, acc, ece, nll):
    return {"key": key, "wall_s": 360.0, "metrics": {"cls/acc": acc, "cal/ece": ece, "cls/nll": nll}}


def test_calibration_summary_means_stds_best_and_pending():
    profile = calibration.Profile(
        tasks=["sst2", "obqa"], steps=1, batch_size=1, max_length=8, seeds=[0, 1], train_limit=4, eval_limit=4
    )
    cells = {
        c["key"]: c
        for c in [
            _cell("sst2/0/MAP", 0.8, 0.10, 0.40),
            _cell("sst2/1/MAP", 0.9, 0.20, 0.50),
            _cell("sst2/0/TS", 0.8, 0.05, 0.45),
            _cell("sst2/0/PoLAR-VBLL joint", 0.7, 0.01, 0.30),
        ]
    }
    summary = calibration.summarize(cells, profile)
    assert summary["sst2"]["MAP"]["cls/acc"] == pytest.approx((0.85, 0.0707107), rel=1e-5)
    assert summary["sst2"]["MAP"]["seeds"] == 2 and summary["sst2"]["TS"]["cal/ece"] == (0.05, None)
    assert "obqa" not in summary
    hours = calibration.cell_hours(cells)
    assert hours["methods"] == pytest.approx(3 * 360 / 3600) and hours["ablations"] == pytest.approx(360 / 3600)
    text = calibration.markdown("test", profile, summary, 40, 3, hours, "cmd", _machine(), "bf16")
    ece_table = text.split("## ECE")[1].split("## NLL")[0]
    assert "| MAP | 0.150 ± 0.071 | pending |" in ece_table and "| TS | **0.050** | pending |" in ece_table
    assert "Cells finished: 3 of 40 (0.30 h of cell time; ablations 0.10 h more)" in text and "profile `test`" in text
    assert text.startswith(
        "# Calibration of fine-tuning methods — profile `test` (SmolLM2-135M, dequantized 4-bit GGUF, bf16)"
    )
    assert "| PoLAR-VBLL joint | 0.700 / 0.010 / 0.300 |" in text  # ablations: own table, never "best"
    assert "**0.010**" not in text and "**0.300**" not in text


def test_profile_epochs_count_the_subset():
    quick = calibration.PROFILES["cpu-quick"]
    assert quick.epochs(10_000) == quick.steps * quick.batch_size / quick.train_limit
    assert quick.epochs(100) == quick.steps * quick.batch_size / 100


def _machine():
    return {"cpu": "test cpu", "cpus": 2, "gpu": None, "packages": {"torch": "x"}}


def test_flops_per_token_counts_frozen_block_matrices():
    backbone = gpu_throughput.random_backbone("tiny", "cpu", __import__("torch").float32)
    backbone.model.requires_grad_(False)  # as inject_adapters leaves the base
    n = 2 * (4 * 64 * 64 + 3 * 64 * 128)  # q, k, v, o and gate, up, down of 2 layers
    adapter, head = gpu_throughput.flops_per_token(backbone.model, 32)
    assert head == 2 * n + 4 * 2 * 32 * 64 and adapter == 4 * n + 12 * 2 * 32 * 64


@pytest.mark.parametrize("method", list(gpu_throughput.METHODS))
def test_gpu_throughput_step_runs_on_a_tiny_bf16_model(method):
    result = gpu_throughput.measure(method, "tiny", "cpu", steps=4, warmup=2, batch=2, seq_len=16)
    phases = {"LoRA-MAP": {"joint"}, "PoLAR-VBLL": {"head", "adapter"}}[method]
    assert set(result["phases"]) == phases and result["tokens_per_s"] > 0 and result["flops_per_s"] > 0


def test_gpu_throughput_runs_data_parallel_under_torchrun_with_checkpointing(tmp_path):
    import os
    import subprocess

    script = Path(gpu_throughput.__file__)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    command += ["--device", "cpu", "--shape", "tiny", "--steps", "3", "--warmup", "1", "--batch-size", "2"]
    command += ["--seq-len", "16", "--gradient-checkpointing", "--out", str(tmp_path / "gpu")]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu.json").read_text())["rows"]
    assert set(rows) == {"LoRA-MAP", "PoLAR-VBLL", "LoRA-MAP, checkpointed", "PoLAR-VBLL, checkpointed"}
    assert all(row["processes"] == 2 for row in rows.values())
    assert "torchrun --nproc_per_node 2" in (tmp_path / "gpu.md").read_text()


def test_calibration_keeps_the_cells_recorded_with_the_same_profile_and_precision(tmp_path, monkeypatch):
    from dataclasses import asdict, replace

    monkeypatch.setattr(calibration, "RESULTS", tmp_path)
    profile = calibration.PROFILES["smoke"]
    cells = {"sst2/0/MAP": _cell("sst2/0/MAP", 0.8, 0.1, 0.4)}
    assert calibration.recorded_cells("smoke", profile, "fp32") == {}
    text = calibration.write_results("smoke", profile, cells, "fp32")  # what main writes after every finished cell
    assert (
        f"Cells finished: 1 of {2 * len(calibration.METHODS)}" in text
        and (tmp_path / "calibration_smoke.md").read_text() == text
    )
    assert "--precision fp32" in text and "Cells measured on" not in text  # one machine: the footer names it
    cpu = calibration.machine_info()["cpu"]  # a cell without its machine was measured on the results' machine
    assert calibration.recorded_cells("smoke", profile, "fp32") == {
        "sst2/0/MAP": {"machine": cpu, **cells["sst2/0/MAP"]}
    }
    assert calibration.recorded_cells("smoke", profile, "bf16") == {}  # another file, not yet written
    calibration.write_results("smoke", profile, {}, "bf16")
    assert json.loads((tmp_path / "calibration_smoke_bf16.json").read_text())["precision"] == "bf16"
    assert calibration.recorded_cells("smoke", profile, "fp32")["sst2/0/MAP"]["wall_s"] == 360  # fp32 untouched
    other = {**cells, "sst2/1/MAP": {**_cell("sst2/1/MAP", 0.9, 0.1, 0.4), "machine": "another CPU"}}
    assert "Cells measured on: " in calibration.write_results("smoke", profile, other, "fp32")
    recorded = {"profile": {"name": "smoke", **asdict(profile)}, "cells": cells}  # written before precision existed
    (tmp_path / "calibration_smoke.json").write_text(json.dumps(recorded))
    assert calibration.recorded_cells("smoke", profile, "fp32") == cells
    assert calibration.recorded_cells("smoke", replace(profile, note="reworded"), "fp32") == cells
    assert calibration.recorded_cells("smoke", replace(profile, steps=profile.steps + 1), "fp32") == {}
    assert calibration.run_name("smoke", "fp32") == "smoke" and calibration.run_name("smoke", "bf16") == "smoke_bf16"


def test_ood_trains_only_what_is_not_evaluated_and_the_runs_it_refines():
    assert ood.training_needed([]) == []
    assert ood.training_needed(["TS", "BLoB"]) == ["MAP", "BLoB", "TS"]
    assert ood.training_needed(["PoLAR-VBLL + LA", "LA"]) == ["MAP", "LA", "PoLAR-VBLL", "PoLAR-VBLL + LA"]


def test_ood_reevaluation_forgets_the_recorded_row_and_the_saved_evaluation(tmp_path):
    saved = {m: calibration.cell_dir(tmp_path, ood.ID_TASK, 0, m) / "ood" / "ood.json" for m in ("MAP", "PoLAR-VBLL")}
    for path in saved.values():
        path.parent.mkdir(parents=True)
        path.write_text("{}")
    kept = ood.forget({"MAP": {"a": 1}, "PoLAR-VBLL": {"b": 2}}, ["PoLAR-VBLL"], tmp_path, 0)
    assert kept == {"MAP": {"a": 1}}
    assert saved["MAP"].exists() and not saved["PoLAR-VBLL"].exists()


def test_vbll_variance_parts_of_an_untrained_head_and_of_one_at_the_prior():
    import torch

    from polar_vbll.uq import VBLLConfig, VBLLHead

    torch.manual_seed(0)
    features, weight = torch.randn(50, 16) * 3, torch.randn(2, 16)
    fresh = vbll_variance.variance_parts(VBLLHead(weight, 10), features)
    assert fresh["weight_var"] == pytest.approx(fresh["weight_var_at_vbll_init"], rel=0.01)
    assert fresh["noise_var"] == pytest.approx(torch.tensor(-2.0).exp().item(), rel=1e-6)
    assert fresh["weight_share"] == pytest.approx(
        fresh["weight_var"] / (fresh["weight_var"] + fresh["noise_var"]), rel=0.05
    )
    at_prior = vbll_variance.variance_parts(VBLLHead(weight, 10, VBLLConfig(cov_init="prior")), features)
    assert at_prior["weight_var"] == pytest.approx(at_prior["weight_var_at_prior"], rel=0.01)
    assert at_prior["feature_sq_norm"] == pytest.approx(features.pow(2).sum(-1).median().item())


def _multitask_row(nll: float, train_s: float, eval_s: float, tasks=("sst2", "boolq", "obqa")) -> dict:
    metrics = {"cls/acc": 0.5, "cal/ece": 0.1, "cls/nll": nll, "unc/epistemic_mean": 0.0}
    zero = {"cls/acc": 0.4, "cal/ece": 0.2, "cls/nll": 0.9}
    cells = {t: {"metrics": metrics, "zero_shot": zero, "n": 10, "eval_s": eval_s} for t in tasks}
    return {"tasks": cells, "train_s": train_s, "steps": 10 * len(tasks), "trainable": 1000}


def test_multitask_table_ratios_are_per_step_and_per_example_against_multi_task_lora():
    cells = {f"MAP|lora-{t}": _multitask_row(0.6, 10.0, 1.0, (t,)) for t in multitask.TASKS}
    cells |= {"MAP|lora": _multitask_row(0.5, 30.0, 2.0), "MAP|emtal": _multitask_row(0.4, 45.0, 2.2)}
    differences = {"fp32": 1e-6, "bf16": 0.5, "feature_max_abs": 20.0}
    merged = {"median_s": {"emtal": 1.01, "lora": 1.0}, "ratio": 1.01, "max_abs_difference": differences}
    cells["merge"] = {
        **merged,
        "parameters": {"emtal": 5, "lora": 5},
        "base_parameters": 5,
        "prompts": 64,
        "repeats": 5,
    }
    data = {"steps_per_task": 10, "batch_size": 8, "eval_limit": 10, "precision": "bf16", "cells": cells}
    text = "\n".join(multitask.markdown(data))
    assert "| EMTAL, multi-task | 1,000 | " in text and "| 0.400 | 1.50 | 1.10 |" in text  # 45/30 s, 2.2/2.0 s
    assert "| LoRA, one run per task | 1,000 each | " in text and "| 0.600 | | |" in text
    assert "Zero-shot: sst2 0.400 / 0.200 / 0.900" in text and "**EMTAL ÷ LoRA 1.010**" in text
    assert "max |Δ| 1.0e-06 in fp32, 5.0e-01 with base weights in bf16" in text
    assert "VBLL head" not in text  # a head with no row yet has no table


def test_amt_table_means_over_seeds_clean_and_attacked():
    def cell(acc):
        clean = {"cls/acc": acc, "cal/ece": 0.1, "cls/nll": 0.5}
        return {"metrics": {"0.0": clean, "0.02": {**clean, "cls/acc": acc - 0.1}, "0.05": {**clean, "cls/acc": 0.2}}}

    cells = {"zero-shot": cell(0.7), "AMT (merged top 2)|0": cell(0.8), "AMT (merged top 2)|1": cell(0.9)}
    cells["radii"] = {"accuracy": {"0.0": 0.8, "0.02": 0.6, "0.05": 0.4}, "epsilons": [0.02, 0.05]}
    cells["pool"] = {"members": [{"epsilon": 0.0, "gamma": 0.0, "query_acc_last_fifth": 0.6, "train_s": 60.0}]}
    data = {"pool_steps": 5, "shots": 4, "seeds": [0, 1], "fit_steps": 3, "precision": "bf16", "eval_limit": 9}
    text = "\n".join(amt.markdown({**data, "cells": cells}))
    assert "| zero-shot | — | 0.700 | 0.100 | 0.500 | 0.600 / 0.100 | 0.200 / 0.100 |" in text
    assert "| AMT (merged top 2) | 2 | 0.850 ± 0.071 |" in text
    assert "(ε 0.0, γ 0.0): query accuracy 0.600, 1.0 min" in text
    assert "0.02 → 0.60" in text and "1/2 of the clean accuracy, 0.02 and 0.05." in text


def test_the_multitask_command_is_the_whole_grid():
    assert multitask.without_rows(["--rows", "merge", "MAP|lora", "--eval-limit", "5"]) == ["--eval-limit", "5"]
    assert multitask.without_rows(["--rows=merge", "--steps-per-task", "3"]) == ["--steps-per-task", "3"]


def test_decisions_table_states_the_grid_and_a_threshold_none_certified():
    def cell(threshold):
        metrics = {"cls/acc": 0.6, "cal/ece": 0.05, "cls/nll": 0.66}
        answered = {"abstain/coverage": 0.0 if threshold is None else 0.5, "abstain/risk": 0.0}
        kept = {"set/coverage": 0.9, "set/size": 1.5, "set/empty": 0.0, **answered}
        return {"metrics": metrics, "decisions": kept, "threshold": threshold, "set_threshold": 0.4}

    data = {"steps": 5, "alpha": 0.1, "delta": 0.1, "eval_limit": 9, "precision": "bf16"}
    data |= {"ltt_grid": {"size": 201, "first_gap": 1e-7}, "cells": {"sst2|MAP-LoRA": cell(None), "sst2|TS": cell(0.8)}}
    text = "\n".join(decisions.markdown(data))
    assert "(201 values down from 1 − 1e-07)" in text
    assert (
        "| sst2 | MAP-LoRA | 0.600 | 0.050 | 0.660 | 0.900 | 1.500 | 0.000 | 0.000 | 0.000 | none certified |" in text
    )
    assert text.endswith("| sst2 | TS | 0.600 | 0.050 | 0.660 | 0.900 | 1.500 | 0.000 | 0.500 | 0.000 | 0.800 |")


def test_a_temperature_keeps_the_answers_and_for_two_classes_the_ranking_of_confidences():
    import numpy as np

    rng = np.random.default_rng(0)
    for classes in (2, 3):
        probs = rng.dirichlet(np.ones(classes), size=50)
        assert np.allclose(abstention_sensitivity.tempered(probs, 1.0), probs)
        for temperature in (0.5, 3.0):
            sharp = abstention_sensitivity.tempered(probs, temperature)
            assert np.allclose(sharp.sum(1), 1.0)
            assert (sharp.argmax(1) == probs.argmax(1)).all()
            if classes == 2:
                assert (np.argsort(sharp.max(1)) == np.argsort(probs.max(1))).all()


def test_split_fixed_sequence_stops_at_the_first_threshold_the_test_half_does_not_reject():
    import numpy as np

    from polar_vbll.conformal.abstention import grid_p_values, selective_risk

    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.5, 1.0, 400)
    labels = (rng.uniform(size=400) < confidence).astype(int)  # calibrated: right with probability = confidence
    probs = np.stack([1 - confidence, confidence], 1)
    for seed in range(5):
        share = abstention_sensitivity.split_fixed_sequence_share(probs, labels, 0.1, 0.1, seed)
        order = np.random.default_rng(seed).permutation(400)
        learn, test = order[:200], order[200:]
        grid, learn_p = grid_p_values(probs[learn], labels[learn], 0.1)
        test_p = grid_p_values(probs[test], labels[test], 0.1)[1]
        rejected = []
        for index in np.argsort(learn_p, kind="stable"):
            if test_p[index] > 0.1:
                break
            rejected.append(index)
        expected = selective_risk(probs, labels, grid[rejected].min())[0] if rejected else 0.0
        assert share == expected <= 0.45  # calibrated on U(0.5, 1): error ≤ 0.1 among answered needs confidence ≥ 0.8
    sure = np.concatenate([rng.uniform(0.95, 1.0, 300), rng.uniform(0.5, 0.6, 100)])  # right / wrong
    separated = np.stack([1 - sure, sure], 1), np.r_[np.ones(300, int), np.zeros(100, int)]
    shares = [abstention_sensitivity.split_fixed_sequence_share(*separated, 0.1, 0.1, seed) for seed in range(5)]
    assert all(0.75 <= share < 0.8 for share in shares)  # every sure question, and a few wrong ones (risk ≪ 0.1)
    coin = np.full((400, 2), 0.5)
    assert abstention_sensitivity.split_fixed_sequence_share(coin, labels, 0.1, 0.1, 0) == 0.0
