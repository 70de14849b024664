"""Post-hoc steps: what runs after training, each an object with ``fit(context) -> state`` (as TorchUncertainty's
post-processing). A run's config lists them (``FitConfig.post_hoc``); ``fit`` and ``refine`` run that list in
order, the head keeps what they fitted (``head.safetensors``) and the report keeps each step's state under its
``report_key``. A new step is one class and one registry line.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import FitConfig
from ..data import TaskSpec, encoded_batches
from ..errors import PolarVBLLError
from ..models import Backbone
from ..registry import Registry
from ..uq import UQHead


@dataclass
class PostHocContext:
    """What a step may use: the trained backbone and head, the task, the examples trained on and those held out."""

    backbone: Backbone
    head: UQHead
    task: TaskSpec
    items: list
    held_out: list
    config: FitConfig

    def training_sample_items(self) -> list:
        """A seeded random subset (``laplace_samples``) of the training examples."""
        generator = torch.Generator().manual_seed(self.config.seed)
        order = torch.randperm(len(self.items), generator=generator)[: self.config.laplace_samples]
        return [self.items[i] for i in order.tolist()]

    def training_sample(self) -> list[dict]:
        """:meth:`training_sample_items` in evaluation batches."""
        return self.batches(self.training_sample_items())

    def anchor_batches(self) -> list[dict]:
        """Batches of the held-out training examples when the run holds some out, else :meth:`training_sample`:
        examples the adapter was not fitted to, where they exist."""
        return self.batches(self.held_out) if self.held_out else self.training_sample()

    def batches(self, items: list) -> list[dict]:
        """``items`` encoded in evaluation batches (sorted by length)."""
        config = self.config
        encoded = encoded_batches(self.backbone.tokenizer, self.task, items, config.max_length, config.eval_batch_size)
        return [batch for _, batch in encoded]


class PostHocStep(abc.ABC):
    """One post-hoc step. ``report_key``: where its state goes in the run report (None: it reports nothing)."""

    report_key: ClassVar[str | None] = None
    #: a calibration of the final predictive (temperature scaling): it runs after every step that changes it
    calibrates: ClassVar[bool] = False

    @abc.abstractmethod
    def fit(self, context: PostHocContext) -> dict:
        """Fit the step on ``context`` (changing the head in place) and return the state to report."""


POST_HOC: Registry[type[PostHocStep]] = Registry("post-hoc step")


def ordered_steps(names: list[str]) -> list[str]:
    """``names`` (each a registered step, else a one-line error) with the calibrating steps moved last."""
    for name in names:
        POST_HOC.get(name)
    return sorted(names, key=lambda name: POST_HOC.get(name).calibrates)


def check_post_hoc(names: list[str]) -> None:
    """Refuse an unknown step, or a calibrating step followed by one that changes the predictive it calibrated."""
    if ordered_steps(names) != names:
        raise PolarVBLLError(f"FitConfig.post_hoc: {names}: a calibration (temperature) must come last")


def run_post_hoc(names: list[str], context: PostHocContext) -> dict[str, dict]:
    """Run the steps ``names`` in order; returns ``{report_key: state}`` of the steps that report."""
    reported = {}
    for name in names:
        step = POST_HOC.get(name)()
        state = step.fit(context)
        if step.report_key is not None:
            reported[step.report_key] = state
    return reported
