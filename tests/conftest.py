"""Shared fixtures."""

from __future__ import annotations

import numpy as np
import pytest

from _instances import reference_instance


@pytest.fixture
def tiny_1d() -> tuple[np.ndarray, np.ndarray]:
    """REFERENCE_VALUES two-layer sum-pooling instance: n = 8, d = 6, seed 1."""
    return reference_instance(8, 6, 1)
