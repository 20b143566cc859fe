"""scikit-learn estimators wrapping :func:`convexcnn.fit`.

``ConvexCNNClassifier`` (binary: ±1 targets internally, any two labels outside; multi-class:
softmax cross-entropy over shared patterns) and ``ConvexCNNRegressor``. Hyper-parameters are
stored verbatim in ``__init__`` (sklearn convention); everything learned ends in ``_``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from .fit import FitResult, fit

__all__ = ["ConvexCNNClassifier", "ConvexCNNRegressor"]


class _ConvexCNNBase(BaseEstimator):  # type: ignore[misc,unused-ignore]
    def __init__(
        self,
        *,
        architecture: str = "two_layer",
        pooling: str = "sum",
        kernel_size: int | tuple[int, ...] = 3,
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] = 0,
        beta: float = 1e-3,
        loss: str | None = None,
        patterns: Any = 100,
        solver: str = "exact",
        solver_options: dict[str, Any] | None = None,
        architecture_options: dict[str, Any] | None = None,
        random_state: int = 0,
        dtype: str = "float64",
    ) -> None:
        self.architecture = architecture
        self.pooling = pooling
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.beta = beta
        self.loss = loss
        self.patterns = patterns
        self.solver = solver
        self.solver_options = solver_options
        self.architecture_options = architecture_options
        self.random_state = random_state
        self.dtype = dtype

    def _fit(self, X: Any, y: Any, loss: str, task: str) -> FitResult:
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32'; got {self.dtype!r}")
        result = fit(
            X,
            y,
            architecture=self.architecture,
            pooling=self.pooling,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            beta=self.beta,
            loss=loss,
            task=task,
            patterns=self.patterns,
            solver=self.solver,
            solver_options=self.solver_options,
            seed=self.random_state,
            dtype=torch.float64 if self.dtype == "float64" else torch.float32,
            **(self.architecture_options or {}),
        )
        self.result_ = result
        self.network_ = result.network
        self.objective_ = result.objective
        self.network_objective_ = result.network_objective
        return result

    def decision_function(self, X: Any) -> np.ndarray:
        """Raw network outputs, (n,) or (n, c)."""
        check_is_fitted(self, "result_")
        return self.result_.decision_function(X).detach().cpu().numpy()


class ConvexCNNClassifier(ClassifierMixin, _ConvexCNNBase):  # type: ignore[misc,unused-ignore]
    """Classifier: binary problems use ``loss`` ("squared" default, "logistic",
    "squared_hinge") on ±1 targets; more classes use "cross_entropy" (default) or "squared"
    on one-hot targets."""

    def fit(self, X: Any, y: Any) -> ConvexCNNClassifier:
        labels = np.asarray(y)
        if labels.ndim != 1:
            raise ValueError(f"y must be a 1-D array of class labels; got shape {labels.shape}")
        self.classes_, encoded = np.unique(labels, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("y must contain at least two classes")
        if len(self.classes_) == 2:
            loss = self.loss or "squared"
            self._fit(X, np.where(encoded == 1, 1.0, -1.0), loss, "binary")
        else:
            loss = self.loss or "cross_entropy"
            if loss == "squared":
                targets = np.eye(len(self.classes_))[encoded]
                self._fit(X, targets, loss, "regression")
            else:
                self._fit(X, encoded, loss, "multiclass")
        return self

    def predict(self, X: Any) -> np.ndarray:
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return self.classes_[(scores >= 0).astype(int)]
        return self.classes_[scores.argmax(axis=1)]


class ConvexCNNRegressor(RegressorMixin, _ConvexCNNBase):  # type: ignore[misc,unused-ignore]
    """Regressor with ``loss`` "squared" (default) or "huber"."""

    def fit(self, X: Any, y: Any) -> ConvexCNNRegressor:
        self._fit(X, y, self.loss or "squared", "regression")
        return self

    def predict(self, X: Any) -> np.ndarray:
        return self.decision_function(X)
