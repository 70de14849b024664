"""Post-hoc steps (temperature scaling, last-layer Laplace, Laplace-LoRA, TFB) as objects with ``fit(context)``."""

from . import laplace, temperature, tfb  # noqa: F401  (registers the steps)
from .base import POST_HOC, PostHocContext, PostHocStep, check_post_hoc, ordered_steps, run_post_hoc

__all__ = ["POST_HOC", "PostHocContext", "PostHocStep", "check_post_hoc", "ordered_steps", "run_post_hoc"]
