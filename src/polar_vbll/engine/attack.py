"""Adversarial inputs for a language model: PGD (and FGSM, its one-step case) in the input-embedding space.

Text is discrete, so the attack moves the token embeddings e_t of a prompt, inside an L2 ball relative to each
token's own embedding norm, to raise the loss of the right answer:

    maximize  L(δ) = CE(point logits(φ(e + δ)), y)   subject to  ‖δ_t‖₂ ≤ ε ‖e_t‖₂ for every real token t
    δ ← Π(δ + α ‖e_t‖ g_t / ‖g_t‖),  g = ∇_δ L,  α = 2.5 ε / K  (Madry et al.'s step for K steps; FGSM: K = 1, α = ε)

with Π the projection onto each token's ball and padding left untouched (δ starts at 0, so the attack is
deterministic). The gradient is the head's deterministic summary's (its point logits: MAP's logits, VBLL's mean
logits); the attacked prompts are then scored with the head's full predictive, so robust accuracy, ECE and NLL are
those of the method as deployed. δ enters through a forward hook on the model's input embeddings, so every head
and adapter (an iLoRA gate included) sees the perturbed prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

import torch

from ..errors import PolarVBLLError
from ..models import Backbone
from ..uq import UQHead

# (features (B, d), choice mask (B, C)) -> logits (B, C) that the attack raises the loss of
Logits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class AttackMethod(StrEnum):
    PGD = "pgd"
    FGSM = "fgsm"


@contextmanager
def embedding_offset(backbone: Backbone, delta: torch.Tensor) -> Iterator[None]:
    """Within the block, the model's input embeddings (B, T, d) come out shifted by ``delta`` (B, T, d)."""

    def shift(module, inputs, output):
        return output + delta.to(output.dtype)

    handle = backbone.model.get_input_embeddings().register_forward_hook(shift)
    try:
        yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class EmbeddingAttack:
    """An attack of ``steps`` projected gradient steps within relative radius ``epsilon`` (FGSM: one step of size
    ε)."""

    method: AttackMethod = AttackMethod.PGD
    epsilon: float = 0.01
    steps: int = 5

    def __post_init__(self):
        object.__setattr__(self, "method", AttackMethod(self.method))
        if not self.epsilon >= 0:
            raise PolarVBLLError(f"attack epsilon: must be >= 0, got {self.epsilon}")
        if self.steps < 1:
            raise PolarVBLLError(f"attack steps: must be >= 1, got {self.steps}")
        if self.method is AttackMethod.FGSM and self.steps != 1:
            object.__setattr__(self, "steps", 1)

    @property
    def step_size(self) -> float:
        return self.epsilon if self.method is AttackMethod.FGSM else 2.5 * self.epsilon / self.steps

    def describe(self) -> dict:
        return {"method": self.method.value, "epsilon": self.epsilon, "steps": self.steps, "space": "embeddings"}

    def perturbation(self, backbone: Backbone, logits: Logits, batch: dict) -> torch.Tensor:
        """δ (B, T, d) for ``batch``: the attack of the module docstring against ``logits(features, choice_mask)``
        (a head's: :func:`point_logits`)."""
        with torch.no_grad():
            clean = backbone.model.get_input_embeddings()(batch["input_ids"]).float()
        real = batch["attention_mask"].bool()[..., None]
        radius = self.epsilon * clean.norm(dim=-1, keepdim=True) * real  # (B, T, 1); 0 on padding
        delta = torch.zeros_like(clean)
        for _ in range(self.steps):
            delta.requires_grad_(True)
            with torch.enable_grad(), embedding_offset(backbone, delta):
                loss = self.loss(backbone, logits, batch)
                (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                direction = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                delta = delta.detach() + self.step_size / max(self.epsilon, 1e-12) * radius * direction
                delta = project(delta, radius)
        return delta.detach()

    @staticmethod
    def loss(backbone: Backbone, logits: Logits, batch: dict) -> torch.Tensor:
        """Σ over the batch of the cross-entropy of the right answer under ``logits``."""
        features = backbone.features(batch["input_ids"], batch["attention_mask"])
        scores = logits(features, batch["choice_mask"])
        return torch.nn.functional.cross_entropy(scores, batch["labels"], reduction="sum")

    @contextmanager
    def applied(self, backbone: Backbone, head: UQHead, batch: dict) -> Iterator[None]:
        """Within the block, ``batch``'s prompts reach the model attacked (along ``head``'s point logits)."""
        with embedding_offset(backbone, self.perturbation(backbone, point_logits(head), batch)):
            yield


def point_logits(head: UQHead) -> Logits:
    """The logits an attack on ``head`` follows: its point logits over its temperature."""
    return lambda features, choice_mask: head.point_logits(features, choice_mask) / head.temperature


def project(delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Each token's δ_t (…, d) scaled back into its ball ‖δ_t‖ ≤ radius_t (…, 1)."""
    norm = delta.norm(dim=-1, keepdim=True)
    return delta * torch.where(norm > radius, radius / norm.clamp_min(1e-12), torch.ones_like(norm))
