"""Options of the variational Bayesian last layer (:mod:`polar_vbll.uq.vbll`), its exact head phase included."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..fields import ConfigFieldError, MethodConfig, check_types
from ..fields import help_field as _help
from .vbll_pyro import Covariance


@dataclass
class VBLLConfig(MethodConfig):
    """Options of the variational Bayesian last layer."""

    method = "vbll"

    covariance: Covariance = _help("posterior covariance per class: dense (Cholesky), diagonal, lowrank", "dense")
    cov_rank: int = _help("rank of the low-rank part (covariance='lowrank')", 4)
    prior_scale: float = _help("prior variance = prior_scale · 2 / d (vbll's width scaling)", 1.0)
    prior_mean: Literal["init", "zero"] = _help(
        "prior mean: the initial head (the pretrained label rows) or zero (vbll's choice)", "init"
    )
    cov_init: Literal["vbll", "prior"] = _help(
        "initial posterior covariance: vbll's (standard deviations 1/d) or the prior's s₀ I (the covariance part of "
        "the KL starts at 0)",
        "vbll",
    )
    logit_noise: bool = _help("learn Gaussian logit noise σ² with a Wishart prior (as vbll)", True)
    wishart_scale: float = _help("scale of the Wishart prior on the noise precision", 1.0)
    dof: float = _help("degrees of freedom of the Wishart prior", 1.0)
    objective: Literal["jensen", "mc"] = _help("closed-form Jensen ELBO, or Pyro's Monte-Carlo Trace_ELBO", "jensen")
    num_particles: int = _help("samples per step of the Monte-Carlo ELBO", 16)
    predictive: Literal["mc", "probit"] = _help("Monte-Carlo softmax average, or closed-form probit", "mc")
    n_samples: int = _help("logit samples of the Monte-Carlo predictive (one backbone pass)", 1000)
    head_phase: Literal["stochastic", "exact"] = _help(
        "how the head learns: stochastic steps alternating with adapter steps, or an exact phase solving it on "
        "cached features of a training buffer every solve_every adapter steps and at the end",
        "exact",
    )
    solve_every: int = _help("exact head phase: adapter steps between two solves", 20)
    solve_buffer: int = _help("exact head phase: training examples whose features are cached (seeded, per phase)", 512)
    solve_features: Literal["fresh", "steps"] = _help(
        "exact head phase: the features of the solves between the first and the last: a fresh pass over a seeded "
        "buffer of solve_buffer training examples, or the last solve_buffer examples' features that the adapter "
        "steps computed anyway (no extra backbone pass; up to solve_buffer / batch_size steps old). The first and "
        "the final solve always take fresh ones",
        "fresh",
    )
    solve_rounds: int = _help("exact head phase: alternations of covariance, prior and mean/noise updates", 3)
    fixed_point_iterations: int = _help("exact head phase: covariance fixed-point iterations per round", 5)
    lbfgs_iterations: int = _help("exact head phase: L-BFGS iterations on the mean and noise per round", 30)
    empirical_bayes: bool = _help(
        "exact head phase: set the prior variance s₀ by empirical Bayes (else keep prior_scale's)", True
    )
    solve_scale: Literal["buffer", "dataset"] = _help(
        "exact head phase: the data its buffer stands for: itself (the posterior of the examples seen) or the whole "
        "training set (N / M times each, fit's own objective)",
        "buffer",
    )

    def __post_init__(self):
        check_types(self)
        names = ("solve_every", "solve_buffer", "solve_rounds", "fixed_point_iterations", "lbfgs_iterations")
        for name in ("cov_rank", "num_particles", "n_samples", *names):
            if getattr(self, name) < 1:
                raise ConfigFieldError("VBLLConfig", name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("prior_scale", "wishart_scale"):
            if not getattr(self, name) > 0:
                raise ConfigFieldError("VBLLConfig", name, f"must be > 0, got {getattr(self, name)}")
