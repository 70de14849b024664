"""CorDA (Yang et al. 2024): context-oriented decomposition of W by the covariance of its inputs.

C = mean over samples of XᵀX (X: one sample's inputs to the layer, scaled by their largest |value|), damped as
C + δ·mean(diag C)·I with δ doubled from 0.01 until ‖C C⁻¹ − I‖_F < 0.05; SVD(W C) = U Σ Vᵀ, V̂ = (Vᵀ C⁻¹)ᵀ, so
U Σ V̂ᵀ = W. ``ipm`` (instruction-previewed) initializes the adapter from the top-r triplets and trains them;
``kpm`` (knowledge-preserving) from the bottom-r, leaving the components the covariance task uses most untouched.
The adapter factors split Σ evenly as in PiSSA; base ← W − s·B₀A₀.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save
from torch import nn
from tqdm.auto import tqdm

from ..atomic import atomic_write_bytes
from ..errors import PolarVBLLError
from ..fields import help_field as _help
from ..models.cache import cache_root
from .base import ADAPTERS, AdapterConfig, AdapterMethod
from .injection import target_names
from .lora import LoraConfig
from .pissa import split_singular
from .residual import ResidualLoraLinear


@dataclass
class CordaConfig(LoraConfig):
    method = "corda"
    mode: Literal["ipm", "kpm"] = _help(
        "ipm: train the top-r components of W·C; kpm: the bottom-r (keep knowledge)", "ipm"
    )
    samples: int = _help("examples whose layer inputs form the covariance C", 256)
    covariance_task: str | None = _help(
        "task whose inputs form C (default: the training task; kpm: e.g. another)", None
    )

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in ("ipm", "kpm"):
            raise PolarVBLLError(f"CordaConfig.mode must be 'ipm' or 'kpm', got {self.mode!r}")
        if not isinstance(self.samples, int) or self.samples < 1:
            raise PolarVBLLError(f"CordaConfig.samples must be a positive integer, got {self.samples!r}")


def damped_inverse(covariance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C + δ·mean(diag C)·I, its inverse), δ = 0.01 doubled until the inverse is accurate (‖C C⁻¹ − I‖ < 0.05)."""
    eye = torch.eye(covariance.shape[0], dtype=covariance.dtype)
    damp = 0.01
    for _ in range(64):
        fixed = covariance + eye * covariance.diagonal().mean() * damp
        inverse = torch.linalg.inv(fixed)
        if torch.dist(fixed @ inverse, eye) < 0.05:
            return fixed, inverse
        damp *= 2
    raise PolarVBLLError("CorDA: the input covariance stays singular after damping (are the inputs all zero?)")


class CordaLinear(ResidualLoraLinear):
    needs_data = True
    config: CordaConfig

    @classmethod
    def prepare(cls, model: nn.Module, config: AdapterConfig, inputs) -> dict:
        """The input covariances of the target layers over ``config.samples`` seeded training examples of the
        covariance task (one forward each), cached in ``$POLAR_VBLL_CACHE/corda/`` by model, task and settings."""
        assert isinstance(config, CordaConfig)
        names = target_names(model, config.target_modules)
        key = {**inputs.describe(config.covariance_task, config.samples), "targets": names}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]

        def compute():
            return collect_covariances(
                model, names, lambda: inputs.run(config.covariance_task, config.samples, "CorDA covariances")
            )

        return {"covariances": cached_covariances(cache_root() / "corda" / f"{digest}.safetensors", compute)}

    @classmethod
    def plan(cls, model, config, names, restore, covariances: dict[str, torch.Tensor] | None = None, **data):
        if restore:
            return super().plan(model, config, names, restore, **data) | {n: {"restore": True} for n in names}
        if covariances is None:
            raise PolarVBLLError(
                "CorDA needs input covariances: inject_adapters(..., covariances=collect_covariances(...))"
            )
        missing = [n for n in names if n not in covariances]
        if missing:
            raise PolarVBLLError(f"CorDA: no input covariance for {', '.join(missing[:3])}")
        super().plan(model, config, names, restore, **data)
        return {name: {"covariance": covariances[name]} for name in names}

    def initial_factors(self, weight: torch.Tensor, init: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        covariance = init["covariance"]  # planned for every layer by plan()
        if covariance.shape != (self.in_features, self.in_features):
            raise PolarVBLLError(
                f"CorDA: covariance of shape {tuple(covariance.shape)} for a layer with {self.in_features} inputs"
            )
        fixed, inverse = damped_inverse(covariance.float())
        u, s, vh = torch.linalg.svd(weight @ fixed, full_matrices=False)
        v = vh @ inverse  # rows: the right factors, so that U diag(s) v = W
        part = slice(None, self.config.r) if self.config.mode == "ipm" else slice(-self.config.r, None)
        return split_singular(u[:, part], s[part], v[part], self.scaling)


@torch.no_grad()
def collect_covariances(
    model: nn.Module,
    names: list[str],
    run_model: Callable[[], object],
) -> dict[str, torch.Tensor]:
    """Input covariances (in, in) of the Linear modules ``names``, averaged over the forward calls ``run_model``
    makes (one sample per call; each sample's inputs scaled by their largest |value|)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def accumulate(module, args, output):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            x = x / x.abs().max().clamp_min(torch.finfo(x.dtype).tiny)
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + 1

        return accumulate

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in names]
    was_training = model.training
    model.eval()
    try:
        run_model()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    unseen = [n for n in names if n not in counts]
    if unseen:
        raise PolarVBLLError(f"CorDA: run_model never called {', '.join(unseen[:3])}")
    return {name: sums[name] / counts[name] for name in names}


def cached_covariances(path: Path, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Covariances from the safetensors file ``path`` if present, else ``compute()`` them and write it atomically."""
    path = Path(path)
    if path.exists():
        try:
            return load_file(str(path))
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            tqdm.write(f"{path}: unreadable covariance cache ({exc}); recomputing")
    covariances = compute()
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in covariances.items()}))
    return covariances


ADAPTERS.register("corda", AdapterMethod(CordaConfig, CordaLinear))
