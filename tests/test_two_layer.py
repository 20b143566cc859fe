"""Two-layer ReLU CNN (SPEC §3): exact optimum vs an independent CVXPY program, recovery,
and Adam restarts of the non-convex network never beating it."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import convexcnn
from _instances import reference_instance
from convexcnn import PatchSpec, PatternSet
from convexcnn.networks import train_sgd
from convexcnn.patches import patches_of


def independent_cvxpy_optimum(
    patches: np.ndarray, masks: np.ndarray, y: np.ndarray, beta: float, avg: bool = False
) -> float:
    """SPEC §3 written out pattern by pattern, without the library's problem object."""
    n, K, h = patches.shape
    X = patches / K if avg else patches
    M = X.reshape(n * K, h)
    fit_terms, penalty, constraints = 0, 0, []
    for d in masks:  # d: (n, K) bool
        A = np.einsum("tk,tkh->th", d.astype(float), X)
        sign = (2 * d.astype(float) - 1).reshape(-1, 1)
        c, c_neg = cp.Variable(h), cp.Variable(h)
        fit_terms = fit_terms + A @ (c - c_neg)
        penalty = penalty + cp.norm(c, 2) + cp.norm(c_neg, 2)
        constraints += [cp.multiply(sign, M) @ c >= 0, cp.multiply(sign, M) @ c_neg >= 0]
    program = cp.Problem(
        cp.Minimize(0.5 * cp.sum_squares(fit_terms - y) + beta * penalty), constraints
    )
    program.solve(solver="CLARABEL")
    return float(program.value)


def best_adam_restart(X: np.ndarray, y: np.ndarray, spec: dict, beta: float, n: int) -> float:
    best = np.inf
    for seed in range(n):
        run = train_sgd(
            X, y, width=12, optimizer="adam", lr=3e-2, epochs=1500, beta=beta, seed=seed, **spec
        )
        best = min(best, min(run.history))
    return best


def test_reference_1d_global_optimum(tiny_1d: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = tiny_1d
    result = convexcnn.fit(X, y, kernel_size=2, beta=0.1, patterns=20000, seed=0)
    assert result.status == "optimal"
    enumerated = convexcnn.fit(X, y, kernel_size=2, beta=0.1, patterns="enumerate")
    assert len(enumerated.patterns) == len(result.patterns)  # sampling found every pattern
    # shared/REFERENCE_VALUES.md: 1.533410 (all patterns present)
    assert result.objective == pytest.approx(1.533410, abs=1e-6)
    patches = patches_of(X, PatchSpec(2)).numpy()
    reference = independent_cvxpy_optimum(patches, result.patterns.masks.numpy(), y, 0.1)
    assert result.objective == pytest.approx(reference, rel=1e-6)
    assert result.network_objective == pytest.approx(result.objective, rel=1e-6)
    assert isinstance(result.network, torch.nn.Module)
    assert isinstance(result.network.conv, torch.nn.Conv1d)
    best = best_adam_restart(X, y, {"kernel_size": 2}, 0.1, 8)
    assert best >= result.objective - 1e-6


def test_tiny_2d_global_optimum() -> None:
    """2-D images (n, 1, 4, 3), kernel (2, 1), padding 1, stride (1, 2): h = 2, every pattern
    enumerated exactly (sampling alone can miss thin cells)."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((6, 1, 4, 3))
    y = rng.standard_normal(6)
    geometry = {"kernel_size": (2, 1), "padding": (1, 0), "stride": (1, 2)}
    result = convexcnn.fit(X, y, beta=0.05, patterns="enumerate", **geometry)
    assert result.certificate.scope.startswith("enumerated")
    patches = patches_of(X, PatchSpec((2, 1), padding=(1, 0), stride=(1, 2))).numpy()
    reference = independent_cvxpy_optimum(patches, result.patterns.masks.numpy(), y, 0.05)
    assert result.objective == pytest.approx(reference, rel=1e-6)
    assert result.network_objective == pytest.approx(result.objective, rel=1e-6)
    assert isinstance(result.network.conv, torch.nn.Conv2d)
    best = best_adam_restart(X, y, geometry, 0.05, 8)
    assert best >= result.objective - 1e-6


GEOMETRIES = [
    ("1d", (5, 9), {"kernel_size": 3}),
    ("1d-pad-stride", (5, 9), {"kernel_size": 3, "padding": 2, "stride": 2}),
    ("2d", (5, 1, 5, 5), {"kernel_size": 3}),
    ("2d-pad-stride", (5, 2, 5, 4), {"kernel_size": 2, "padding": 1, "stride": 2}),
]


@pytest.mark.parametrize("pooling", ["sum", "avg"])
@pytest.mark.parametrize(("name", "shape", "geometry"), GEOMETRIES)
def test_network_objective_equals_convex_objective(
    pooling: str, name: str, shape: tuple[int, ...], geometry: dict
) -> None:
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal(shape), rng.standard_normal(shape[0])
    result = convexcnn.fit(X, y, pooling=pooling, beta=0.05, patterns=40, **geometry)
    assert result.status == "optimal"
    assert result.n_filters >= 1
    assert result.network_objective == pytest.approx(result.objective, rel=1e-6)
    # the network is a real module: running it reproduces the convex predictions
    pred = result.decision_function(X)
    F = result.problem.predict(result.solution.W)[:, 0]
    torch.testing.assert_close(pred, F, rtol=1e-6, atol=1e-8)


def test_avg_pooling_is_sum_pooling_with_scaled_data() -> None:
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((6, 8)), rng.standard_normal(6)
    K = 6
    avg = convexcnn.fit(X, y, pooling="avg", kernel_size=3, beta=0.02, patterns=200)
    summed = convexcnn.fit(X / K, y, pooling="sum", kernel_size=3, beta=0.02, patterns=200)
    assert avg.objective == pytest.approx(summed.objective, rel=1e-6)


def test_pattern_set_from_filters_warm_start() -> None:
    """Patterns of an SGD network's filters: the fit is at least as good as the network."""
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((10, 7)), rng.standard_normal(10)
    run = train_sgd(X, y, width=6, lr=3e-2, epochs=800, beta=0.1, kernel_size=3)
    patterns = PatternSet.from_filters(X, PatchSpec(3), run.network.conv.weight.detach())
    assert 1 <= len(patterns) <= 6
    result = convexcnn.fit(X, y, kernel_size=3, beta=0.1, patterns=patterns)
    assert result.network_objective <= run.objective + 1e-6


def test_sample_patterns_counts() -> None:
    X, _ = reference_instance(8, 6, 1)
    patterns = convexcnn.sample_patterns(X, PatchSpec(2), 5000, seed=1)
    assert patterns.n_drawn == 5000
    assert len(patterns) == patterns.masks.shape[0] <= 5000
    assert patterns.masks.dtype == torch.bool and patterns.masks.shape[1:] == (8, 5)
    flat = patterns.masks.reshape(len(patterns), -1)
    assert flat.any(dim=1).all()  # all-zero pattern dropped
    assert len({tuple(row.tolist()) for row in flat}) == len(patterns)  # deduplicated
    # each generator filter realizes its own mask
    recomputed = PatternSet.from_patch_filters(patches_of(X, PatchSpec(2)), patterns.filters)
    assert torch.equal(recomputed.masks, patterns.masks)


def test_multiclass_cross_entropy_recovery() -> None:
    rng = np.random.default_rng(6)
    X = rng.standard_normal((9, 1, 4, 4))
    labels = np.arange(9) % 3
    result = convexcnn.fit(X, labels, loss="cross_entropy", kernel_size=2, beta=0.05, patterns=30)
    assert result.network_objective == pytest.approx(result.objective, rel=1e-6)
    assert result.decision_function(X).shape == (9, 3)
    assert set(result.predict(X).tolist()) <= {0, 1, 2}


@pytest.mark.parametrize("loss", ["logistic", "squared_hinge", "huber"])
def test_other_losses_recover_exactly(loss: str) -> None:
    rng = np.random.default_rng(8)
    X = rng.standard_normal((8, 7))
    y = np.where(rng.standard_normal(8) > 0, 1.0, -1.0)
    result = convexcnn.fit(X, y, loss=loss, kernel_size=3, beta=0.05, patterns=30)
    assert result.network_objective == pytest.approx(result.objective, rel=1e-6)
