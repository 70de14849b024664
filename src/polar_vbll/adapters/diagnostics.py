"""Adapter diagnostics: orthogonality error of Stiefel factors and stable rank of ΔW."""

from __future__ import annotations

import geoopt
import torch
from torch import nn

from .injection import adapter_layers


@torch.no_grad()
def orthogonality_error(model: nn.Module) -> float:
    """max over Stiefel factors P (n, r) of ‖PᵀP − I‖_F; 0.0 when the model has none."""
    errors = [
        (p.T @ p - torch.eye(p.shape[1], device=p.device, dtype=p.dtype)).norm().item()
        for p in model.parameters()
        if isinstance(p, geoopt.ManifoldParameter)
    ]
    return max(errors, default=0.0)


@torch.no_grad()
def stable_rank(u: torch.Tensor, v: torch.Tensor | None = None) -> float:
    """‖ΔW‖_F² / ‖ΔW‖_2² of ΔW = U V (or of U when V is None); 0.0 for ΔW = 0.

    For ΔW = U V with thin factors, the singular values are those of R_U R_Vᵀ (r×r) from QR of U and Vᵀ.
    """
    if v is None:
        s = torch.linalg.svdvals(u.float())
    else:
        s = torch.linalg.svdvals(torch.linalg.qr(u.float())[1] @ torch.linalg.qr(v.float().T)[1].T)
    if s.numel() == 0 or s[0] <= torch.finfo(s.dtype).tiny:
        return 0.0
    return float((s**2).sum() / s[0] ** 2)


def adapter_diagnostics(model: nn.Module) -> dict[str, float]:
    """``adapter/orth_error_max`` and ``adapter/stable_rank_mean`` (over adapted layers)."""
    ranks = [stable_rank(*layer.low_rank_factors()) for layer in adapter_layers(model).values()]
    return {
        "adapter/orth_error_max": orthogonality_error(model),
        "adapter/stable_rank_mean": sum(ranks) / len(ranks) if ranks else 0.0,
    }
