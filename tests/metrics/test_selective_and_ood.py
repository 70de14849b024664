import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from polar_vbll.errors import PolarVBLLError
from polar_vbll.metrics import CRITERIA, criterion_scores, ood_metrics, risk_coverage, selective_metrics


def test_risk_coverage_by_brute_force():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 3)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, 3, 50)
    coverage, risk = risk_coverage(p, y)
    confidence, wrong = p.max(1), p.argmax(1) != y
    for k in (1, 10, 25, 50):
        answered = np.argsort(-confidence, kind="stable")[:k]
        assert risk[k - 1] == pytest.approx(wrong[answered].mean())
        assert coverage[k - 1] == pytest.approx(k / 50)
    metrics = selective_metrics(p, y)
    assert metrics["sel/aurc"] == pytest.approx(risk.mean())
    assert metrics["sel/acc@80"] == pytest.approx(1 - risk[39]) and metrics["sel/acc@90"] == pytest.approx(1 - risk[44])


def test_ood_metrics_against_scikit_learn():
    rng = np.random.default_rng(1)
    id_scores, ood_scores = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 200)
    out = ood_metrics(id_scores, ood_scores)
    is_id = np.r_[np.ones(300), np.zeros(200)]
    scores = np.r_[id_scores, ood_scores]
    assert out["ood/auroc"] == pytest.approx(roc_auc_score(is_id, scores))
    assert out["ood/aupr_in"] == pytest.approx(average_precision_score(is_id, scores))
    assert out["ood/aupr_out"] == pytest.approx(average_precision_score(1 - is_id, -scores))
    threshold = np.sort(id_scores)[int(np.floor(0.05 * 300))]  # keeps 95 % of ID scores (≥ threshold)
    assert out["ood/fpr95"] == pytest.approx((ood_scores >= threshold).mean(), abs=1 / 200)
    perfect = ood_metrics(np.array([2.0, 3.0]), np.array([0.0, 1.0]))
    assert perfect["ood/auroc"] == 1.0 and perfect["ood/fpr95"] == 0.0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(200, 400))
def test_identical_score_distributions_give_auroc_near_one_half(seed, n):
    rng = np.random.default_rng(seed)
    auroc = ood_metrics(rng.normal(size=n * 10), rng.normal(size=n * 10))["ood/auroc"]
    assert abs(auroc - 0.5) < 0.05
    same = ood_metrics(np.ones(n), np.ones(n))
    assert same["ood/auroc"] == 0.5


@pytest.mark.parametrize(
    ("id_scores", "ood_scores", "match"),
    [
        ([], [1.0], "both ID and OOD"),
        ([1.0], [], "both ID and OOD"),
        ([np.nan], [1.0], "NaN or infinite"),
    ],
)
def test_ood_bad_inputs(id_scores, ood_scores, match):
    with pytest.raises(PolarVBLLError, match=match):
        ood_metrics(id_scores, ood_scores)


def test_criteria_scores_order_confident_over_uncertain():
    confident = torch.tensor([[[8.0, 0.0, 0.0]]]).expand(1, 20, 3)
    flat = torch.zeros(1, 20, 3)
    disagree = torch.tensor([[[8.0, 0.0, 0.0], [0.0, 8.0, 0.0]]]).repeat(1, 10, 1)
    logits = torch.cat([confident, flat, disagree])
    scores = criterion_scores(logits, stochastic=True)
    assert set(scores) == set(CRITERIA.names())
    for name in ("msp", "entropy", "max_logit", "energy"):
        assert scores[name][0] > scores[name][1], name
    assert scores["mutual_info"][2] < scores["mutual_info"][0] - 0.5  # disagreement = epistemic
    assert scores["pred_variance"][2] < scores["pred_variance"][1]
    assert set(criterion_scores(logits, stochastic=False)) == {"msp", "entropy", "max_logit", "energy"}
    masked = torch.tensor([[[3.0, 1.0, float("-inf")]]]).expand(1, 4, 3)
    assert all(np.isfinite(v).all() for v in criterion_scores(masked, stochastic=True).values())
