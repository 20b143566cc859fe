"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from _instances import reference_instance


@pytest.fixture
def tiny_1d() -> tuple[np.ndarray, np.ndarray]:
    """REFERENCE_VALUES two-layer sum-pooling instance: n = 8, d = 6, seed 1."""
    return reference_instance(8, 6, 1)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add overhead (and stall on a busy machine).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
