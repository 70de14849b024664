"""AMT's parts against closed forms: episodes never leak, the weight perturbation keeps its norm bound and restores
exactly, the merge equals the weighted sum of the members' ΔW, and the score prefers separated classes."""

from __future__ import annotations

import pytest
import torch

from polar_vbll.amt import (
    member_score,
    merged_factors,
    perturbed,
    relative_perturbation,
    routing_weights,
    sample_episode,
)
from polar_vbll.data.loaders import MCItem
from polar_vbll.errors import PolarVBLLError


def items(n: int, classes: int) -> list[MCItem]:
    return [MCItem(f"q{i}", f"question {i}", ("a", "b", "c"), i % classes) for i in range(n)]


def test_an_episode_has_k_shots_per_class_and_never_puts_a_support_example_in_the_query():
    pool = items(30, 3)
    for seed in range(5):
        episode = sample_episode(pool, shots=2, queries=4, generator=torch.Generator().manual_seed(seed), name="toy")
        support, query = {i.uid for i in episode.support}, {i.uid for i in episode.query}
        assert not support & query
        assert [i.answer for i in episode.support] == [0, 0, 1, 1, 2, 2]
        assert sorted(i.answer for i in episode.query) == [0] * 4 + [1] * 4 + [2] * 4
    again = sample_episode(pool, 2, 4, torch.Generator().manual_seed(0), "toy")
    assert again == sample_episode(pool, 2, 4, torch.Generator().manual_seed(0), "toy")  # seeded
    rare = items(30, 3) + [MCItem("rare", "question", ("a", "b", "c", "d"), 3)]  # one example of the answer d
    episode = sample_episode(rare, 2, 1, torch.Generator().manual_seed(0), "toy")
    assert {i.answer for i in episode.support} == {0, 1, 2}  # a class too rare for an episode is left out
    with pytest.raises(PolarVBLLError, match="fewer than two answers have 1 examples plus a query"):
        sample_episode(items(3, 2)[:3], shots=1, queries=1, generator=torch.Generator(), name="toy")


def test_the_weight_perturbation_is_gamma_times_each_norm_and_is_undone_exactly():
    weights = [torch.randn(4, 3), torch.randn(5), torch.zeros(2)]
    grads = [torch.randn(4, 3), torch.randn(5), None]
    deltas = relative_perturbation(weights, grads, gamma=0.1)
    for weight, grad, delta in zip(weights[:2], grads[:2], deltas[:2]):
        assert float(delta.norm()) == pytest.approx(0.1 * float(weight.norm()), rel=1e-6)
        assert torch.allclose(delta / delta.norm(), grad / grad.norm(), atol=1e-6)  # along the ascent direction
    assert torch.equal(deltas[2], torch.zeros(2))
    before = [w.clone() for w in weights]
    with perturbed(weights, deltas):
        assert torch.allclose(weights[0], before[0] + deltas[0])
    assert all(torch.equal(w, b) for w, b in zip(weights, before))  # bit for bit, not w + δ − δ


def test_the_merge_is_the_weighted_sum_of_the_members_updates_of_the_original_weight():
    b0, a0 = torch.randn(6, 2), torch.randn(2, 5)
    members = [(torch.randn(6, 2), torch.randn(2, 5)) for _ in range(3)]
    weights = [0.5, 0.3, 0.2]
    b, a = merged_factors(members, (b0, a0), weights)
    expected = sum(w * (bk @ ak - b0 @ a0) for w, (bk, ak) in zip(weights, members))
    assert b.shape == (6, 8) and a.shape == (8, 5)
    assert torch.allclose(b @ a, expected, atol=1e-5)


def test_routing_keeps_the_top_k_by_score_and_sums_to_one():
    chosen = routing_weights([0.2, 0.9, 0.5, 0.7], beta=10.0, top_k=2)
    assert list(chosen) == [1, 3] and sum(chosen.values()) == pytest.approx(1.0)
    assert chosen[1] / chosen[3] == pytest.approx(torch.exp(torch.tensor(10.0 * 0.2)).item(), rel=1e-6)


def test_the_score_prefers_features_that_separate_the_classes():
    labels = torch.tensor([0, 0, 1, 1])
    separated = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    assert member_score(separated, separated, labels, 0.5) > member_score(mixed, mixed, labels, 0.5)
    # closed form: γ·intra − (1 − γ)·inter with the cosines to the class means
    cos = torch.nn.functional.cosine_similarity(
        separated[:, None], torch.stack([separated[:2].mean(0), separated[2:].mean(0)])[None], dim=-1
    )
    intra = (cos[:2, 0].mean() + cos[2:, 1].mean()) / 2
    inter = (cos[:2, 1].mean() + cos[2:, 0].mean()) / 2
    assert member_score(separated, separated, labels, 0.3) == pytest.approx(float(0.3 * intra - 0.7 * inter), rel=1e-5)
