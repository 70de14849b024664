"""Temperature scaling after training: one T fitted on the held-out training examples' logit samples."""

from __future__ import annotations

import torch

from ..engine.inference import predict
from ..uq import fit_temperature
from .base import POST_HOC, PostHocContext, PostHocStep


@POST_HOC.decorator("temperature")
class TemperatureScaling(PostHocStep):
    """T minimizing the NLL of the mean softmax of the logit samples / T on ``held_out`` (LBFGS); the head keeps T."""

    report_key = "calibration"
    calibrates = True

    @torch.no_grad()
    def fit(self, context: PostHocContext) -> dict:
        head, config = context.head, context.config
        head.temperature.fill_(1.0)
        evaluation = predict(
            context.backbone,
            head,
            context.task,
            context.held_out,
            config.eval_batch_size,
            config.max_length,
            config.seed,
            return_logits=True,
        )
        labels = torch.tensor([item.answer for item in context.held_out])
        head.temperature.fill_(fit_temperature(torch.from_numpy(evaluation["logits"]), labels))
        return {"temperature": float(head.temperature), "held_out": len(context.held_out)}
