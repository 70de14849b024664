"""Optimizers for adapters with Stiefel-manifold factors."""

from .stiefel import build_optimizer, landing_field

__all__ = ["build_optimizer", "landing_field"]
