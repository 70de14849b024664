"""Selective prediction by Learn then Test: the certified threshold holds its risk bound over many draws of the
calibration data, and the p-values are the closed-form binomial (Bentkus) and Hoeffding bounds."""

import math

import numpy as np
import pytest
from scipy.stats import binom

from polar_vbll.conformal import Abstention, calibrate_abstention
from polar_vbll.conformal.abstention import selective_risk
from polar_vbll.errors import PolarVBLLError
from tests.conformal.test_sets import synthetic


def test_the_certified_threshold_holds_its_bound_with_probability_one_minus_delta():
    alpha, delta = 0.1, 0.1
    test_probs, test_labels = synthetic(99, 50_000, scale=4.0)  # the population, to measure the true risk
    failures, coverages = 0, []
    for seed in range(200):
        probs, labels = synthetic(seed, 500, scale=4.0)
        abstention = calibrate_abstention(probs, labels, alpha, delta)
        coverage, risk = selective_risk(test_probs, test_labels, abstention.threshold)
        failures += risk > alpha
        coverages.append(coverage)
    assert failures / 200 <= delta  # (in fact far below: the procedure is conservative)
    assert np.mean(coverages) > 0.5  # and it still answers most questions here


def test_a_temperature_changes_the_certified_share_little():
    """A temperature keeps the ranking of the questions, so the share a threshold can certify should hardly move:
    the grid is fine where an over-confident model's confidences crowd (within 0.01 of 1)."""
    shares = {temperature: [] for temperature in (1.0, 0.25)}
    for seed in range(20):
        probs, labels = synthetic(200 + seed, 256, classes=2, scale=4.0)
        for temperature, found in shares.items():
            sharpened = probs ** (1 / temperature)
            sharpened /= sharpened.sum(1, keepdims=True)
            found.append(calibrate_abstention(sharpened, labels, 0.1, 0.1).calibration_coverage)
    assert abs(np.mean(shares[0.25]) - np.mean(shares[1.0])) < 0.05 and np.mean(shares[0.25]) > 0.3


def test_the_p_value_is_the_smaller_of_hoeffding_and_the_binomial_tail():
    from mapie.risk_control.methods import compute_hoeffding_bentkus_p_value

    risk, n, alpha = 0.04, 200, 0.1
    p = float(compute_hoeffding_bentkus_p_value(np.array([risk]), np.array([float(n)]), alpha, binary=True)[0, 0])
    kl = risk * math.log(risk / alpha) + (1 - risk) * math.log((1 - risk) / (1 - alpha))
    assert p == pytest.approx(min(math.exp(-n * kl), binom.cdf(math.ceil(n * risk), n, alpha)), rel=1e-9)


def test_where_nothing_can_be_certified_every_question_is_abstained_on():
    probs, labels = synthetic(0, 200, scale=0.5)  # nearly uniform: errors everywhere
    abstention = calibrate_abstention(probs, labels, 0.05, 0.1)
    assert abstention.threshold == math.inf and not abstention.answers(probs).any()
    assert (abstention.calibration_coverage, abstention.calibration_risk) == (0.0, 0.0)
    assert abstention.to_dict()["threshold"] is None and Abstention.from_dict(abstention.to_dict()) == abstention


def test_the_calibration_figures_are_those_of_the_threshold_and_it_round_trips():
    probs, labels = synthetic(5, 1000, scale=4.0)
    abstention = calibrate_abstention(probs, labels, 0.1, 0.1, fwer="bonferroni_holm")
    answered = probs.max(1) >= abstention.threshold
    wrong = probs.argmax(1) != labels
    assert abstention.calibration_coverage == answered.mean() and abstention.calibration_risk == wrong[answered].mean()
    assert Abstention.from_dict(abstention.to_dict()) == abstention


@pytest.mark.parametrize(("options", "match"), [
    ({"alpha": 0.0}, r"^alpha: must be in \(0, 1\)"),
    ({"delta": 1.0}, r"^delta: must be in \(0, 1\)"),
    ({"fwer": "holm"}, "^fwer: fixed_sequence or bonferroni_holm, got 'holm'"),
])  # fmt: skip
def test_bad_options_are_one_line(options, match):
    probs, labels = synthetic(0, 50)
    with pytest.raises(PolarVBLLError, match=match):
        calibrate_abstention(probs, labels, **{"alpha": 0.1, "delta": 0.1, **options})
