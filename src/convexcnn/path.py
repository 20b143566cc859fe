"""Regularization paths: :func:`fit_path` solves a sequence of β, each warm-started from the
previous solution on the same pattern set."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .fit import FitResult, fit

__all__ = ["fit_path"]


def _check_betas(betas: object) -> list[float]:
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) == 0:
        raise ValueError(f"betas must be a non-empty sequence of positive numbers; got {betas!r}")
    values = []
    for b in betas:
        if (
            isinstance(b, bool)
            or not isinstance(b, (int, float))
            or not (math.isfinite(float(b)) and float(b) > 0)
        ):
            raise ValueError(f"betas must contain positive finite numbers; got {b!r}")
        values.append(float(b))
    return values


def fit_path(X: object, y: object, betas: Sequence[float], **fit_kwargs: Any) -> list[FitResult]:
    """Fit every β of ``betas`` and return one :class:`FitResult` per β, in the given order.

    The β are solved from the largest to the smallest (sparse solutions first); every fit after
    the first reuses the first fit's :class:`PatternSet` (so all share one program structure)
    and is warm-started from the solution of the previously solved β. ``fit_kwargs`` are
    :func:`convexcnn.fit` keywords (``solver``, ``kernel_size``, ``patterns``, ...), except
    ``beta`` and ``warm_start``.
    """
    for key in ("beta", "warm_start"):
        if key in fit_kwargs:
            raise ValueError(f"fit_path sets {key!r} itself; pass the βs as betas=[...]")
    values = _check_betas(betas)
    order = sorted(range(len(values)), key=lambda i: -values[i])
    results: dict[int, FitResult] = {}
    previous: FitResult | None = None
    kwargs = dict(fit_kwargs)
    for i in order:
        warm = None
        if previous is not None:
            kwargs["patterns"] = previous.patterns
            warm = previous.solution
        result = fit(X, y, beta=values[i], warm_start=warm, **kwargs)
        result.info["warm_started"] = warm is not None
        results[i] = result
        previous = result
    return [results[i] for i in range(len(values))]
