"""TFB (Shi et al. 2025): training-free Bayesianization of a trained low-rank adapter.

After MAP training, each adapter layer's Gaussian factor M (LoRA's A, PoLAR's Θ) gets a Gaussian N(M, Ω²) whose
standard deviations follow the other factor's SVD: with B = U D Vᵀ (LoRA's B, out × r; PoLAR's X) and M written in
that basis (A' = Vᵀ A, so B A = U D A'), Ω_ij = σ / D_i. A draw E then adds s · U D Ω ⊙ E · x = s · σ · U E x to the
output: an isotropic Gaussian of scale σ in the adapter's output subspace, one scalar σ for every layer (PoLAR: X
is orthonormal, D = 1, so this is σ on every entry of Θ). Directions with D_i = 0 get none (the weight
D_i / (D_i + 10⁻⁶), as the official code).

σ is the largest in [0, ``sigma_max``] whose predictive degrades the MAP model's on an anchor set (the run's
held-out training examples, else a seeded sample of training examples) by at most ``tolerance``, found by
``search_steps`` bisection steps with the same random draws at every σ: ``criterion="accuracy"``: the fraction of
anchor predictions that change; ``"nll"``: the increase of the NLL of the MAP model's own predictions (nats per
example). Bisection keeps the largest σ that met the tolerance, so σ never exceeds it on the anchor set and grows
with the tolerance. Prediction: the mean softmax over ``samples`` backbone passes with flipout draws; σ = 0 is the
MAP model exactly (one pass).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from ..adapters.capabilities import Capability
from ..fields import ConfigFieldError, MethodConfig, check_types
from ..fields import help_field as _help
from .base import UQ_METHODS, UQMethod
from .blob import flipout, gaussian_factor_layers
from .point import PointHead


def output_basis(out_factor: torch.Tensor, diagonal: bool) -> torch.Tensor:
    """(out, r) directions of the noise, each of length D_i / (D_i + 10⁻⁶): the left singular vectors of the factor
    (a full M), or its own normalized columns (a diagonal M, whose noise cannot rotate)."""
    factor = out_factor.detach().float()
    if diagonal:
        norms = factor.norm(dim=0)
        return factor / (norms + 1e-6)
    u, d, _ = torch.linalg.svd(factor, full_matrices=False)
    return u * (d / (d + 1e-6))


class TFBHead(PointHead):
    """A MAP head whose adapter layers get TFB's isotropic noise of scale ``tfb_sigma`` when predicting."""

    stochastic = True
    tfb_sigma: torch.Tensor

    def __init__(self, init_weight: torch.Tensor, config: TFBConfig):
        super().__init__(init_weight, 1e-5)
        self.config = config
        self.register_buffer("tfb_sigma", torch.zeros(()))
        self._layers: list = []
        self._handles: list = []
        self._bases: dict[int, torch.Tensor] = {}
        self._sampling = False
        self._generator: torch.Generator | None = None

    def attach(self, backbone) -> None:
        layers = gaussian_factor_layers(backbone, "tfb")
        for handle in self._handles:  # attached again (another backbone, a reload): one hook per layer, no more
            handle.remove()
        self._handles = [layer.register_forward_hook(self._hook) for layer in layers]
        self._layers, self._bases = layers, {}

    def _hook(self, layer, args, output):
        sigma = float(self.tfb_sigma)
        if not self._sampling or sigma == 0.0 or layer.merged:
            return output
        factor = layer.gaussian_factor()
        diagonal = factor.mean.dim() == 1
        if id(layer) not in self._bases:  # the weights are fixed after training: one SVD per layer
            self._bases[id(layer)] = output_basis(factor.out_factor, diagonal)
        basis = self._bases[id(layer)]
        x = factor.project_in(layer.dropout(args[0]).to(basis.dtype))
        rank, width = basis.shape[1], x.shape[-1]
        eps = torch.randn(rank if diagonal else (rank, width), generator=self._generator, dtype=basis.dtype)
        noise = torch.diag(sigma * eps) if diagonal else sigma * eps
        return output + flipout(x, noise, basis, factor.scaling, self._generator).to(output.dtype)

    def backbone_passes(self) -> int:
        return self.config.samples if float(self.tfb_sigma) > 0 else 1

    @contextmanager
    def backbone_sample(self, backbone, index: int, generator: torch.Generator | None = None) -> Iterator[None]:
        self._sampling, self._generator = True, generator
        try:
            yield
        finally:
            self._sampling, self._generator = False, None

    @torch.no_grad()
    def anchor_probs(self, backbone, batches: list[dict], sigma: float, seed: int = 0) -> torch.Tensor:
        """The predictive (N, C) on the anchor ``batches`` at ``sigma``, with the draws of ``seed`` (the same at
        every σ: common random numbers make the degradation a smooth function of σ)."""
        self.tfb_sigma.fill_(sigma)
        generator = torch.Generator().manual_seed(seed)
        was_training = backbone.training
        backbone.eval()
        probs = [self.predict_batch(backbone, batch, self.config.samples, generator)[0] for batch in batches]
        backbone.train(was_training)
        return torch.cat(probs)

    def degradation(self, probs: torch.Tensor, reference: torch.Tensor) -> float:
        """How much ``probs`` degrade the MAP predictive ``reference`` on its own predictions (``criterion``)."""
        pseudo = reference.argmax(-1)
        if self.config.criterion == "accuracy":
            return float((probs.argmax(-1) != pseudo).double().mean())

        def nll(p):
            return -p.double().clamp_min(1e-12).log().gather(1, pseudo[:, None]).mean()

        return float(nll(probs) - nll(reference))

    def post_hoc(self, backbone, batches, n_total: int) -> dict:
        """Search σ on the anchor ``batches`` (bisection, see the module); returns what to report."""
        batches = list(batches)
        config = self.config
        self._bases.clear()
        reference = self.anchor_probs(backbone, batches, 0.0)

        measured = {0.0: 0.0}  # σ -> degradation: the kept σ is never evaluated twice

        def meets(sigma: float) -> bool:
            measured[sigma] = self.degradation(self.anchor_probs(backbone, batches, sigma), reference)
            return measured[sigma] <= config.tolerance

        low, high, at_bound = 0.0, config.sigma_max, False
        if meets(high):
            low, at_bound = high, True
        else:
            for _ in range(config.search_steps):
                mid = (low + high) / 2
                low, high = (mid, high) if meets(mid) else (low, mid)
        self.tfb_sigma.fill_(low)
        found: dict[str, object] = {
            "sigma": float(self.tfb_sigma),
            "criterion": config.criterion,
            "degradation": measured[low],
            "tolerance": config.tolerance,
            "at_sigma_max": at_bound,
            "anchor_examples": len(reference),
        }
        if at_bound:
            found["note"] = f"σ reached sigma_max {config.sigma_max}: raise --tfb-sigma-max to search further"
        elif low == 0.0:
            found["note"] = (
                f"no σ > {config.sigma_max / 2**config.search_steps:.2g} met the tolerance: TFB's predictive is the "
                "MAP model's (at `samples` times its cost)"
            )
        return found


@dataclass
class TFBConfig(MethodConfig):
    """Options of TFB (training-free Bayesianization)."""

    method = "tfb"
    criterion: Literal["accuracy", "nll"] = _help(
        "what may degrade on the anchor set: the fraction of changed predictions, or the NLL of the MAP model's "
        "own predictions (nats per example)",
        "accuracy",
    )
    tolerance: float = _help("the most the criterion may degrade", 0.01)
    sigma_max: float = _help("upper end of the search for the noise scale σ (lower end 0)", 0.2)
    search_steps: int = _help("bisection steps of the search", 8)
    samples: int = _help("backbone passes per prediction, each with its own noise draw", 10)

    def __post_init__(self):
        check_types(self)
        self.require_at_least(1, "search_steps")
        self.require_at_least(1, "samples")
        for name in ("tolerance", "sigma_max"):
            if not getattr(self, name) > 0:
                raise ConfigFieldError("TFBConfig", name, f"must be > 0, got {getattr(self, name)}")


UQ_METHODS.register(
    "tfb",
    UQMethod(
        "TFB: MAP, then training-free Bayesianization: the largest isotropic noise on the adapter's Gaussian factor "
        "(LoRA's A, PoLAR's Θ) within a tolerance on anchor examples; samples passes",
        lambda init_weight, n_train, options, fit: TFBHead(init_weight, options),
        TFBConfig,
        requires=lambda options: frozenset({Capability.GAUSSIAN_FACTOR}),
        post_hoc=("tfb",),
    ),
)
