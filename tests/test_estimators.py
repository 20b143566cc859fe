"""scikit-learn estimators: conventions (clone, get_params) and real fits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from convexcnn.estimators import ConvexCNNClassifier, ConvexCNNRegressor


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 5, 5))


def test_binary_classifier_any_labels() -> None:
    X = _images(20, 0)
    y = np.where(X[:, 0, 2, 2] > 0, "cat", "dog")
    clf = ConvexCNNClassifier(kernel_size=3, beta=1e-3, patterns=40).fit(X, y)
    assert set(clf.classes_) == {"cat", "dog"}
    assert clf.score(X, y) >= 0.9  # separable by the centre pixel, near-interpolating fit
    assert clf.network_objective_ == pytest.approx(clf.objective_, rel=1e-6)
    assert clone(clf).get_params() == clf.get_params()


def test_multiclass_classifier() -> None:
    X = _images(15, 1)
    y = np.arange(15) % 3
    clf = ConvexCNNClassifier(kernel_size=3, beta=1e-3, patterns=20).fit(X, y)
    assert clf.decision_function(X).shape == (15, 3)
    assert clf.score(X, y) >= 0.9


def test_regressor() -> None:
    X = _images(12, 2)
    y = X[:, 0].sum(axis=(1, 2))
    reg = ConvexCNNRegressor(kernel_size=3, beta=1e-3, patterns=30).fit(X, y)
    assert reg.score(X, y) > 0.9
    assert reg.predict(X).shape == (12,)


def test_bad_labels() -> None:
    with pytest.raises(ValueError, match="two classes"):
        ConvexCNNClassifier(patterns=5).fit(_images(4, 3), np.zeros(4))
