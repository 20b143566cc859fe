"""convexcnn: train CNNs to global optimality through their exact convex programs.

Public API: :func:`fit`, :class:`FitResult`, :class:`PatchSpec`, :class:`PatternSet`,
:func:`sample_patterns`.
"""

from .fit import FitResult, fit
from .patches import PatchSpec
from .patterns import PatternSet, sample_patterns

__all__ = ["FitResult", "PatchSpec", "PatternSet", "fit", "sample_patterns"]
