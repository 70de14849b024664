"""The exact head phase of the VBLL head: its posterior solved on cached features instead of nudged by SGD steps.

With the adapter fixed, the head's ELBO depends on the data only through the features φ_m of a buffer of M
training examples standing for N. Written per training set (as ``fit`` scales it, the loss is this over N):

    ELBO = (N / M) Σ_m ℓ(φ_m, y_m) + wishart − KL(q ‖ p),
    ℓ(φ, y) = w̄_yᵀφ − log Σ_k exp(w̄_kᵀφ + ½ v_k),   v_k = φᵀ S_k φ + σ_k².

**Covariance.** ∂ℓ/∂S_k = −½ p̃_k φφᵀ with p̃ = softmax(W̄φ + ½ v) (classes outside an example's choices get 0),
and ∂KL/∂S_k = ½ (s₀⁻¹ I − S_k⁻¹); the KL weight 1/N of ``fit``'s loss multiplies both sides alike, so the
stationary point is the one of the ELBO per training set. Setting its gradient to 0:

    dense:     S_k⁻¹ = s₀⁻¹ I + (N / M) Σ_m p̃_mk φ_m φ_mᵀ
    diagonal:  1 / S_k,jj = 1 / s₀ + (N / M) Σ_m p̃_mk φ_mj²

p̃ depends on S through v, so the update is iterated to its fixed point (a few iterations: v is small against the
logits). The low-rank family has no closed form; it falls back to full-buffer gradient steps.

**Prior scale (empirical Bayes).** ∂KL/∂s₀ = ½ Σ_k [d / s₀ − (‖w̄_k − m_k‖² + tr S_k) / s₀²] = 0 gives
s₀ = Σ_k (‖w̄_k − m_k‖² + tr S_k) / (C d); the likelihood does not depend on s₀.

**Mean and noise.** No closed form (the softmax); L-BFGS on the C × d + C parameters with S fixed, on the whole
buffer (no backbone pass); with empirical Bayes log s₀ joins them, since the mean moves s₀'s optimum and alternating
the two converges slowly.

The three are alternated for ``rounds``; every sum over m is a plain sum of per-example terms, so under data
parallelism each becomes an all-reduce of the per-process sums.

**Which N.** ``solve_scale="buffer"`` (default) takes N = M: the posterior of the examples the phase has seen, so
its mean is not fitted to M examples as if they were the whole training set (with M = 512 of SST-2's 67k, N / M =
131 weighs the buffer's noise like 67k examples' evidence). ``"dataset"`` takes N = the training set's size, the
stationary point of ``fit``'s own objective; both coincide when the buffer holds the whole training set.
"""

from __future__ import annotations

import math

import torch

from ..errors import PolarVBLLError
from ..models.backbone import mask_choices


def tilted_probs(head, features: torch.Tensor, choice_mask: torch.Tensor | None) -> torch.Tensor:
    """p̃ (M, C) = softmax(W̄φ + ½ v) with v = φᵀ S φ + σ², 0 outside each example's choices."""
    mean, var = head.logit_moments(features)
    return torch.softmax(mask_choices(mean + 0.5 * var, choice_mask), -1)


@torch.no_grad()
def covariance_step(head, features: torch.Tensor, choice_mask: torch.Tensor | None, scale: float) -> None:
    """One fixed-point update of every S_k (dense or diagonal) at the current mean, noise and s₀; ``scale`` = N / M."""
    probs = tilted_probs(head, features, choice_mask) * scale  # (M, C)
    guide, s0 = head.guide, head.prior_var
    if guide.covariance == "dense":
        # in float64: with ‖φ‖² ~ 10³ and N / M ~ 10² the precision spans ~7 orders of magnitude, beyond fp32's
        # Cholesky of its inverse
        x, p = features.double(), probs.double()
        eye = torch.eye(head.in_features, dtype=torch.float64, device=features.device)
        precision = torch.einsum("mc,md,me->cde", p, x, x) + eye / s0
        chol = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(precision)))
        guide.log_diag.copy_(torch.diagonal(chol, dim1=-2, dim2=-1).log())
        guide.offdiag.copy_(chol)
    elif guide.covariance == "diagonal":
        precision = probs.T @ features.pow(2) + 1.0 / s0  # (C, d)
        guide.log_diag.copy_(-0.5 * precision.log())
    else:
        raise PolarVBLLError(f"no closed-form covariance for {guide.covariance!r}")


@torch.no_grad()
def empirical_bayes_prior(head) -> float:
    """Set s₀ to the KL's minimizer, Σ_k (‖w̄_k − m_k‖² + tr S_k) / (C d); returns it."""
    trace, _ = head.guide.trace_and_logdet()
    shift = (head.guide.mean - head.model.prior_mean).pow(2).sum()
    s0 = float((shift + trace) / (head.num_classes * head.in_features))
    head.set_prior_var(s0)
    return s0


def negative_elbo(head, features, labels, choice_mask, n_data: int) -> torch.Tensor:
    """−[(N / M) Σ_m ℓ_m + wishart − KL] / N with the buffer of M standing for N = ``n_data`` examples: ``fit``'s
    per-example loss on the whole buffer when N is the training set's size."""
    bound = head.jensen_bound(features, labels, choice_mask).sum() * (n_data / features.shape[0])
    return -(bound + head.wishart_term() - head.kl_divergence()) / n_data


def _lbfgs(head, params, features, labels, choice_mask, n_data: int, iterations: int, before_each=None) -> None:
    """L-BFGS (strong Wolfe line search) on ``params``, everything else fixed."""
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad(set_to_none=True)
        if before_each is not None:
            before_each()
        loss = negative_elbo(head, features, labels, choice_mask, n_data)
        loss.backward()
        return loss

    optimizer.step(closure)


def fit_mean_and_noise(head, features, labels, choice_mask, n_data: int, iterations: int, prior: bool = False) -> None:
    """The mean and the logit noise by L-BFGS, the covariance fixed; with ``prior`` also log s₀ (empirical Bayes
    jointly with the mean, which moves its optimum: alternating the two converges slowly)."""
    params = [head.guide.mean] + ([head.noise_log_std] if head.noise_log_std is not None else [])
    log_s0 = torch.tensor(math.log(head.prior_var), requires_grad=True)

    def use_log_s0():  # the buffer, for this evaluation: differentiable in log s₀
        head.model.prior_var = log_s0.exp()

    try:
        if prior:
            _lbfgs(head, [*params, log_s0], features, labels, choice_mask, n_data, iterations, use_log_s0)
        else:
            _lbfgs(head, params, features, labels, choice_mask, n_data, iterations)
    finally:
        if prior:
            head.model.prior_var = log_s0.detach().exp()


def fit_covariance_by_gradient(head, features, labels, choice_mask, n_data: int, iterations: int) -> None:
    """The low-rank family's fallback: L-BFGS on its covariance factors, everything else fixed."""
    params = [head.guide.log_diag, head.guide.offdiag]
    _lbfgs(head, params, features, labels, choice_mask, n_data, iterations)


def solve_head(head, features, labels, choice_mask, n_total: int) -> dict[str, float]:
    """Covariance at its fixed point, s₀ by empirical Bayes, mean and noise by L-BFGS, alternated ``solve_rounds``
    times on fp32 ``features`` (M, d), the buffer standing for itself or for ``n_total`` examples (``solve_scale``)."""
    config = head.config
    n = n_total if config.solve_scale == "dataset" else features.shape[0]
    with torch.no_grad():
        before = -float(negative_elbo(head, features, labels, choice_mask, n))
    for _ in range(config.solve_rounds):
        if config.covariance == "lowrank":
            fit_covariance_by_gradient(head, features, labels, choice_mask, n, config.lbfgs_iterations)
        else:
            for _ in range(config.fixed_point_iterations):
                covariance_step(head, features, choice_mask, n / features.shape[0])
        if config.empirical_bayes:
            empirical_bayes_prior(head)
        fit_mean_and_noise(head, features, labels, choice_mask, n, config.lbfgs_iterations, config.empirical_bayes)
    with torch.no_grad():
        after = -float(negative_elbo(head, features, labels, choice_mask, n))
    return {"elbo_before": before, "elbo_after": after, "prior_var": head.prior_var}
