"""Temperature scaling (Guo et al. 2017): one T > 0 fitted by LBFGS on held-out *logits*, p = softmax(z / T).

For a head with logit samples z_s the fitted predictive is the mean over s of softmax(z_s / T), so T can refine any
method; ``--uq temperature`` is MAP plus this step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import PolarVBLLError
from ..fields import MethodConfig
from .base import UQ_METHODS, UQMethod
from .point import PointHead


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """T minimizing the NLL of mean_s softmax(logits[:, s] / T) for ``logits`` (N, S, C) or (N, C).

    Optimized over log T (so T stays positive) with LBFGS and a strong-Wolfe line search; masked (-inf) classes
    stay masked.
    """
    if logits.dim() == 2:
        logits = logits[:, None]
    if logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
        raise PolarVBLLError(f"fit_temperature: {logits.shape[0]} logit rows for {labels.shape[0]} labels")
    logits = logits.detach().double().clamp_min(-1e4)  # -inf -> a finite, still negligible logit
    labels = labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def nll():
        optimizer.zero_grad()
        log_probs = torch.log_softmax(logits / log_t.exp(), -1)
        log_mean = torch.logsumexp(log_probs, 1) - math.log(logits.shape[1])
        loss = -log_mean.gather(1, labels[:, None]).mean()
        loss.backward()
        return loss

    optimizer.step(nll)
    temperature = float(log_t.exp())
    if not math.isfinite(temperature):
        raise PolarVBLLError("fit_temperature: the optimum diverged (are the held-out logits all correct?)")
    return temperature


@dataclass
class TemperatureConfig(MethodConfig):
    """Temperature scaling has no options of its own (``FitConfig.calibration_size`` sets its held-out examples)."""

    method = "temperature"


UQ_METHODS.register(
    "temperature",
    UQMethod(
        "MAP, then one temperature fitted on held-out training examples (LBFGS on logits)",
        lambda init_weight, n_train, options, fit: PointHead(init_weight, 1e-5),
        TemperatureConfig,
        multi_task=True,
        post_hoc=("temperature",),
    ),
)
