"""Laplace-LoRA (Yang et al. 2024): a post-hoc Laplace approximation over the adapter weights (and the head).

After MAP training, every linear map with trained weights W (out×in) — LoRA's A and B (also PiSSA/CorDA), PoLAR's
Θ (X, Y stay point estimates on their manifolds), S2FT's block, and the answer head — gets a Kronecker-factored
GGN (K-FAC, "expand" over tokens): GGN_W ≈ G ⊗ A with A = Σ a aᵀ / (tokens) over the map's inputs a and
G = (N / n) Σ g gᵀ over its output gradients g for the C square-root factors of the softmax Hessian,
v_c = √p_c (e_c − p) (exact GGN, C backward passes per batch), on a seeded subset of n of the N training
examples. Prior N(0, δ⁻¹ I); δ maximizes the Laplace marginal likelihood
log Z(δ) = −½ δ ‖θ*‖² + ½ P log δ − ½ Σ log(λ_G λ_A + δ) over a log grid. Predictive: the linearized (GLM)
model, f ~ N(f*(x), J Σ Jᵀ) with J the Jacobian of the logits (C backward passes per batch), Σ computed in each
map's Kronecker eigenbasis; p(y | x) = mean softmax of ``n_samples`` draws. ``subset="last_layer"`` uses the head
only (last-layer Laplace).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch

from ..adapters.capabilities import Capability
from ..distributed import current_ranks
from ..errors import PolarVBLLError
from ..fields import MethodConfig
from ..fields import help_field as _help
from ..models.backbone import mask_choices
from .base import UQ_METHODS, UQMethod
from .point import PointHead


def _split(batch: dict, size: int) -> Iterable[dict]:
    """The rows of a collated batch in sub-batches of ``size`` (same padding)."""
    n = batch["input_ids"].shape[0]
    for start in range(0, n, size):
        yield {k: v[start : start + size] if torch.is_tensor(v) else v for k, v in batch.items()}


class LaplaceHead(PointHead):
    """A MAP head plus, after :meth:`post_hoc`, a K-FAC Laplace posterior over the adapter (and head) weights."""

    stochastic = True
    prior_precision: torch.Tensor
    #: examples per backward graph: the Jacobians keep the backbone graph alive, so its memory scales with this
    chunk_size = 8

    def __init__(self, init_weight: torch.Tensor, subset: str = "adapter", n_samples: int = 1000):
        super().__init__(init_weight, 1e-5)
        if subset not in ("adapter", "last_layer"):
            raise PolarVBLLError(f"laplace: subset must be 'adapter' or 'last_layer', got {subset!r}")
        self.subset, self.n_samples = subset, n_samples
        self.register_buffer("prior_precision", torch.zeros(()))
        self._maps: dict[str, tuple] = {}
        self._captured: dict[str, tuple] = {}
        self._capturing = False
        self._add_map("head", lambda x, go: (x, go), self.linear.weight)

    def _add_map(self, key: str, extract, weight: torch.Tensor) -> None:
        out, inp = weight.shape
        for suffix, size in (("eig_a", inp), ("eig_g", out)):
            self.register_buffer(f"{key}__{suffix}", torch.zeros(size))
            self.register_buffer(f"{key}__{suffix}_vec", torch.zeros(size, size))
        self._maps[key] = (extract, weight)

    def attach(self, backbone) -> None:
        if self.subset == "last_layer":
            return
        from ..adapters import adapter_layers
        from ..adapters.base import require_capability

        layers = adapter_layers(backbone.model)
        if not layers:
            raise PolarVBLLError("laplace with subset 'adapter' needs an adapter that wraps Linear layers")
        for name, layer in layers.items():
            require_capability(layer, Capability.LINEAR_MAPS, "laplace")
            maps = layer.linear_maps()
            for linear_map in maps:
                key = f"{name.replace('.', '__')}__{linear_map.name}"
                self._add_map(key, linear_map.inputs_and_grads, linear_map.weight)
            if maps:  # S2FT's coupled partners without a trained block have none
                layer.register_forward_hook(self._capture_hook(name))

    def _capture_hook(self, name: str):
        def hook(module, args, output):
            if self._capturing:
                self._captured[name] = (args[0], output)

        return hook

    @property
    def fitted(self) -> bool:
        return bool(self.prior_precision > 0)

    def _map_inputs_and_grads(self, features, logits_fn, vectors: list[torch.Tensor], mask):
        """For each output vector v (B, C): {map: (a (B, T, in), g (B, T, out))} of the gradient of Σ v·logits."""
        logits = logits_fn(features)
        names = list(self._captured)
        outputs = [self._captured[n][1] for n in names] + [features]
        results = []
        for v in vectors:
            grads = torch.autograd.grad((logits * v).sum(), outputs, retain_graph=True, allow_unused=True)
            per_map = {"head": (features[:, None].detach(), v[:, None])}
            for name, grad in zip(names, grads[:-1], strict=True):
                x = self._captured[name][0].float()  # curvature in fp32 whatever the compute precision
                grad = torch.zeros_like(self._captured[name][1]) if grad is None else grad
                grad = grad.float()
                prefix = name.replace(".", "__") + "__"
                for key, (extract, _) in self._maps.items():
                    if key.startswith(prefix):
                        a, g = extract(x, grad)
                        per_map[key] = ((a * mask[..., None]).detach(), g)
            results.append(per_map)
        self._captured.clear()  # frees the backbone graph before the next batch builds its own
        return logits, results

    def _forward_capture(self, backbone, batch):
        self._captured.clear()
        self._capturing = self.subset == "adapter"
        try:
            with torch.enable_grad():
                features = backbone.features(batch["input_ids"], batch["attention_mask"])
                if self.subset == "last_layer":
                    features = features.detach().requires_grad_(True)
        finally:
            self._capturing = False
        return features

    def post_hoc(self, backbone, batches: Iterable[dict], n_total: int) -> dict:
        """Fit the K-FAC factors on ``batches`` (examples standing for ``n_total``) and the prior precision; under
        several processes each sums the factors of its own batches, and the sums are added up over them."""
        ranks = current_ranks()
        backbone.eval()
        sums_a: dict[str, torch.Tensor | float] = {k: 0.0 for k in self._maps}  # 0.0 + the first sum is exact
        sums_g: dict[str, torch.Tensor | float] = {k: 0.0 for k in self._maps}
        tokens = {k: 0.0 for k in self._maps}
        seen = 0
        own = (whole for number, whole in enumerate(batches) if ranks.owns(number))
        for batch in (part for whole in own for part in _split(whole, self.chunk_size)):
            mask = batch["attention_mask"].float()
            features = self._forward_capture(backbone, batch)
            with torch.enable_grad():
                with torch.no_grad():
                    probs = torch.softmax(self.logits(features, batch["choice_mask"]), -1)
                eye = torch.eye(probs.shape[1])
                vectors = [probs[:, c, None].sqrt() * (eye[c] - probs) for c in range(probs.shape[1])]
                vectors = [torch.nan_to_num(v) for v in vectors]
                results = self._map_inputs_and_grads(features, lambda f: self.linear(f.float()), vectors, mask)[1]
            for per_map in results:
                for key, (_, g) in per_map.items():
                    g = g.detach().reshape(-1, g.shape[-1])
                    sums_g[key] = sums_g[key] + g.T @ g
            for key, (a, _) in results[0].items():
                a = a.detach().reshape(-1, a.shape[-1])
                sums_a[key] = sums_a[key] + a.T @ a
                tokens[key] += float(mask.sum()) if a.shape[0] == mask.numel() else a.shape[0]
            seen += batch["input_ids"].shape[0]
            del features  # its graph would otherwise live through the next batch's forward
        if ranks.size > 1:
            seen = self._summed_over(ranks, sums_a, sums_g, tokens, seen)
        if seen == 0:
            raise PolarVBLLError("laplace: no examples to fit the posterior on")
        norm2, count, pairs = 0.0, 0, []
        with torch.no_grad():
            for key, (_, weight) in self._maps.items():
                la, qa = torch.linalg.eigh((torch.as_tensor(sums_a[key]) / max(tokens[key], 1.0)).double())
                lg, qg = torch.linalg.eigh((torch.as_tensor(sums_g[key]) * (n_total / seen)).double())
                la, lg = la.clamp_min(0), lg.clamp_min(0)
                for suffix, value in (("eig_a", la), ("eig_a_vec", qa), ("eig_g", lg), ("eig_g_vec", qg)):
                    getattr(self, f"{key}__{suffix}").copy_(value.float())
                pairs.append(torch.outer(lg, la).flatten())
                norm2 += float(weight.detach().double().pow(2).sum())
                count += weight.numel()
            eig = torch.cat(pairs)
            grid = torch.logspace(-4, 6, 201, dtype=torch.float64)
            log_z = torch.stack([-0.5 * d * norm2 + 0.5 * count * d.log() - 0.5 * (eig + d).log().sum() for d in grid])
            best = grid[int(log_z.argmax())]
            self.prior_precision.fill_(float(best))
        return {"prior_precision": float(best), "parameters": count, "examples": seen}

    def _summed_over(self, ranks, sums_a: dict, sums_g: dict, tokens: dict, seen: int) -> int:
        """The factor sums and counts of every process, added up in place (a process may have had no batch)."""
        for key in self._maps:
            size_a, size_g = getattr(self, f"{key}__eig_a").numel(), getattr(self, f"{key}__eig_g").numel()
            sums_a[key] = ranks.sum_(torch.zeros(size_a, size_a) + sums_a[key])
            sums_g[key] = ranks.sum_(torch.zeros(size_g, size_g) + sums_g[key])
        counts = ranks.sum_(torch.tensor([*(tokens[key] for key in self._maps), seen], dtype=torch.float64))
        for key, count in zip(self._maps, counts[:-1].tolist(), strict=True):
            tokens[key] = count
        return int(counts[-1])

    def logit_covariance(self, backbone, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(f* (B, C), Σ_f = J Σ Jᵀ (B, C, C)) of the linearized model."""
        if not self.fitted:
            raise PolarVBLLError("laplace: the posterior is not fitted (run post_hoc after training)")
        mask = batch["attention_mask"].float()
        features = self._forward_capture(backbone, batch)
        with torch.enable_grad():
            num_classes = self.linear.weight.shape[0]
            vectors = [torch.eye(num_classes)[c].expand(features.shape[0], -1) for c in range(num_classes)]
            logits, results = self._map_inputs_and_grads(features, lambda f: self.linear(f.float()), vectors, mask)
        delta = float(self.prior_precision)
        cov = torch.zeros(features.shape[0], num_classes, num_classes, dtype=torch.float64)
        with torch.no_grad():
            for key in self._maps:
                qa, qg = getattr(self, f"{key}__eig_a_vec").double(), getattr(self, f"{key}__eig_g_vec").double()
                denom = torch.outer(getattr(self, f"{key}__eig_g"), getattr(self, f"{key}__eig_a")).double() + delta
                # per-example Jacobian of logit c w.r.t. W: Σ_t g_t a_tᵀ, rotated into the eigenbasis
                rotated = torch.stack(
                    [qg.T @ torch.einsum("bto,bti->boi", r[key][1].double(), r[key][0].double()) @ qa for r in results],
                    1,
                )  # (B, C, out, in)
                cov += torch.einsum("bcoi,bdoi->bcd", rotated, rotated / denom)
        return logits.detach(), cov

    @torch.no_grad()
    def predict_batch(self, backbone, batch, n_samples, generator=None):
        if not self.fitted:  # before post_hoc (e.g. evaluation during training): the MAP head
            return super().predict_batch(backbone, batch, n_samples, generator)
        parts = [self.logit_covariance(backbone, part) for part in _split(batch, self.chunk_size)]
        mean, cov = torch.cat([m for m, _ in parts]), torch.cat([c for _, c in parts])
        chol = torch.linalg.cholesky(cov + 1e-9 * torch.eye(cov.shape[-1], dtype=cov.dtype))
        draws = max(n_samples, self.n_samples)
        eps = torch.randn(mean.shape[0], draws, mean.shape[1], generator=generator, dtype=torch.float64)
        samples = (mean.double()[:, None] + eps @ chol.transpose(1, 2)).float()
        samples = mask_choices(samples, None if batch["choice_mask"] is None else batch["choice_mask"][:, None])
        probs = torch.softmax(samples / self.temperature, -1).mean(1)
        return probs, samples[:, :n_samples] / self.temperature


@dataclass
class LaplaceLoRAConfig(MethodConfig):
    """Options of Laplace-LoRA (the Hessian's examples are ``FitConfig.laplace_samples``)."""

    method = "laplace"
    subset: Literal["adapter", "last_layer"] = _help(
        "K-FAC over the adapter's linear maps and the head weights, or the head only", "adapter"
    )


UQ_METHODS.register(
    "laplace",
    UQMethod(
        "Laplace-LoRA: MAP, then a K-FAC Laplace posterior over the adapter and head weights, GLM predictive",
        lambda init_weight, n_train, options, fit: LaplaceHead(init_weight, options.subset),
        LaplaceLoRAConfig,
        requires=lambda options: frozenset({Capability.LINEAR_MAPS}) if options.subset == "adapter" else frozenset(),
        post_hoc=("laplace_lora",),
    ),
)
