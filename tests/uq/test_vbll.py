import math

import pytest
import torch
from vbll.layers.classification import DiscClassification

from polar_vbll.errors import PolarVBLLError
from polar_vbll.uq import UQ_METHODS, VBLLConfig, VBLLHead, uncertainty_decomposition

D, C, N = 16, 3, 100


def make_head(covariance: str, seed: int = 0, **options) -> VBLLHead:
    torch.manual_seed(seed)
    head = VBLLHead(torch.randn(C, D) * 0.3, N, VBLLConfig(covariance=covariance, **options))
    with torch.no_grad():  # move away from the near-zero initial covariance so that every term matters
        head.guide.log_diag.add_(torch.randn(C, D) * 0.3 + 1.5)
        head.guide.mean.add_(torch.randn(C, D) * 0.2)  # away from the prior mean too
        if covariance in ("dense", "lowrank"):
            head.guide.offdiag.add_(torch.randn(head.guide.offdiag.shape) * 0.05)
    return head


def reference(head: VBLLHead, covariance: str) -> DiscClassification:
    ref = DiscClassification(D, C, 1.0 / N, parameterization=covariance, prior_scale=1.0, wishart_scale=1.0, dof=1.0)
    with torch.no_grad():
        ref.W_mean.copy_(head.guide.mean)
        ref.W_logdiag.copy_(head.guide.log_diag)
        if covariance == "dense":
            ref.W_offdiag.copy_(head.guide.offdiag)
        ref.noise_logdiag.copy_(head.noise_log_std)
    return ref


@pytest.mark.parametrize("covariance", ["dense", "diagonal"])
def test_jensen_loss_and_logit_predictive_equal_the_vbll_package(covariance):
    head = make_head(covariance, prior_mean="zero")  # vbll's prior is centered at 0
    ref = reference(head, covariance)
    x, y = torch.randn(8, D), torch.randint(0, C, (8,))
    # vbll drops the constant −d per class from the KL; ours is the exact KL
    expected = ref(x).train_loss_fn(y) - head.regularization_weight * 0.5 * C * D
    ours = head(x).train_loss_fn(y)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=0)
    mean, var = head.logit_moments(x)
    pred = ref.logit_predictive(x)
    torch.testing.assert_close(mean, pred.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var, pred.covariance_diagonal, rtol=1e-5, atol=1e-7)
    torch.manual_seed(0)
    probs = head(x).predictive("mc", 20_000)
    torch.testing.assert_close(probs, ref.predictive(x, n_samples=20_000), atol=0.02, rtol=0)


@pytest.mark.parametrize("covariance", ["dense", "diagonal", "lowrank"])
def test_kl_is_exact_splits_into_mean_and_covariance_parts_and_scales_with_the_weight(covariance):
    head = make_head(covariance)
    q = head.guide.distribution()
    prior_mean = head.model.prior_mean
    assert torch.count_nonzero(prior_mean) > 0  # default: centered on the initial rows, not 0
    p = torch.distributions.Normal(prior_mean, math.sqrt(head.prior_var))
    if covariance == "diagonal":
        exact = torch.distributions.kl_divergence(q.base_dist, p).sum()
    else:
        p_mvn = torch.distributions.MultivariateNormal(prior_mean, head.prior_var * torch.eye(D))
        exact = torch.distributions.kl_divergence(q.base_dist, p_mvn).sum()
    torch.testing.assert_close(head.kl_divergence(), exact, rtol=1e-4, atol=1e-4)
    mean_part, covariance_part = head.kl_terms()
    base = q.base_dist
    covariance_q = torch.diag_embed(base.variance) if covariance == "diagonal" else base.covariance_matrix
    q_at_prior_mean = torch.distributions.MultivariateNormal(prior_mean, covariance_q)
    p_mvn = torch.distributions.MultivariateNormal(prior_mean, head.prior_var * torch.eye(D))
    covariance_only = torch.distributions.kl_divergence(q_at_prior_mean, p_mvn).sum()
    torch.testing.assert_close(covariance_part, covariance_only, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mean_part + covariance_part, exact, rtol=1e-4, atol=1e-4)
    x, y = torch.randn(5, D), torch.randint(0, C, (5,))
    data_term = -head.jensen_bound(x, y).mean()
    regularizer = head.wishart_term() - head.kl_divergence()
    for n_train in (10, 1000):
        head.regularization_weight = 1.0 / n_train
        torch.testing.assert_close(head.jensen_loss(x, y), data_term - regularizer / n_train)


@pytest.mark.parametrize("covariance", ["dense", "diagonal"])
def test_monte_carlo_elbo_sits_above_the_jensen_bound_and_converges(covariance):
    head = make_head(covariance)
    x, y = torch.randn(8, D), torch.randint(0, C, (8,))
    jensen = head.jensen_loss(x, y).item()
    torch.manual_seed(1)
    spread = {}
    for particles in (10, 1000):
        draws = torch.stack([head.mc_loss(x, y, num_particles=particles) for _ in range(6)])
        spread[particles] = draws.std().item()
        # the MC loss estimates −E_q[log lik] + KL/N ≤ the Jensen loss (Jensen lower-bounds E_q[log softmax])
        assert draws.mean().item() <= jensen + 3 * spread[particles] / math.sqrt(6)
    assert spread[1000] < spread[10] / 3


def test_untrained_head_reproduces_the_point_logits():
    weight = torch.randn(C, D)
    head = VBLLHead(weight, N)
    x = torch.randn(4, D)
    mean, var = head.logit_moments(x)
    torch.testing.assert_close(mean, x @ weight.T)
    probs = head(x).predictive("probit")
    assert (probs.argmax(-1) == (x @ weight.T).argmax(-1)).all()


@pytest.mark.parametrize("covariance", ["dense", "diagonal", "lowrank"])
def test_covariance_initialization(covariance):
    torch.manual_seed(0)
    weight, x = torch.randn(C, D), torch.randn(4, D)
    vbll_init = VBLLHead(weight, N, VBLLConfig(covariance=covariance))
    at_prior = VBLLHead(weight, N, VBLLConfig(covariance=covariance, cov_init="prior"))
    # vbll's: standard deviations 1/d, so the logit variance is ‖φ‖² / d² plus the noise
    noise = vbll_init.noise_var()
    torch.testing.assert_close(
        vbll_init.logit_moments(x)[1] - noise, x.pow(2).sum(-1, keepdim=True).expand(4, C) / D**2, rtol=0.02, atol=1e-6
    )
    # the prior's: S_k = s₀ I, so the covariance part of the KL starts at (almost) 0 and φᵀSφ = s₀ ‖φ‖²
    ratio = 1 / (D**2 * vbll_init.prior_var)  # per-entry variance ÷ prior variance
    expected_kl = 0.5 * C * D * (ratio - 1 - math.log(ratio))
    assert vbll_init.kl_terms()[1].item() == pytest.approx(expected_kl, rel=0.01)
    assert abs(at_prior.kl_terms()[1].item()) < 1e-2 * C * D
    torch.testing.assert_close(
        at_prior.logit_moments(x)[1] - noise,
        at_prior.prior_var * x.pow(2).sum(-1, keepdim=True).expand(4, C),
        rtol=0.02,
        atol=1e-6,
    )
    torch.testing.assert_close(at_prior.logit_moments(x)[0], vbll_init.logit_moments(x)[0])  # same mean
    with pytest.raises(PolarVBLLError, match="cov_init: expected one of .vbll., .prior."):
        VBLLConfig(cov_init="zero")


def test_masked_choices_get_no_probability():
    head = make_head("dense")
    mask = torch.tensor([[True, True, False]] * 4)
    out = head(torch.randn(4, D), mask)
    for method in ("mc", "probit"):
        probs = out.predictive(method, 500)
        assert (probs[:, 2] == 0).all() and torch.allclose(probs.sum(-1), torch.ones(4))
    loss = out.train_loss_fn(torch.tensor([0, 1, 0, 1]))
    assert torch.isfinite(loss)


def test_weight_samples_leave_the_logit_noise_to_the_aleatoric_part():
    torch.manual_seed(0)
    head = VBLLHead(torch.randn(C, D), N, VBLLConfig(covariance="diagonal"))
    x = torch.randn(64, D)
    with torch.no_grad():
        head.guide.log_diag.fill_(-30.0)  # the weights are known: all spread is the logit noise σ² = e⁻¹
        head.noise_log_std.fill_(-0.5)
    noisy = head(x).sample_logits(4000, torch.Generator().manual_seed(1))
    weights_only = head.sample_logits(x, 4000, generator=torch.Generator().manual_seed(1))
    assert uncertainty_decomposition(torch.softmax(noisy, -1))["epistemic"].mean() > 0.02  # noise taken for epistemic
    parts = uncertainty_decomposition(torch.softmax(weights_only, -1))
    assert parts["epistemic"].max() < 1e-6
    # the noise is marginalized (probit approximation), so the predictive is still the noisy one's
    torch.testing.assert_close(
        torch.softmax(weights_only, -1).mean(1), torch.softmax(noisy, -1).mean(1), atol=0.02, rtol=0
    )


@pytest.mark.parametrize("covariance", ["dense", "diagonal"])
def test_weight_samples_equal_the_logit_samples_without_noise_and_draw_as_many_normals(covariance):
    head = make_head(covariance, logit_noise=False)
    x = torch.randn(5, D)
    first, second = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    out = head(x)
    torch.testing.assert_close(out.weight_logit_samples(7, first), out.sample_logits(7, second))
    noisy = make_head(covariance)(x)
    noisy.weight_logit_samples(7, first)
    noisy.sample_logits(7, second)
    assert torch.equal(first.get_state(), second.get_state())  # runs stay reproducible across batches


def test_uncertainty_decomposition():
    certain = torch.tensor([[[1.0, 0.0]] * 5])
    disagree = torch.tensor([[[1.0, 0.0], [0.0, 1.0]] * 5])
    flat = torch.full((1, 10, 2), 0.5)
    for samples, epistemic in ((certain, 0.0), (disagree, math.log(2)), (flat, 0.0)):
        parts = uncertainty_decomposition(samples)
        assert parts["epistemic"].item() == pytest.approx(epistemic, abs=1e-6)
        assert parts["total"].item() == pytest.approx((parts["aleatoric"] + parts["epistemic"]).item(), abs=1e-6)


def test_state_dict_round_trip_and_several_heads_in_one_process():
    a, b = make_head("dense", seed=0), make_head("dense", seed=1)
    x = torch.randn(3, D)
    assert not torch.allclose(a.logit_moments(x)[1], b.logit_moments(x)[1])
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a.logit_moments(x), b.logit_moments(x))
    assert "vbll" in UQ_METHODS and "map" in UQ_METHODS and "mle" in UQ_METHODS


@pytest.mark.parametrize(
    ("features", "labels", "match"),
    [
        (torch.full((2, D), float("nan")), None, "NaN or infinite"),
        (torch.randn(2, D + 1), None, rf"expected shape \(B, {D}\)"),
        (torch.randn(2, D), torch.tensor([0, C]), rf"labels: values must lie in \[0, {C - 1}\]"),
    ],
)
def test_bad_inputs(features, labels, match):
    head = make_head("diagonal")
    with pytest.raises(PolarVBLLError, match=match):
        out = head(features)
        out.train_loss_fn(labels)


def test_bad_config():
    with pytest.raises(PolarVBLLError, match="covariance: expected one of .dense., .diagonal., .lowrank., got .full."):
        VBLLConfig(covariance="full")
    with pytest.raises(PolarVBLLError, match="n_train must be >= 1"):
        VBLLHead(torch.zeros(2, 4), 0)


@pytest.mark.parametrize("covariance", ["dense", "diagonal"])
def test_post_hoc_laplace_equals_the_inverse_hessian_blocks(covariance):
    head = make_head(covariance)
    x, y = torch.randn(40, D), torch.randint(0, C, (40,))
    head.laplace_(x, y, n_total=80)

    def neg_log_posterior(weight):
        nll = torch.nn.functional.cross_entropy(x @ weight.view(C, D).T, y, reduction="sum") * 2  # M=40 stands for 80
        return nll + 0.5 * (weight - head.model.prior_mean.flatten()).pow(2).sum() / head.prior_var

    hessian = torch.autograd.functional.hessian(neg_log_posterior, head.guide.mean.detach().flatten())
    for k in range(C):
        block = hessian[k * D : (k + 1) * D, k * D : (k + 1) * D]
        covariance_k = torch.linalg.inv(block)
        if covariance == "dense":
            ours = head.guide.scale_tril()[k] @ head.guide.scale_tril()[k].T
            torch.testing.assert_close(ours, covariance_k, rtol=1e-3, atol=1e-6)
        else:
            torch.testing.assert_close(
                head.guide.log_diag[k].exp() ** 2, torch.diagonal(covariance_k), rtol=1e-3, atol=1e-7
            )
    with pytest.raises(PolarVBLLError, match="not 'lowrank'"):
        make_head("lowrank").laplace_(x, y)
