"""What an adapter that ``needs_data`` gets to initialize from: the model's inputs on seeded training examples."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..config import FitConfig
from ..data import encoded_batches, get_task
from ..models import Backbone


@dataclass
class TrainingInputs:
    """Seeded samples of a task's training examples, run through the backbone one at a time (no gradients).

    ``describe(task, n)`` names a sample for cache keys; ``run(task, n)`` makes the forward passes, during which an
    adapter's hooks see the inputs of its target layers. ``task=None`` means the run's own task.
    """

    backbone: Backbone
    config: FitConfig

    def _task(self, task: str | None):
        # another task than the run's own is read with its own template
        return get_task(task or self.config.single_task, None if task else self.config.template, registered_first=True)

    def describe(self, task: str | None, n: int) -> dict:
        spec = self._task(task)
        return {
            "model": self.backbone.describe(),
            "task": spec.name,
            "template": spec.template.id,
            "samples": n,
            "max_length": self.config.max_length,
            "seed": self.config.seed,
        }

    @torch.no_grad()
    def run(self, task: str | None, n: int, desc: str = "initializing the adapter") -> None:
        spec = self._task(task)
        items = spec.load("train")
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(self.config.seed))
        chosen = [items[i] for i in order[:n].tolist()]
        batches = encoded_batches(self.backbone.tokenizer, spec, chosen, self.config.max_length, 1)
        for _, batch in tqdm(batches, total=len(chosen), desc=desc, unit="ex"):
            self.backbone.features(batch["input_ids"], batch["attention_mask"])
