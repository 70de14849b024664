"""AMT (Yang et al. 2024, "Mixture of Adversarial LoRAs"): a pool of LoRAs meta-tuned on source tasks under input
and weight perturbations at several robustness levels, merged at test time from a few-shot task's support set.

Parts: :mod:`polar_vbll.data.episodes` (support / query sets), :mod:`.perturbation` (the singular-value and
-vector perturbation), :mod:`.merging` (scores, routing weights, the merged plain LoRA), :mod:`.pool`
(meta-tuning) and :mod:`.adapt` (the test-time merge); the input attack is :mod:`polar_vbll.engine.attack`'s.
"""

from ..data.episodes import Episode, sample_episode
from .merging import member_score, merged_factors, routing_weights
from .perturbation import perturbed, relative_perturbation

__all__ = [
    "Episode",
    "member_score",
    "merged_factors",
    "perturbed",
    "relative_perturbation",
    "routing_weights",
    "sample_episode",
]
