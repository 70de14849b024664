"""Quality retaining (EMTAL's QR): teachers from earlier steps only, the closed-form KL, and its place in a fit."""

from __future__ import annotations

import json

import pytest
import torch

from polar_vbll.engine import FitConfig, fit
from polar_vbll.engine.quality import QualityRetaining
from polar_vbll.errors import PolarVBLLError
from tests.engine.test_fit import config, task_dir  # noqa: F401  (a fixture)
from tests.engine.test_multitask import kind_dir  # noqa: F401  (a fixture)


def test_the_pull_is_the_kl_from_the_best_earlier_logits_over_the_question_choices():
    retain = QualityRetaining(n_items=4, n_classes=3, weight=0.5)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    first = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, -9.0]])
    labels = torch.tensor([0, 1])
    assert retain.loss([0, 2], first, mask) is None  # nothing seen before: no teacher
    retain.update([0, 2], first, labels, mask)
    assert retain.loss([0, 2], first.clone(), mask).item() == pytest.approx(0.0, abs=1e-7)
    current = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 3.0]], requires_grad=True)
    pulled = retain.loss([0, 2], current, mask)
    expected = []
    for row in range(2):
        keep = mask[row]
        teacher = torch.softmax(first[row][keep], -1)
        student = torch.log_softmax(current[row][keep], -1)
        expected.append(torch.nn.functional.kl_div(student, teacher, reduction="sum"))
    assert pulled.item() == pytest.approx(0.5 * torch.stack(expected).mean().item(), rel=1e-6)
    pulled.backward()
    assert current.grad is not None and current.grad[1, 2] == 0  # a choice the question lacks has no pull
    # only examples with a teacher count, and a teacher changes only for a lower NLL
    assert retain.loss([1], current.detach()[:1], mask[:1]) is None
    worse = torch.tensor([[-2.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    retain.update([0, 2], worse, labels, mask)
    assert torch.equal(retain.best_logits[0], first[0])
    better = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    retain.update([0, 2], better, labels, mask)
    assert torch.equal(retain.best_logits[2], torch.tensor([0.0, 5.0, 0.0]))


def test_emtal_on_several_tasks_retains_quality_by_default_and_only_on_revisits(
    tiny_dir,
    task_dir,  # noqa: F811
    kind_dir,  # noqa: F811
    tmp_path,
):
    options = {"task": [str(task_dir), str(kind_dir)], "uq": "map", "adapter": "emtal", "steps": 16}
    run_config = config(tiny_dir, task_dir, **options)
    assert run_config.quality_retaining == 1.0
    assert config(tiny_dir, task_dir, adapter="emtal").quality_retaining == 0.0  # one task: off unless asked
    fit(run_config, tmp_path / "run", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    toy = [line for line in lines if line["task"] == "toy"]
    # 24 toy examples in batches of 4: the first 6 toy steps see each once (no teacher yet), the 7th sees the first
    # batch's examples again
    assert [("quality_retaining" in line) for line in toy] == [False] * 6 + [True] * 2
    assert all(line["quality_retaining"] >= 0 for line in toy[6:])


def test_quality_retaining_needs_a_head_over_features():
    with pytest.raises(PolarVBLLError, match="FitConfig.quality_retaining"):
        FitConfig(uq="mc_dropout", quality_retaining=1.0)
    with pytest.raises(PolarVBLLError, match="must be >= 0"):
        FitConfig(uq="map", quality_retaining=-1.0)


def test_the_masked_kl_has_finite_gradients_where_a_choice_is_absent():
    """A question with fewer choices than the head's classes (ARC's 3-choice questions under a 5-class head): the KL
    over its choices, and gradients that stay finite on both sides (a product taken after the mask gives 0 · nan)."""
    from polar_vbll.engine.quality import masked_kl

    mask = torch.tensor([[True, True, False], [True, True, True]])
    p = torch.tensor([[1.0, 0.0, 5.0], [0.5, 0.2, 0.1]], requires_grad=True)
    q = torch.tensor([[0.0, 1.0, -5.0], [0.1, 0.2, 0.3]], requires_grad=True)
    kl = masked_kl(p, q, mask)
    kl.sum().backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()
    expected = torch.nn.functional.kl_div(torch.log_softmax(q[0, :2], -1), torch.softmax(p[0, :2], -1), reduction="sum")
    assert kl[0].item() == pytest.approx(expected.item(), rel=1e-6)
