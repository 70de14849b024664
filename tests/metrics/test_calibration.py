import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from netcal.metrics import ECE as NetcalECE
from netcal.metrics import MCE as NetcalMCE
from sklearn.metrics import log_loss
from torchmetrics.functional.classification import multiclass_calibration_error

from polar_vbll.errors import PolarVBLLError
from polar_vbll.metrics import accuracy, adaptive_ece, brier, classification_metrics, classwise_ece, ece, mce, nll


def random_probs(n, c, seed=0, scale=2.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * scale
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, rng.integers(0, c, n)


@pytest.mark.parametrize(("c", "bins"), [(2, 15), (4, 15), (5, 10)])
def test_ece_equals_torchmetrics(c, bins):
    p, y = random_probs(1000, c, seed=c)
    ref = multiclass_calibration_error(torch.tensor(p), torch.tensor(y), num_classes=c, n_bins=bins, norm="l1")
    assert ece(p, y, bins) == pytest.approx(ref.item(), abs=1e-6)


@pytest.mark.parametrize("c", [3, 4, 5])
def test_ece_equals_netcal_top_label(c):
    # netcal treats 2-column input as binary calibration of class 1, so the top-label cross-check uses C >= 3
    p, y = random_probs(1000, c, seed=10 + c)
    assert ece(p, y, 15) == pytest.approx(NetcalECE(bins=15).measure(p, y), abs=1e-6)


def test_nll_brier_accuracy_against_references():
    p, y = random_probs(500, 4, seed=3)
    assert nll(p, y) == pytest.approx(log_loss(y, p, labels=range(4)), abs=1e-9)
    assert brier(p, y) == pytest.approx(((p - np.eye(4)[y]) ** 2).sum(1).mean(), abs=1e-12)
    assert accuracy(p, y) == pytest.approx((p.argmax(1) == y).mean())
    samples = np.stack([p, p], axis=1)  # (N, S, C): averaged first
    assert classification_metrics(samples, y) == classification_metrics(p, y)
    assert set(classification_metrics(p, y)) == {
        "cls/acc",
        "cal/ece",
        "cls/nll",
        "cls/brier",
        "cal/mce",
        "cal/aece",
        "cal/cw_ece",
    }


def test_perfectly_calibrated_predictions_have_zero_ece():
    # every example says 0.75 for its top class, and exactly 3 of 4 are right
    p = np.tile([0.75, 0.25], (400, 1))
    y = np.array([0, 0, 0, 1] * 100)
    assert ece(p, y) == pytest.approx(0.0, abs=1e-12)
    assert ece(np.tile([1.0, 0.0], (8, 1)), np.zeros(8, int)) == 0.0


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), c=st.integers(2, 6), seed=st.integers(0, 10_000), scale=st.floats(0.0, 20.0))
def test_properties(n, c, seed, scale):
    p, y = random_probs(n, c, seed, scale)
    value = ece(p, y)
    assert 0.0 <= value <= 1.0
    assert nll(p, y) >= 0.0 and 0.0 <= brier(p, y) <= 2.0
    order = np.random.default_rng(seed).permutation(n)
    assert ece(p[order], y[order]) == pytest.approx(value, abs=1e-12)
    assert nll(p[order], y[order]) == pytest.approx(nll(p, y), abs=1e-12)


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        (np.array([[0.5, 0.6]]), [0], "sums to 1.100000"),
        (np.array([[np.nan, 1.0]]), [0], "NaN or infinite"),
        (np.array([[0.5, 0.5]]), [2], r"must lie in \[0, 1\]"),
        (np.zeros((0, 2)), np.zeros(0, int), "empty"),
        (np.array([0.5, 0.5]), [0], "expected shape"),
        (np.array([[0.5, 0.5]]), [0, 1], "labels: expected shape"),
        (np.array([[0.5, 0.5]]), [0.0], "expected integers"),
        (np.array([[1.5, -0.5]]), [0], "outside"),
    ],
)
def test_bad_inputs_raise_clear_errors(probs, labels, match):
    with pytest.raises(PolarVBLLError, match=match):
        classification_metrics(probs, np.asarray(labels))
    with pytest.raises(PolarVBLLError, match="n_bins"):
        ece(*random_probs(4, 2), n_bins=0)


@pytest.mark.parametrize("c", [3, 5])
def test_mce_equals_netcal_and_torchmetrics(c):
    p, y = random_probs(800, c, seed=20 + c)
    ref = multiclass_calibration_error(torch.tensor(p), torch.tensor(y), num_classes=c, n_bins=15, norm="max")
    assert mce(p, y) == pytest.approx(NetcalMCE(bins=15).measure(p, y), abs=1e-6)
    assert mce(p, y) == pytest.approx(ref.item(), abs=1e-6)


def test_classwise_ece_equals_netcal_binary_per_class():
    p, y = random_probs(800, 4, seed=7)
    per_class = [
        NetcalECE(bins=15).measure(np.stack([1 - p[:, k], p[:, k]], 1), (y == k).astype(int)) for k in range(4)
    ]
    assert classwise_ece(p, y) == pytest.approx(np.mean(per_class), abs=1e-6)


def test_adaptive_ece_uses_equal_mass_bins():
    p, y = random_probs(300, 3, seed=9)
    confidence, correct = p.max(1), (p.argmax(1) == y)
    order = np.argsort(confidence, kind="stable")
    expected = sum(abs(correct[chunk].sum() - confidence[chunk].sum()) for chunk in np.array_split(order, 15)) / 300
    assert adaptive_ece(p, y) == pytest.approx(expected, abs=1e-12)
    assert adaptive_ece(np.tile([0.75, 0.25], (400, 1)), np.array([0, 0, 0, 1] * 100), n_bins=1) == pytest.approx(0.0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), c=st.integers(2, 6), seed=st.integers(0, 10_000), scale=st.floats(0.0, 20.0))
def test_binned_metrics_properties(n, c, seed, scale):
    p, y = random_probs(n, c, seed, scale)
    for metric in (mce, adaptive_ece, classwise_ece):
        value = metric(p, y)
        assert 0.0 <= value <= 1.0
        order = np.random.default_rng(seed).permutation(n)
        if metric is not adaptive_ece:  # equal-mass bins split ties by position
            assert metric(p[order], y[order]) == pytest.approx(value, abs=1e-12)
    assert ece(p, y) <= mce(p, y) + 1e-12
