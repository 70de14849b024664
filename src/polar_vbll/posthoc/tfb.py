"""TFB's post-hoc step: the noise scale σ of a trained low-rank adapter, searched on anchor examples."""

from __future__ import annotations

from .base import POST_HOC, PostHocContext, PostHocStep


@POST_HOC.decorator("tfb")
class TrainingFreeBayesianization(PostHocStep):
    """The largest σ within the tolerance on the anchor examples (``head.post_hoc``, :mod:`polar_vbll.uq.tfb`);
    reports σ, the degradation it reached and the anchor's size."""

    report_key = "tfb"

    def fit(self, context: PostHocContext) -> dict:
        return context.head.post_hoc(context.backbone, context.anchor_batches(), len(context.items))
