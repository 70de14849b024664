"""Split conformal sets: MAPIE's own sets, TorchCP's scores and quantile, the closed-form order statistic, and the
coverage guarantee on data with known probabilities."""

import math

import numpy as np
import pytest
import torch
from mapie.conformity_scores import RAPSConformityScore

from polar_vbll.conformal import ConformalSets, SetMethod, calibrate_sets
from polar_vbll.errors import PolarVBLLError
from tests.conformal.torchcp_modules import torchcp_module


def synthetic(seed: int, n: int, classes: int = 4, scale: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a softmax over Gaussian logits, and labels drawn from them (a calibrated model)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)) * scale
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    labels = (probs.cumsum(1) < rng.uniform(size=(n, 1))).sum(1).clip(max=classes - 1)
    return probs, labels


@pytest.mark.parametrize("method", list(SetMethod))
def test_the_stored_threshold_rebuilds_mapies_own_sets(method):
    from mapie.classification import SplitConformalClassifier

    from polar_vbll.conformal.sets import _given_probabilities

    for seed in range(5):
        probs, labels = synthetic(seed, 600)
        conformal = calibrate_sets(probs[:300], labels[:300], 0.1, method, seed=seed)
        score = RAPSConformityScore() if method is SetMethod.RAPS else method.value
        mapie = SplitConformalClassifier(
            _given_probabilities(4), confidence_level=0.9, conformity_score=score, prefit=True, random_state=seed
        )
        mapie.conformalize(probs[:300], labels[:300])
        params = {} if method is SetMethod.LAC else {"conformity_score_params": {"include_last_label": True}}
        expected = mapie.predict_set(probs[300:], **params)[1][:, :, 0]
        assert np.array_equal(conformal.sets(probs[300:]), expected)
        if method is SetMethod.RAPS:  # the stored penalty, k_reg and threshold are MAPIE's own
            assert (conformal.penalty, conformal.k_reg) == (score.lambda_star, score.k_star[0])
            assert conformal.threshold == pytest.approx(score.quantiles_[0], abs=1e-12)
            assert conformal.n_calibration == 270  # MAPIE tunes λ and k_reg on a stratified 10 %


def test_raps_sets_follow_torchcps_penalized_scores():
    """TorchCP's RAPS score without randomization is the penalized mass up to and including a class; a RAPS set holds
    the top class and each class whose predecessor in the ranking scores below q̂ (the class that reaches q̂
    included)."""
    probs, labels = synthetic(4, 600, classes=6)
    conformal = calibrate_sets(probs[:300], labels[:300], 0.1, "raps", seed=0)
    assert conformal.penalty > 0 and conformal.k_reg >= 1
    raps = torchcp_module("classification.score.raps").RAPS(
        randomized=False, penalty=conformal.penalty, kreg=conformal.k_reg
    )
    scores = raps(torch.from_numpy(np.log(probs[300:]))).numpy()  # (N, C): every class's score
    order = np.argsort(-probs[300:], axis=1, kind="stable")
    predecessor_scores = np.take_along_axis(scores, order, axis=1)[:, :-1]
    expected_ranked = np.concatenate([np.ones((300, 1), bool), predecessor_scores < conformal.threshold], axis=1)
    expected = np.zeros_like(expected_ranked)
    np.put_along_axis(expected, order, expected_ranked, axis=1)
    assert np.array_equal(conformal.sets(probs[300:]), expected)


def test_aps_calibration_scores_lie_between_torchcps_deterministic_bounds():
    from mapie.classification import SplitConformalClassifier

    from polar_vbll.conformal.sets import _given_probabilities

    aps = torchcp_module("classification.score.aps").APS(randomized=False)
    probs, labels = synthetic(3, 400)
    mapie = SplitConformalClassifier(_given_probabilities(4), 0.9, conformity_score="aps", prefit=True, random_state=0)
    mapie.conformalize(probs, labels)
    upper = aps(torch.from_numpy(np.log(probs)), torch.from_numpy(labels)).numpy()  # mass up to y, y included
    lower = upper - probs[np.arange(400), labels]  # the mass ranked above y
    scores = np.asarray(mapie.conformity_scores).ravel()
    assert np.all(scores >= lower - 1e-9) and np.all(scores <= upper + 1e-9)


def test_the_threshold_is_the_conformal_order_statistic_and_inf_when_too_few_examples():
    probs, labels = synthetic(1, 99)
    conformal = calibrate_sets(probs, labels, 0.2, "lac")
    rank = math.ceil(100 * 0.8)
    assert conformal.threshold == np.sort(1 - probs[np.arange(99), labels])[rank - 1] and conformal.n_calibration == 99
    tiny = calibrate_sets(probs[:5], labels[:5], 0.1, "lac")  # ⌈6 × 0.9⌉ = 6 > 5: every class, always
    assert tiny.threshold == math.inf and tiny.sets(probs).all()
    assert tiny.to_dict()["threshold"] is None and ConformalSets.from_dict(tiny.to_dict()) == tiny


@pytest.mark.parametrize("method", list(SetMethod))
def test_coverage_holds_over_many_seeds_and_is_not_far_above(method):
    alpha, n = 0.1, 200
    coverages, sizes = [], []
    for seed in range(200):
        probs, labels = synthetic(1000 + seed, 2 * n)
        sets = calibrate_sets(probs[:n], labels[:n], alpha, method, seed=seed).sets(probs[n:])
        coverages.append(sets[np.arange(n), labels[n:]].mean())
        sizes.append(sets.sum(1).mean())
    mean = float(np.mean(coverages))  # E[coverage] ≥ 1 − α; for LAC's continuous scores also ≤ 1 − α + 1/(n + 1)
    assert mean >= 1 - alpha - 0.005
    assert mean <= (1 - alpha + 1 / (n + 1) + 0.005 if method is SetMethod.LAC else 1.0)
    assert 1 < np.mean(sizes) < 4


def test_a_stored_set_rule_round_trips_and_bad_alpha_is_one_line():
    probs, labels = synthetic(0, 100)
    conformal = calibrate_sets(probs, labels, 0.1, "aps")
    assert ConformalSets.from_dict(conformal.to_dict()) == conformal
    for alpha in (0.0, 1.0, -0.1):
        with pytest.raises(PolarVBLLError, match=r"^alpha: the miscoverage must be in \(0, 1\)"):
            calibrate_sets(probs, labels, alpha)
