"""Attacks on the input embeddings: PGD raises the loss inside its ε-ball, FGSM is its one step, ε = 0 is clean, and
``evaluate --attack`` reports robust metrics beside the clean ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from polar_vbll.cli import main
from polar_vbll.data import encoded_batches
from polar_vbll.engine import evaluate_run, fit
from polar_vbll.engine.attack import EmbeddingAttack, embedding_offset, point_logits, project
from polar_vbll.engine.inference import predict
from polar_vbll.errors import PolarVBLLError
from tests.engine.test_fit import config, task_dir  # noqa: F401  (a fixture)


@pytest.fixture
def trained(tiny_dir, task_dir, tmp_path):  # noqa: F811
    return fit(config(tiny_dir, task_dir, uq="map", adapter="lora"), tmp_path / "run", progress=False)


def first_batch(run):
    items = run.task.load("validation")
    return next(encoded_batches(run.backbone.tokenizer, run.task, items, 64, 8))[1]


@pytest.mark.parametrize("method, steps", [("pgd", 4), ("fgsm", 1)])
def test_the_attack_raises_the_loss_and_stays_in_each_token_ball(trained, method, steps):
    batch = first_batch(trained)
    attack = EmbeddingAttack(method, epsilon=0.3, steps=steps)
    logits = point_logits(trained.head)
    delta = attack.perturbation(trained.backbone, logits, batch)
    with torch.no_grad():
        embeddings = trained.backbone.model.get_input_embeddings()(batch["input_ids"]).float()
        clean = attack.loss(trained.backbone, logits, batch)
        with embedding_offset(trained.backbone, delta):
            attacked = attack.loss(trained.backbone, logits, batch)
    assert attacked > clean
    norms, bound = delta.norm(dim=-1), 0.3 * embeddings.norm(dim=-1)
    assert torch.all(norms <= bound * (1 + 1e-5) + 1e-7)
    assert torch.all(delta[~batch["attention_mask"].bool()] == 0)  # padding is not attacked
    real = batch["attention_mask"].bool()
    if method == "fgsm":  # one step of the full radius along the normalized gradient: every real token on its sphere
        assert torch.allclose(norms[real], bound[real], rtol=1e-4)


def test_a_zero_radius_attack_predicts_as_clean(trained):
    items = trained.task.load("validation")
    args = (trained.backbone, trained.head, trained.task, items, 8, 64)
    clean = predict(*args)["probs"]
    attacked = predict(*args, attack=EmbeddingAttack("pgd", epsilon=0.0, steps=2))["probs"]
    assert np.allclose(clean, attacked, atol=1e-6)


def test_the_projection_scales_only_what_leaves_the_ball():
    delta = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    out = project(delta, torch.tensor([[1.0], [1.0]]))
    assert torch.allclose(out, torch.tensor([[0.6, 0.8], [0.3, 0.4]]))


def test_evaluate_reports_robust_metrics_beside_the_clean_ones(trained, tmp_path, capsys):
    report = evaluate_run(trained.out, progress=False, attack=EmbeddingAttack("pgd", 0.3, 3))
    assert report["attack"]["method"] == "pgd" and report["attack"]["epsilon"] == 0.3
    assert report["attack"]["metrics"]["cls/nll"] > report["metrics"]["cls/nll"]
    main(
        ["evaluate", str(trained.out), "--attack", "fgsm", "--epsilon", "0.2", "--quiet", "--out", str(tmp_path / "e")]
    )
    assert "under fgsm (ε 0.2, 1 steps)" in capsys.readouterr().out
    assert "## Under attack" in (tmp_path / "e" / "report.md").read_text()
    assert json.loads((tmp_path / "e" / "report.json").read_text())["attack"]["steps"] == 1
    with pytest.raises(PolarVBLLError, match="epsilon"):
        EmbeddingAttack("pgd", epsilon=-0.1)
    assert main(["evaluate", "--task", "sst2", "--attack", "pgd", "--epsilon", "0.01"]) == 2
    assert "--attack needs a RUN_DIR" in capsys.readouterr().err
    assert main(["evaluate", str(trained.out), "--attack", "pgd"]) == 2
    assert "--attack needs --epsilon" in capsys.readouterr().err


@pytest.mark.parametrize("uq", ["vbll", "ensemble", "mc_dropout", "blob"])
def test_every_head_can_be_attacked(tiny_dir, task_dir, tmp_path, uq):  # noqa: F811
    """The attack follows each head's point logits (VBLL's mean, the ensemble's mean, ...); the predictive under it
    is the method's own."""
    run = fit(config(tiny_dir, task_dir, uq=uq, adapter="lora", steps=2), tmp_path / "run", progress=False)
    report = evaluate_run(run.out, progress=False, attack=EmbeddingAttack("pgd", 0.3, 2))
    assert report["attack"]["metrics"]["cls/nll"] > report["metrics"]["cls/nll"]
