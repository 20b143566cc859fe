"""convexcnn: train CNNs to global optimality through their exact convex programs.

Public API: :func:`fit`, :class:`FitResult`, :class:`PatchSpec`, :class:`PatternSet`,
:func:`sample_patterns`, :func:`certify`, :class:`Certificate`,
:func:`implicit_regularizer`, :func:`fit_path`.
"""

from .certificate import Certificate, certify
from .fit import FitResult, fit
from .patches import PatchSpec
from .path import fit_path
from .patterns import PatternSet, sample_patterns
from .regularizers import ImplicitRegularizer, implicit_regularizer

__all__ = [
    "Certificate",
    "FitResult",
    "ImplicitRegularizer",
    "PatchSpec",
    "PatternSet",
    "certify",
    "fit",
    "fit_path",
    "implicit_regularizer",
    "sample_patterns",
]
