"""Bad input at the public edge: one ValueError that names the argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import convexcnn

rng = np.random.default_rng(0)
X_OK = rng.standard_normal((6, 8))
Y_OK = rng.standard_normal(6)
Y_PM1 = np.array([1.0, -1, 1, -1, 1, -1])


def _with_nan(a: np.ndarray) -> np.ndarray:
    b = a.copy()
    b.flat[3] = np.nan
    return b


def _with_inf(a: np.ndarray) -> np.ndarray:
    b = a.copy()
    b.flat[1] = np.inf
    return b


CASES = [
    ("NaN in X", _with_nan(X_OK), Y_OK, {}, "X"),
    ("Inf in X", _with_inf(X_OK), Y_OK, {}, "X"),
    ("NaN in y", X_OK, _with_nan(Y_OK), {}, "y"),
    ("Inf in y", X_OK, _with_inf(Y_OK), {}, "y"),
    ("mismatched n", X_OK, Y_OK[:5], {}, "y"),
    ("kernel larger than the signal", X_OK, Y_OK, {"kernel_size": 9}, "kernel_size"),
    (
        "kernel larger than the image",
        rng.standard_normal((6, 1, 4, 4)),
        Y_OK,
        {"kernel_size": 5},
        "kernel_size",
    ),
    ("beta zero", X_OK, Y_OK, {"beta": 0.0}, "beta"),
    ("beta negative", X_OK, Y_OK, {"beta": -1.0}, "beta"),
    ("beta not a number", X_OK, Y_OK, {"beta": "big"}, "beta"),
    ("unknown pooling", X_OK, Y_OK, {"pooling": "median"}, "pooling"),
    ("unknown architecture", X_OK, Y_OK, {"architecture": "resnet"}, "architecture"),
    ("unknown loss", X_OK, Y_OK, {"loss": "hinge"}, "loss"),
    ("unknown solver", X_OK, Y_OK, {"solver": "magic"}, "solver"),
    (
        "non-±1 binary targets (logistic)",
        X_OK,
        np.array([0.0, 1, 0, 1, 0, 1]),
        {"loss": "logistic"},
        "y",
    ),
    ("non-±1 binary targets (task)", X_OK, np.array([0.0, 1, 0, 1, 0, 1]), {"task": "binary"}, "y"),
    ("bad patterns argument", X_OK, Y_OK, {"patterns": "many"}, "patterns"),
    ("zero patterns", X_OK, Y_OK, {"patterns": 0}, "patterns"),
    ("unknown architecture option", X_OK, Y_OK, {"depth": 3}, "depth"),
    ("X wrong rank", rng.standard_normal(6), Y_OK, {}, "X"),
    ("strings in X", np.array([["a"] * 8] * 6), Y_OK, {}, "X"),
    ("unsupported dtype", X_OK, Y_OK, {"dtype": "float16"}, "dtype"),
    ("dtype not a dtype", X_OK, Y_OK, {"dtype": [1]}, "dtype"),
]


@pytest.mark.parametrize(
    ("label", "X", "y", "kwargs", "argument"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_clear_value_error(
    label: str, X: np.ndarray, y: np.ndarray, kwargs: dict, argument: str
) -> None:
    with pytest.raises(ValueError) as info:
        convexcnn.fit(X, y, **{"kernel_size": 3, "patterns": 10, **kwargs})
    assert argument in str(info.value), str(info.value)


def test_good_input_passes() -> None:
    result = convexcnn.fit(X_OK, Y_PM1, task="binary", kernel_size=3, patterns=10)
    assert set(result.predict(X_OK).tolist()) <= {-1.0, 1.0}


def test_dtype_by_name() -> None:
    """dtype="float32" means torch.float32 (the CLI's spelling works in Python too)."""
    by_name = convexcnn.fit(X_OK, Y_OK, kernel_size=3, patterns=10, dtype="float32")
    assert by_name.solution.W.dtype == torch.float32
