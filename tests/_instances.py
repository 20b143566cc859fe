"""Tiny instances of shared/REFERENCE_VALUES.md, shared by tests."""

from __future__ import annotations

import numpy as np


def reference_instance(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """REFERENCE_VALUES recipe: X ~ N(0, 1) (n, d), y ~ N(0, 1) (n,)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.standard_normal(n)
