"""Laplace approximations after training: the VBLL head's last-layer Laplace and Laplace-LoRA's K-FAC posterior."""

from __future__ import annotations

from ..engine.head_phase import cached_features
from .base import POST_HOC, PostHocContext, PostHocStep


@POST_HOC.decorator("last_layer_laplace")
class LastLayerLaplace(PostHocStep):
    """Replace the head's posterior covariance by the Laplace one at its mean, on features of a seeded training
    subset (``laplace_samples``) standing for all training examples (``head.laplace_``; VBLL)."""

    def fit(self, context: PostHocContext) -> dict:
        config = context.config
        items = context.training_sample_items()
        features, labels, masks = cached_features(
            context.backbone, context.task, items, config.max_length, config.eval_batch_size
        )  # (shared out over the processes of a run)
        context.head.laplace_(features, labels, masks, n_total=len(context.items))
        return {}


@POST_HOC.decorator("laplace_lora")
class LaplaceLoRA(PostHocStep):
    """K-FAC Laplace over the adapter's declared linear maps and the head (``head.post_hoc``), prior precision by
    marginal likelihood; reports the prior precision, the parameter and example counts."""

    report_key = "posterior"

    def fit(self, context: PostHocContext) -> dict:
        return context.head.post_hoc(context.backbone, context.training_sample(), len(context.items))
