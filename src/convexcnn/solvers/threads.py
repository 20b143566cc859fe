"""Intra-op thread count for a solve (set, then restored), as certificate.py and networks.py do.

Small programs run many small operations, where torch's thread hand-off costs more than the
arithmetic (on a busy 2-core machine a 2-thread tiny GEMM measured ~1000× slower than the
single-threaded one), so the default is 1 thread below n × variables = 10⁷.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..problems.base import ConvexProblem

__all__ = ["solver_threads"]

SMALL_PROGRAM = 10**7


@contextmanager
def solver_threads(problem: ConvexProblem, threads: int | None) -> Iterator[int]:
    """Use ``threads`` intra-op threads (None: 1 for small programs, else unchanged)."""
    if threads is None:
        size = problem.targets.shape[0] * math.prod(problem.variable_shape)
        threads = 1 if size < SMALL_PROGRAM else torch.get_num_threads()
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None; got {threads!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)
