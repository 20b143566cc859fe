"""First-order solvers (fista, al, auto) against the exact CVXPY solver and REFERENCE_VALUES."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import convexcnn
from _instances import reference_instance
from convexcnn.patches import PatchSpec
from convexcnn.patterns import sample_patterns
from convexcnn.problems.base import ConvexProblem
from convexcnn.solvers import (
    FISTA,
    AugmentedLagrangian,
    AutoSolver,
    DualityGap,
    ExactSolver,
    GradientMapping,
    MaxIterations,
    TimeLimit,
    WorkingSetSolver,
    get_solver,
)
from convexcnn.solvers.duality import scaled_dual_value
from convexcnn.solvers.stopping import AnyOf, IterationState

REFERENCE_SUM_POOLING = 1.533410  # REFERENCE_VALUES: n=8, d=6, h=2, β=0.1, seed 1


def build(X: object, y: object, **kwargs: object) -> ConvexProblem:
    """The program fit() would solve (via a solver that hands the problem back)."""

    class Capture:
        def solve(self, problem: ConvexProblem, warm_start: object = None) -> None:
            raise _Captured(problem)

    class _Captured(Exception):
        pass

    from convexcnn.solvers import SOLVERS

    SOLVERS["_capture"] = Capture
    try:
        convexcnn.fit(X, y, solver="_capture", certificate_starts=0, **kwargs)  # type: ignore[arg-type]
    except _Captured as caught:
        return caught.args[0]  # type: ignore[no-any-return]
    finally:
        del SOLVERS["_capture"]
    raise AssertionError("unreachable")


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


@pytest.fixture(scope="module")
def tiny() -> tuple[ConvexProblem, ConvexProblem, float, float]:
    """REFERENCE sum-pooling instance: ReLU and gated programs and their exact optima."""
    X, y = reference_instance(8, 6, 1)
    relu = build(X, y, kernel_size=2, beta=0.1, patterns=20000)
    gated = build(X, y, kernel_size=2, beta=0.1, patterns=20000, gated=True)
    return relu, gated, ExactSolver().solve(relu).objective, ExactSolver().solve(gated).objective


def check_exact_match(problem: ConvexProblem, solution: object, optimum: float) -> None:
    """1e-6 relative agreement, a certificate, and (ReLU) the network reproduces the value."""
    assert solution.status == "optimal"  # type: ignore[attr-defined]
    assert rel(solution.objective, optimum) <= 1e-6  # type: ignore[attr-defined]
    assert solution.info["lower_bound"] <= optimum * (1 + 1e-9)  # type: ignore[attr-defined]
    if problem.has_constraints:
        net = problem.recover(solution.W).objective  # type: ignore[attr-defined]
        assert rel(net, solution.objective) <= 1e-6  # type: ignore[attr-defined]


def test_al_matches_exact_relu_and_reference(tiny: tuple) -> None:
    relu, _, exact, _ = tiny
    sol = AugmentedLagrangian().solve(relu)
    check_exact_match(relu, sol, exact)
    assert rel(sol.objective, REFERENCE_SUM_POOLING) <= 1e-6
    assert sol.max_violation <= 1e-12
    assert sol.info["gap"] <= 1e-6


def test_gated_fista_and_al_match_exact(tiny: tuple) -> None:
    _, gated, _, exact = tiny
    for solver in (FISTA(), AugmentedLagrangian()):
        check_exact_match(gated, solver.solve(gated), exact)


def test_fit_with_first_order_solvers(tiny: tuple) -> None:
    X, y = reference_instance(8, 6, 1)
    result = convexcnn.fit(X, y, kernel_size=2, beta=0.1, patterns=20000, solver="al")
    assert result.status == "optimal"
    assert rel(result.network_objective, result.objective) <= 1e-6
    assert rel(result.objective, tiny[2]) <= 1e-6
    gated = convexcnn.fit(X, y, kernel_size=2, beta=0.1, patterns=20000, solver="fista", gated=True)
    assert rel(gated.objective, tiny[3]) <= 1e-6
    # the gated relaxation's ReLU network is only approximate, and reported as such
    assert gated.network_objective > gated.objective


def test_two_dimensional_instance() -> None:
    rng = np.random.default_rng(3)
    X = rng.standard_normal((10, 5, 5))
    y = rng.standard_normal(10)
    for gated in (False, True):
        problem = build(X, y, kernel_size=2, beta=0.05, patterns=60, gated=gated)
        exact = ExactSolver().solve(problem).objective
        check_exact_match(problem, AugmentedLagrangian().solve(problem), exact)
    # FISTA's iteration count grows with the conditioning of 𝒜: a smaller 2-D program
    X, y = X[:8, :4, :4], y[:8]
    problem = build(X, y, kernel_size=2, beta=0.1, patterns=20, gated=True)
    check_exact_match(problem, FISTA().solve(problem), ExactSolver().solve(problem).objective)


def test_fista_on_relu_program_stays_feasible_and_bounded(tiny: tuple) -> None:
    relu, _, exact, _ = tiny
    sol = FISTA(max_iter=1500).solve(relu)
    assert sol.status == "max_iter"  # no certificate yet: not "optimal"
    assert sol.max_violation <= 1e-12  # every iterate is projected onto the cones
    assert rel(relu.recover(sol.W).objective, sol.objective) <= 1e-9
    assert sol.objective >= exact * (1 - 1e-9)
    assert sol.info["lower_bound"] <= exact * (1 + 1e-9)
    assert rel(sol.objective, exact) <= 1e-2


def test_lagrangian_bound_from_returned_multipliers(tiny: tuple) -> None:
    relu, _, exact, _ = tiny
    sol = AugmentedLagrangian().solve(relu)
    lam = sol.multipliers
    assert lam is not None and lam.is_sparse
    assert tuple(lam.shape) == (relu.c, 2, relu.P, relu.n, relu.K)
    assert bool((lam.values() >= 0).all())
    V = relu.loss.dual_point(relu.predict(sol.W), relu.targets)
    Z = relu.predict_adjoint(V) + relu.constraint_adjoint(lam.to_dense())
    s_max = relu.beta / float(relu.dual_norm(Z))
    lower = scaled_dual_value(relu.loss, V, relu.targets, s_max)
    assert lower <= exact * (1 + 1e-9)
    assert rel(lower, exact) <= 1e-4


def test_warm_start_and_its_validation(tiny: tuple) -> None:
    relu, _, exact, _ = tiny
    cold = AugmentedLagrangian().solve(relu)
    warm = AugmentedLagrangian().solve(relu, warm_start=cold)
    assert warm.status == "optimal"
    assert rel(warm.objective, exact) <= 1e-6
    assert warm.info["newton_steps"] <= cold.info["newton_steps"]
    with pytest.raises(ValueError, match="warm_start has shape"):
        AugmentedLagrangian().solve(relu, warm_start=torch.zeros(3))


def test_float32(tiny: tuple) -> None:
    X, y = reference_instance(8, 6, 1)
    result = convexcnn.fit(
        X, y, kernel_size=2, beta=0.1, patterns=20000, solver="al", dtype=torch.float32
    )
    assert result.status == "optimal"  # default tol 1e-4 in float32
    assert rel(result.objective, tiny[2]) <= 1e-4
    assert rel(result.network_objective, result.objective) <= 1e-4


def test_status_is_optimal_only_when_the_gap_rule_fires(tiny: tuple) -> None:
    _, gated, _, _ = tiny
    assert FISTA(max_iter=5).solve(gated).status == "max_iter"
    assert FISTA(time_limit=0.0).solve(gated).status == "time_limit"
    stationary = FISTA(stopping=GradientMapping(1e3) | MaxIterations(100)).solve(gated)
    assert stationary.status == "stationary"
    history = FISTA(max_iter=50).solve(gated).history
    assert len(history) == 50
    assert all(b >= a for a, b in zip(history.time, history.time[1:], strict=False))
    assert all(math.isfinite(g) and g >= 0 for g in history.gap)
    assert len(history.extra["lower_bound"]) == 50


def test_stopping_rules_compose() -> None:
    rule = DualityGap(1e-6) | MaxIterations(10) | TimeLimit(5.0)
    assert isinstance(rule, AnyOf) and len(rule.rules) == 3
    assert rule.check(IterationState(0, 0.0, gap=1e-7)) == "optimal"
    assert rule.check(IterationState(9, 0.0, gap=1.0)) == "max_iter"
    assert rule.check(IterationState(0, 6.0, gap=1.0)) == "time_limit"
    assert rule.check(IterationState(0, 0.0, gap=1.0)) is None
    assert (
        DualityGap(1e-6, max_violation=0.0).check(IterationState(0, 0, gap=0, violation=1)) is None
    )


def test_auto_picks_exact_for_tiny_working_set_for_small_and_al_otherwise(tiny: tuple) -> None:
    relu = tiny[0]
    assert isinstance(AutoSolver().choose(relu), ExactSolver)
    assert isinstance(AutoSolver(exact_max_rows=0).choose(relu), WorkingSetSolver)
    sol = AutoSolver(exact_max_rows=0).solve(relu)
    assert sol.info["auto_choice"] == "working_set"
    assert rel(sol.objective, tiny[2]) <= 1e-6
    large = AutoSolver(exact_max_rows=0, working_set_max_variables=0)
    assert isinstance(large.choose(relu), AugmentedLagrangian)
    sol = large.solve(relu)
    assert sol.info["auto_choice"] == "al"
    assert rel(sol.objective, tiny[2]) <= 1e-6


def test_bad_inputs_raise_clear_errors(tiny: tuple) -> None:
    X, y = reference_instance(8, 6, 1)
    with pytest.raises(ValueError, match="squared loss"):
        convexcnn.fit(X, np.sign(y), kernel_size=2, loss="logistic", solver="al", patterns=50)
    with pytest.raises(ValueError, match="bad solver_options"):
        get_solver("fista", nonsense=1)
    with pytest.raises(ValueError, match="threads"):
        FISTA(threads=0).solve(tiny[1])


@pytest.mark.slow
def test_digits_200_matches_exact() -> None:
    """200 digits 3-vs-8, 3×3 kernel, stride 2, ~300 patterns, β = 1e-3: al (ReLU and gated)
    and fista (gated; ~130k iterations, ~50 s: σ₁²/σ₂² ≈ 80 here, so this needs the rank-one
    metric) agree with CVXPY to 1e-6 and the network reproduces the objective (CVXPY takes
    ~90 s here)."""
    data = convexcnn.data.load_dataset("digits", classes=(3, 8))
    X, y = data.X_train[:200], data.y_train[:200]
    patterns = sample_patterns(X, PatchSpec(3, stride=2), 300, seed=0)
    for gated in (False, True):
        problem = build(X, y, kernel_size=3, stride=2, beta=1e-3, patterns=patterns, gated=gated)
        exact = ExactSolver().solve(problem).objective
        check_exact_match(problem, AugmentedLagrangian().solve(problem), exact)
        if gated:
            check_exact_match(problem, FISTA(max_iter=400_000).solve(problem), exact)
