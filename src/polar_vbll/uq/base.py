"""The uncertainty-method contract: a head over backbone features with its loss and its logit samples.

``forward_logits(backbone, batch, n_samples) -> (B, S, C)``: the S samples are split into backbone passes × head
samples, so head-only methods (VBLL, MAP, MLE, temperature scaling) pay one backbone pass while methods that act on
the adapter (MC dropout, ensembles) pay one per pass. ``training_loss(backbone, batch)`` is what training minimizes.
A head can hold a temperature T (fitted post hoc on held-out logits): its predictive is then the mean softmax of
its logit samples divided by T.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from ..errors import PolarVBLLError
from ..fields import MethodConfig
from ..registry import Registry


class TrainingStep(NamedTuple):
    """What one training batch gives: the loss to minimize and what the loop logs and keeps."""

    loss: torch.Tensor
    #: named terms to log
    terms: dict[str, float]
    #: point logits (B, C), for the running accuracy
    point: torch.Tensor
    #: the batch's features (B, d) in fp32, in the graph of ``loss`` (a regulariser on the logits, quality
    #: retaining, trains through them; an exact head phase keeps them detached); None where the batch has no single
    #: feature set (an ensemble's members each have theirs)
    features: torch.Tensor | None


class UQHead(nn.Module, abc.ABC):
    """A trainable head producing class logits, possibly random, from features (B, d)."""

    #: weight decay on the adapter that the method implies (MAP: 1e-5)
    adapter_weight_decay: float = 0.0
    #: whether its logit samples differ (enables sample-based OOD criteria such as mutual information)
    stochastic: bool = False
    temperature: torch.Tensor

    def __init__(self):
        super().__init__()
        self.register_buffer("temperature", torch.ones(()))

    def attach(self, backbone) -> None:  # noqa: B027 (optional hook)
        """Called once the adapter is injected: methods that act on the adapter (MC dropout, ensembles) hook in."""

    def state_defaults(self) -> dict[str, torch.Tensor]:
        """Tensors a head saved by an earlier version may lack, with the value they then had."""
        return {"temperature": torch.ones(())}  # runs written before temperature scaling existed

    @property
    def solve_every(self) -> int | None:
        """An exact head phase (``solve``) every this many adapter steps instead of stochastic head steps; None:
        none."""
        return None

    @property
    def solve_buffer(self) -> int:
        """Training examples whose features an exact head phase caches."""
        return 0

    @property
    def solve_on_step_features(self) -> bool:
        """Whether the exact head phases between the first and the last reuse the features the adapter steps
        computed (``TrainingStep.features``) instead of a fresh pass over a buffer."""
        return False

    def solve(
        self, features: torch.Tensor, labels: torch.Tensor, choice_mask: torch.Tensor | None, n_total: int
    ) -> dict[str, float]:
        """Solve the head on cached ``features`` (M, d) of training examples standing for ``n_total``; returns what
        to log. Heads with ``solve_every`` implement it (VBLL's exact head phase)."""
        raise PolarVBLLError(f"{type(self).__name__} has no exact head phase")

    def backbone_passes(self) -> int:
        """Backbone passes a prediction needs (1 for head-only methods)."""
        return 1

    def post_hoc(self, backbone, batches: Iterable[dict], n_total: int) -> dict:
        """Fit a posterior after training on ``batches`` standing for ``n_total`` examples; returns what to report.
        Methods with ``UQMethod.post_hoc_laplace`` implement it (Laplace-LoRA)."""
        raise PolarVBLLError(f"{type(self).__name__} fits no posterior after training")

    def laplace_(
        self, features: torch.Tensor, labels: torch.Tensor, choice_mask: torch.Tensor | None, n_total: int
    ) -> None:
        """Replace the head's posterior covariance by a last-layer Laplace one on cached ``features`` (N, d).
        Methods with ``UQMethod.last_layer_laplace`` implement it (VBLL)."""
        raise PolarVBLLError(f"{type(self).__name__} has no last-layer posterior to refine")

    @contextmanager
    def backbone_sample(self, backbone, index: int, generator: torch.Generator | None = None) -> Iterator[None]:
        """Puts the backbone (and head) in the state of pass ``index`` (a dropout mask, an ensemble member)."""
        yield

    def training_loss(self, backbone, batch: dict, train_backbone: bool = True) -> TrainingStep:
        """The loss of one training batch, its terms to log, its point logits and features."""
        with torch.set_grad_enabled(train_backbone and torch.is_grad_enabled()):
            features = backbone.features(batch["input_ids"], batch["attention_mask"])
        loss, terms = self.loss(features, batch["labels"], batch["choice_mask"])
        with torch.no_grad():
            point = self.point_logits(features.detach(), batch["choice_mask"])
        return TrainingStep(loss, terms, point, features.float())

    def on_optimizer_step(self) -> None:
        """Called once after each training step's updates (a step may take several forward passes: processes,
        gradient accumulation), for heads that count steps."""

    @torch.no_grad()
    def predict_batch(
        self, backbone, batch: dict, n_samples: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictive p(y | x) (B, C), logit samples (B, S, C)) with S = passes × ⌈n_samples / passes⌉."""
        passes = self.backbone_passes()
        per_pass = max(1, math.ceil(n_samples / passes))
        probs: list[torch.Tensor] = []
        samples: list[torch.Tensor] = []
        for index in range(passes):
            with self.backbone_sample(backbone, index, generator):
                features = backbone.features(batch["input_ids"], batch["attention_mask"])
                if self.temperature.item() == 1.0:  # (the predictive draws first: runs stay reproducible)
                    probs.append(self.predict_probs(features, batch["choice_mask"], generator))
                samples.append(self.sample_logits(features, per_pass, batch["choice_mask"], generator))
        logits = torch.cat(samples, 1)
        if probs:
            return torch.stack(probs).mean(0), logits
        return torch.softmax(logits / self.temperature, -1).mean(1), logits / self.temperature

    def forward_logits(self, backbone, batch: dict, n_samples: int, generator: torch.Generator | None = None):
        """(B, S, C) logit samples (temperature applied)."""
        return self.predict_batch(backbone, batch, n_samples, generator)[1]

    @abc.abstractmethod
    def loss(
        self, features: torch.Tensor, labels: torch.Tensor, choice_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss (scalar) and named terms to log."""

    @abc.abstractmethod
    def sample_logits(
        self,
        features: torch.Tensor,
        n_samples: int,
        choice_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B, S, C) logits; masked classes are -inf."""

    def point_logits(self, features: torch.Tensor, choice_mask: torch.Tensor | None = None) -> torch.Tensor:
        """A deterministic summary of the logits (B, C), e.g. for running accuracy."""
        return self.sample_logits(features, 1, choice_mask)[:, 0]

    def predict_probs(
        self, features: torch.Tensor, choice_mask: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The predictive p(y | x) (B, C)."""
        return torch.softmax(self.sample_logits(features, 1, choice_mask, generator), -1).mean(1)


@dataclass(frozen=True)
class UQMethod:
    """A registered uncertainty method: how to build its head from its options (``config``, a
    :class:`~polar_vbll.fields.MethodConfig` whose ``method`` is the registered name) and what it implies."""

    description: str
    #: ``build(init_weight (C, d), n_train, options, fit) -> UQHead``; ``options`` is a ``config`` instance, ``fit``
    #: the run's FitConfig (batch size and the like; typed ``Any``: uq/ is below the config in the import order)
    build: Callable[[torch.Tensor, int, Any, Any], UQHead]
    #: the dataclass of the method's own options (``FitConfig.uq``)
    config: type[MethodConfig]
    #: the adapter capabilities it needs, given its options (:mod:`polar_vbll.adapters.capabilities`)
    requires: Callable[[Any], frozenset[str]] = lambda options: frozenset()
    #: adapter members trained side by side on one base, given its options (deep ensembles: their size)
    members: Callable[[Any], int] = lambda options: 1
    #: whether training alternates head and adapter steps by default (VBLL: the head's ELBO, then the adapter's)
    alternates: bool = False
    #: post-hoc steps its head can take besides its own (``post_hoc``): a temperature (every head), a last-layer
    #: Laplace of its own posterior (VBLL's ``laplace_``)
    supports: tuple[str, ...] = ("temperature",)
    #: what ``refine`` changes in a finished run's config to add a post-hoc method ("laplace", "temperature"):
    #: ``{"uq": name}`` (MAP becomes Laplace-LoRA: another head, same weights) or ``{"post_hoc": step}`` (VBLL gains
    #: a last-layer Laplace)
    refinements: dict[str, dict[str, str]] = field(default_factory=dict)
    #: post-hoc steps that are part of the method (:mod:`polar_vbll.posthoc`): ``--uq temperature`` is MAP then
    #: ``temperature``, ``--uq laplace`` is MAP then ``laplace_lora``
    post_hoc: tuple[str, ...] = ()
    #: whether its head reads the features alone (no adapter sampling, members or posterior), so that a multi-task
    #: fit can give each task its own head over the one shared adapter
    multi_task: bool = False
    #: the adapter input dropout the method implies when the adapter's is not given (MC dropout: 0.1); a method
    #: with one > 0 refuses an adapter whose dropout is 0
    adapter_dropout: float = 0.0


UQ_METHODS: Registry[UQMethod] = Registry("uncertainty method")


def uncertainty_decomposition(prob_samples: torch.Tensor, eps: float = 1e-12) -> dict[str, torch.Tensor]:
    """Entropy decomposition of samples p_s (B, S, C): total H[mean p] = aleatoric E_s H[p_s] + epistemic (MI)."""

    def entropy(p):
        return -(p * (p.clamp_min(eps)).log()).sum(-1)

    total = entropy(prob_samples.mean(1))
    aleatoric = entropy(prob_samples).mean(1)
    return {"total": total, "aleatoric": aleatoric, "epistemic": (total - aleatoric).clamp_min(0.0)}
