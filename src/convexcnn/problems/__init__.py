"""Convex programs, one module per architecture, all implementing :class:`ConvexProblem`."""

from .base import ConvexProblem, RecoveredNetwork
from .two_layer import TwoLayerReLU

__all__ = ["ConvexProblem", "RecoveredNetwork", "TwoLayerReLU"]
