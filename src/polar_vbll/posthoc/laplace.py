"""Laplace approximations after training: the VBLL head's last-layer Laplace and Laplace-LoRA's K-FAC posterior."""

from __future__ import annotations

import torch

from .base import POST_HOC, PostHocContext, PostHocStep


@POST_HOC.decorator("last_layer_laplace")
class LastLayerLaplace(PostHocStep):
    """Replace the head's posterior covariance by the Laplace one at its mean, on features of a seeded training
    subset (``laplace_samples``) standing for all training examples (``head.laplace_``; VBLL)."""

    @torch.no_grad()
    def fit(self, context: PostHocContext) -> dict:
        backbone = context.backbone
        backbone.eval()
        batches = context.training_sample()
        features = [backbone.features(b["input_ids"], b["attention_mask"]) for b in batches]
        labels = torch.cat([b["labels"] for b in batches])
        masks = torch.cat([b["choice_mask"] for b in batches])
        context.head.laplace_(torch.cat(features), labels, masks, n_total=len(context.items))
        return {}


@POST_HOC.decorator("laplace_lora")
class LaplaceLoRA(PostHocStep):
    """K-FAC Laplace over the adapter's declared linear maps and the head (``head.post_hoc``), prior precision by
    marginal likelihood; reports the prior precision, the parameter and example counts."""

    report_key = "posterior"

    def fit(self, context: PostHocContext) -> dict:
        return context.head.post_hoc(context.backbone, context.training_sample(), len(context.items))
