"""The exact head phase of VBLL: the covariance fixed point and the empirical-Bayes prior are stationary points of
the ELBO (checked by autograd on an independent ELBO written from S directly), and the whole phase beats 2,000
Adam steps on the same buffer."""

import math

import pytest
import torch

from polar_vbll.errors import PolarVBLLError
from polar_vbll.fields import ConfigFieldError
from polar_vbll.uq import VBLLConfig, VBLLHead, vbll_solve

D, C, M, N = 6, 3, 40, 400


def problem(seed: int = 0, covariance: str = "dense", **options):
    options.setdefault("solve_scale", "dataset")  # the buffer stands for N examples, as in elbo_of
    """A head and a buffer of M features standing for N, with a choice mask that hides class 2 of some rows."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(M, D, generator=generator) * 2
    truth = torch.randn(C, D, generator=generator)
    labels = (features @ truth.T + torch.randn(M, C, generator=generator)).argmax(-1)
    mask = torch.ones(M, C, dtype=torch.bool)
    mask[:5, 2] = False
    labels[:5] = labels[:5].clamp(max=1)
    torch.manual_seed(seed)
    head = VBLLHead(torch.randn(C, D, generator=generator) * 0.3, N, VBLLConfig(covariance=covariance, **options))
    return head, features, labels, mask


def elbo_of(mean, cov, noise_var, s0, prior_mean, features, labels, mask):
    """(N / M) Σ ℓ_m − KL, written from the covariances S (C, d, d) themselves (wishart left out: it has no S, s₀)."""
    logit_mean = features @ mean.T
    var = torch.einsum("md,cde,me->mc", features, cov, features) + noise_var
    pre = (logit_mean + 0.5 * var).masked_fill(~mask, float("-inf"))
    bound = logit_mean.gather(1, labels[:, None]).squeeze(1) - torch.logsumexp(pre, -1)
    d = mean.shape[1]
    kl = 0.5 * sum(
        (mean[k] - prior_mean[k]).pow(2).sum() / s0
        + torch.trace(cov[k]) / s0
        + d * torch.log(s0)
        - torch.logdet(cov[k])
        - d
        for k in range(mean.shape[0])
    )
    return bound.sum() * (N / M) - kl


def covariances(head) -> torch.Tensor:
    if head.guide.covariance == "dense":
        chol = head.guide.scale_tril()
        return chol @ chol.transpose(-1, -2)
    return torch.diag_embed((2 * head.guide.log_diag).exp())


@pytest.mark.parametrize("covariance", ["dense", "diagonal"])
def test_the_covariance_fixed_point_zeroes_the_elbo_gradient_in_s(covariance):
    head, features, labels, mask = problem(covariance=covariance)
    for _ in range(30):
        vbll_solve.covariance_step(head, features, mask, N / M)
    cov = covariances(head).detach().double().requires_grad_(True)
    s0 = torch.tensor(head.prior_var, dtype=torch.float64)
    args = (head.guide.mean.detach().double(), cov, head.noise_var().detach().double(), s0)
    elbo = elbo_of(*args, head.model.prior_mean.double(), features.double(), labels, mask)
    (grad,) = torch.autograd.grad(elbo, cov)
    if covariance == "diagonal":  # stationary within the diagonal family: the diagonal of the gradient
        grad = torch.diagonal(grad, dim1=-2, dim2=-1)
    scale = (1 / s0).item()  # the size of each term of the gradient (½ s₀⁻¹ I, ½ S⁻¹)
    assert grad.abs().max() <= 1e-4 * scale
    # and away from the fixed point the gradient is not small: the check can fail
    fresh, *_ = problem(covariance=covariance)
    cov = covariances(fresh).detach().double().requires_grad_(True)
    args = (fresh.guide.mean.detach().double(), cov, fresh.noise_var().detach().double(), s0)
    (grad,) = torch.autograd.grad(elbo_of(*args, fresh.model.prior_mean.double(), features.double(), labels, mask), cov)
    assert grad.abs().max() > 1e-2 * scale


def test_empirical_bayes_prior_zeroes_the_elbo_gradient_in_s0():
    head, features, labels, mask = problem()
    with torch.no_grad():
        head.guide.mean.add_(torch.randn(C, D) * 0.5)
    vbll_solve.covariance_step(head, features, mask, N / M)
    s0 = vbll_solve.empirical_bayes_prior(head)
    assert head.prior_var == pytest.approx(s0) and float(head.model.prior_var) == pytest.approx(s0)
    log_s0 = torch.tensor(math.log(s0), dtype=torch.float64, requires_grad=True)
    args = (head.guide.mean.detach().double(), covariances(head).detach().double(), head.noise_var().detach().double())
    elbo = elbo_of(*args, log_s0.exp(), head.model.prior_mean.double(), features.double(), labels, mask)
    (grad,) = torch.autograd.grad(elbo, log_s0)
    assert abs(grad.item()) <= 1e-6 * C * D  # ∂ELBO/∂log s₀ = 0 (each of the C d terms is of order 1)


@pytest.mark.parametrize("covariance", ["dense", "diagonal", "lowrank"])
def test_the_exact_phase_reaches_an_elbo_at_least_that_of_2000_adam_steps(covariance):
    head, features, labels, mask = problem(covariance=covariance, empirical_bayes=False)
    adam_head, *_ = problem(covariance=covariance, empirical_bayes=False)
    optimizer = torch.optim.Adam(adam_head.parameters(), lr=1e-2)
    for _ in range(2000):
        optimizer.zero_grad()
        vbll_solve.negative_elbo(adam_head, features, labels, mask, N).backward()
        optimizer.step()
    result = head.solve(features, labels, mask, n_total=N)
    with torch.no_grad():
        adam = -float(vbll_solve.negative_elbo(adam_head, features, labels, mask, N))
    assert result["elbo_after"] >= adam - 1e-4 * abs(adam)
    assert result["elbo_after"] > result["elbo_before"]
    # empirical Bayes may only add to the ELBO (it maximizes it over s₀)
    eb_head, *_ = problem(covariance=covariance)
    assert eb_head.solve(features, labels, mask, n_total=N)["elbo_after"] >= result["elbo_after"] - 1e-4


def test_head_phase_options_are_validated():
    with pytest.raises(ConfigFieldError, match="solve_every"):
        VBLLConfig(solve_every=0)
    with pytest.raises(PolarVBLLError, match="no closed-form covariance"):
        head, features, _, mask = problem(covariance="lowrank")
        vbll_solve.covariance_step(head, features, mask, 1.0)


def test_the_buffer_weighting_is_the_datasets_when_the_buffer_is_the_whole_training_set():
    results = []
    for scale in ("buffer", "dataset"):
        head, features, labels, mask = problem(solve_scale=scale)
        results.append((head.solve(features, labels, mask, n_total=M), head.guide.mean.detach().clone()))
    assert results[0][0] == results[1][0] and torch.equal(results[0][1], results[1][1])
    head, features, labels, mask = problem(solve_scale="buffer")
    other, *_ = problem(solve_scale="dataset")
    head.solve(features, labels, mask, n_total=N)
    other.solve(features, labels, mask, n_total=N)
    # counted N / M times, the buffer pins the covariance down more tightly
    assert covariances(other).diagonal(dim1=-2, dim2=-1).sum() < covariances(head).diagonal(dim1=-2, dim2=-1).sum()
