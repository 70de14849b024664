"""What an adapter declares about itself, so that uncertainty methods never ask "which class are you?".

As PEFT's ``BaseTunerLayer`` declares ``adapter_layer_names``, an adapter layer here declares the capabilities an
uncertainty method may need, and hands out the objects behind them:

- ``wraps_linear``: the method wraps ``nn.Linear`` modules, with dropout on their input (MC dropout) and per-layer
  forward hooks (Laplace, BLoB); a model tuner such as LISA does not;
- ``shared_base``: initialization leaves the base weight untouched and the layers keep no state outside
  themselves, so M members can share one base (ensembles);
- ``linear_maps``: :meth:`~polar_vbll.adapters.base.AdapterLinear.linear_maps` lists the maps y = W a with trained
  weight W inside the layer, with how to read a and ∂L/∂y from the layer's input and output gradient (K-FAC
  Laplace-LoRA);
- ``gaussian_factor``: :meth:`~polar_vbll.adapters.base.AdapterLinear.gaussian_factor` names the factor that carries
  a Gaussian posterior and how the layer's output depends on it (BLoB);
- ``low_rank_delta``: the layer's output is the *original* base layer's plus U V x, (U, V) =
  :meth:`~polar_vbll.adapters.base.AdapterLinear.low_rank_factors`, whatever the input: a plain LoRA, e.g. PEFT's,
  reproduces it (export).

An uncertainty method states what it requires (``UQMethod.requires``); ``FitConfig`` refuses a pair that does not
meet it with one line, before anything loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import torch


class Capability(StrEnum):
    WRAPS_LINEAR = "wraps_linear"
    SHARED_BASE = "shared_base"
    LINEAR_MAPS = "linear_maps"
    GAUSSIAN_FACTOR = "gaussian_factor"
    LOW_RANK_DELTA = "low_rank_delta"


CAPABILITY_HELP = {
    Capability.WRAPS_LINEAR: "wraps nn.Linear modules: input dropout, per-layer hooks",
    Capability.SHARED_BASE: "leaves the base weight untouched and keeps no model-wide state, so members share one base",
    Capability.LINEAR_MAPS: "its trained linear maps, for K-FAC",
    Capability.GAUSSIAN_FACTOR: "the factor that carries a Gaussian posterior",
    Capability.LOW_RANK_DELTA: "an output of base + U V x for the original base weights, as a plain LoRA",
}


@dataclass(frozen=True)
class LinearMap:
    """A map y = W a with trained weight W (out, in) inside an adapter layer.

    ``inputs_and_grads(x, grad_out)`` turns the layer's input x (..., d_in) and the gradient of a scalar with
    respect to the layer's output (..., d_out) into the map's input a (..., in) and output gradient g (..., out),
    so that the gradient of that scalar with respect to W is Σ g aᵀ.
    """

    name: str
    weight: torch.Tensor
    inputs_and_grads: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class GaussianFactor:
    """The factor M of an adapter layer that carries a Gaussian posterior N(M, σ²) (BLoB).

    The layer's update is linear in M: Δy = ``out_factor`` · M · ``project_in``(x) · ``scaling``, with M of shape
    (k_out, k_in), or (k,) for a diagonal M (then M means diag(M)). A weight perturbation E of M therefore adds
    ``out_factor`` · E · ``project_in``(x) · ``scaling`` to the output, which is what flipout samples.
    """

    mean: torch.Tensor
    project_in: Callable[[torch.Tensor], torch.Tensor]
    out_factor: torch.Tensor
    scaling: float
