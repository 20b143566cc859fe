"""solver="working_set": Clarabel solves on a growing working set of cone rows, against the
exact CVXPY solve (reference instance and a small digits instance)."""

from __future__ import annotations

import pytest
import torch

from _instances import reference_instance
from convexcnn.data import load_dataset
from convexcnn.losses import get_loss
from convexcnn.patterns import sample_patch_patterns
from convexcnn.problems.base import ConvexProblem
from convexcnn.problems.two_layer import TwoLayerReLU
from convexcnn.solvers import ExactSolver
from convexcnn.solvers.working_set import WorkingSetSolver
from test_solvers import build, rel


def digits_problem(loss: str = "squared") -> TwoLayerReLU:
    """Digits 3-vs-8, first 40 training images, 3×3 kernel, 20 Gaussian patterns, β = 1e-3."""
    from convexcnn.patches import PatchSpec, as_signal_batch, extract_patches

    data = load_dataset("digits", classes=(3, 8))
    X = torch.as_tensor(data.X_train[:40], dtype=torch.float64)
    y = torch.as_tensor(data.y_train[:40], dtype=torch.float64)[:, None]
    batch, spec = as_signal_batch(X, PatchSpec(3))
    patches = extract_patches(batch, spec)
    patterns = sample_patch_patterns(patches, 20, seed=0)
    return TwoLayerReLU(
        patches,
        patterns,
        y,
        1e-3,
        get_loss(loss),
        pooling="sum",
        spec=spec,
        in_channels=X.shape[1],
        inputs=X,
    )


def check(problem: ConvexProblem, optimum: float) -> None:
    sol = WorkingSetSolver().solve(problem)
    assert sol.status == "optimal", sol.info
    assert rel(sol.objective, optimum) <= 1e-6
    assert sol.max_violation <= 1e-9
    assert sol.info["gap"] <= 1e-6
    assert sol.info["lower_bound"] <= optimum * (1 + 1e-9)
    assert rel(problem.recover(sol.W).objective, sol.objective) <= 1e-6
    assert sol.info["working_rows"] <= sol.info["total_rows"]
    lam = sol.multipliers
    assert lam is not None and bool((lam.coalesce().values() >= 0).all())


def test_reference_instance_matches_exact() -> None:
    X, y = reference_instance(8, 6, 1)
    problem = build(X, y, kernel_size=2, beta=0.1, patterns=20000)
    check(problem, ExactSolver().solve(problem).objective)


def test_digits_instance_matches_exact() -> None:
    problem = digits_problem()
    check(problem, ExactSolver().solve(problem).objective)


def test_prediction_matrix_matches_predict() -> None:
    from convexcnn.solvers.working_set import _Run

    problem = digits_problem()
    run = _Run(WorkingSetSolver(), problem)
    A = run.prediction_matrix()
    W = torch.randn(
        problem.variable_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    expected = problem.predict(W).reshape(-1).numpy()
    assert abs(A @ W.reshape(-1).numpy() - expected).max() <= 1e-9 * abs(expected).max()


def test_unsupported_loss_names_loss() -> None:
    problem = digits_problem("logistic")
    with pytest.raises(ValueError, match="loss"):
        WorkingSetSolver().solve(problem)


def test_stopping_after_one_round_keeps_a_valid_bound() -> None:
    """max_rounds=1 with rows still violated: the bound uses the multipliers of the rows that
    were solved (rows added after the last solve have none) and the status says so."""
    problem = digits_problem()
    optimum = ExactSolver().solve(problem).objective
    sol = WorkingSetSolver(initial_rows=2, max_rounds=1).solve(problem)
    assert sol.status == "max_rounds"
    assert sol.info["lower_bound"] <= optimum * (1 + 1e-9) <= sol.objective * (1 + 1e-9)
    assert sol.max_violation <= 1e-9  # still projected onto the full cones


def test_certificate_at_small_beta_uses_the_interior_point_dual() -> None:
    """Whole digits 3-vs-8 split, 100 patterns, β = 1e-3 (1.8M cone rows): V = Y − 𝒜W from a
    W within 1e-6 of the optimum certifies only a gap of ~0.09 (‖A_bᵀδV‖ ≫ β); Clarabel's own
    dual point certifies 1e-6 (~9 s here)."""
    from convexcnn.patches import PatchSpec, as_signal_batch, extract_patches

    data = load_dataset("digits", classes=(3, 8))
    X = torch.as_tensor(data.X_train, dtype=torch.float64)
    y = torch.as_tensor(data.y_train, dtype=torch.float64)[:, None]
    batch, spec = as_signal_batch(X, PatchSpec(3))
    patches = extract_patches(batch, spec)
    patterns = sample_patch_patterns(patches, 100, seed=0)
    problem = TwoLayerReLU(
        patches,
        patterns,
        y,
        1e-3,
        get_loss("squared"),
        pooling="sum",
        spec=spec,
        in_channels=X.shape[1],
        inputs=X,
    )
    sol = WorkingSetSolver().solve(problem)
    assert sol.status == "optimal" and sol.info["gap"] <= 1e-6
    assert sol.info["lower_bound"] <= sol.objective
    assert sol.max_violation <= 1e-9
    assert rel(problem.recover(sol.W).objective, sol.objective) <= 1e-6
