"""Paired bootstrap intervals, cross-checked against scipy.stats.bootstrap."""

import numpy as np
import pytest
from scipy import stats

from polar_vbll.errors import PolarVBLLError
from polar_vbll.metrics import ece, nll, paired_bootstrap


def _predictions(seed=0, n=400):
    """Calibrated probabilities (labels drawn from them) and an overconfident version of them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 2)) * 1.5
    soft = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = (rng.random(n) < soft[:, 1]).astype(int)
    sharp = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)
    return sharp, soft, labels


@pytest.mark.parametrize("metric", [nll, ece])
def test_paired_interval_agrees_with_scipy(metric):
    sharp, soft, labels = _predictions()
    ours = paired_bootstrap(metric, sharp, soft, labels, n_resamples=3000, seed=1)
    assert ours["diff"] == pytest.approx(metric(sharp, labels) - metric(soft, labels))
    index = np.arange(len(labels))

    def statistic(idx):
        idx = idx.astype(int)
        return metric(sharp[idx], labels[idx]) - metric(soft[idx], labels[idx])

    theirs = stats.bootstrap(
        (index,), statistic, n_resamples=3000, method="percentile", vectorized=False, random_state=2
    ).confidence_interval
    width = theirs.high - theirs.low
    assert ours["low"] == pytest.approx(theirs.low, abs=0.15 * width)
    assert ours["high"] == pytest.approx(theirs.high, abs=0.15 * width)
    assert ours["low"] > 0  # the overconfident predictions are worse, beyond resampling noise


def test_identical_methods_have_a_zero_width_interval_and_bad_shapes_are_refused():
    sharp, _, labels = _predictions()
    assert paired_bootstrap(nll, sharp, sharp, labels, n_resamples=200) == {"diff": 0.0, "low": 0.0, "high": 0.0}
    with pytest.raises(PolarVBLLError, match="shapes differ"):
        paired_bootstrap(nll, sharp, sharp[:10], labels)
