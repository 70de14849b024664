"""Optimizers that keep Stiefel factors (``geoopt.ManifoldParameter``) orthonormal.

- ``"geoopt"``: ``geoopt.optim.RiemannianAdam``: Riemannian gradient, Adam moments transported, QR retraction.
  Its second moment is one scalar per matrix (the manifold's inner product), so a step has Frobenius norm ≈ lr,
  not ≈ lr per entry as in Adam. With ``geoopt_lr_scaling="rms"`` (default) each Stiefel factor's lr is
  multiplied by √(n·r), making the per-entry step size comparable to Adam's at the same ``lr``.
- ``"landing"`` (Ablin & Peyré 2022; the official PoLAR code): no retraction; the gradient G of a tall factor P is
  replaced by the landing field  Λ = skew(G Pᵀ) P + λ P (PᵀP − I)  with skew(A) = A − Aᵀ, then AdamW steps.
  The first term moves along the manifold, the second pulls P back towards it. AdamW then normalizes each entry,
  so how close P stays depends on λ relative to the gradient's size: on SmolLM2-135M at lr 4e-3, λ = 5e-3 (the
  value often quoted) let ‖PᵀP − I‖ reach 0.39 within 5 steps; the default here is λ = 1
  (benchmarks/results/adapter_cost.md). ``"geoopt"`` keeps P exactly orthonormal.
- ``"adamw"``: plain AdamW, for adapters without manifold factors (LoRA, DoRA).

Manifold factors never get weight decay.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import geoopt
import torch
from torch import nn

from ..errors import PolarVBLLError

OptimizerName = Literal["geoopt", "landing", "adamw"]


def landing_field(param: torch.Tensor, grad: torch.Tensor, lam: float) -> torch.Tensor:
    """Λ = (G Pᵀ − P Gᵀ) P + λ P (PᵀP − I) for a tall P (n, r), computed in O(n r²) as G (PᵀP) − P (GᵀP) + …."""
    gram = param.T @ param
    eye = torch.eye(gram.shape[0], device=param.device, dtype=param.dtype)
    return grad @ gram - param @ (grad.T @ param) + lam * param @ (gram - eye)


def _param_groups(params: Iterable[nn.Parameter]) -> tuple[list, list]:
    manifold: list[nn.Parameter] = []
    euclidean: list[nn.Parameter] = []
    for p in params:
        if p.requires_grad:
            (manifold if isinstance(p, geoopt.ManifoldParameter) else euclidean).append(p)
    return manifold, euclidean


def _int_steps(optimizer: torch.optim.Optimizer) -> None:
    """geoopt counts ``step`` as a Python int, but ``load_state_dict`` turns it into a float32 tensor, which
    changes the bias-correction rounding; restoring the int makes a resumed run match an uninterrupted one."""
    for state in optimizer.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = int(state["step"].item())


def build_optimizer(
    params: Iterable[nn.Parameter],
    name: OptimizerName = "geoopt",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    landing_lambda: float = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    geoopt_lr_scaling: Literal["rms", "none"] = "rms",
) -> torch.optim.Optimizer:
    """One optimizer over all trainable ``params``; Stiefel factors are handled as ``name`` says."""
    manifold, euclidean = _param_groups(params)
    groups = [
        g
        for g in ({"params": manifold, "weight_decay": 0.0}, {"params": euclidean, "weight_decay": weight_decay})
        if g["params"]
    ]
    if not groups:
        raise PolarVBLLError("no trainable parameters to optimize")
    if name == "geoopt":
        if geoopt_lr_scaling not in ("rms", "none"):
            raise PolarVBLLError(f"geoopt_lr_scaling must be 'rms' or 'none', got {geoopt_lr_scaling!r}")
        if geoopt_lr_scaling == "rms":
            groups = [{"params": [p], "weight_decay": 0.0, "lr": lr * p.numel() ** 0.5} for p in manifold] + [
                g for g in groups if g["params"] is euclidean
            ]
        optimizer = geoopt.optim.RiemannianAdam(groups, lr=lr, betas=betas)
        optimizer.register_load_state_dict_post_hook(_int_steps)
        return optimizer
    if name in ("landing", "adamw"):
        if name == "adamw" and manifold:
            raise PolarVBLLError(
                "optimizer 'adamw' would leave Stiefel factors off their manifold; use 'geoopt' or 'landing'"
            )
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas)
        if manifold:

            def rewrite_gradients(opt, args, kwargs):
                with torch.no_grad():
                    for p in manifold:
                        if p.grad is not None:
                            p.grad.copy_(landing_field(p, p.grad, landing_lambda))

            optimizer.register_step_pre_hook(rewrite_gradients)
        return optimizer
    raise PolarVBLLError(f"unknown optimizer {name!r}; choose geoopt, landing or adamw")
