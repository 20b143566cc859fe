"""Pattern growth (column generation): from a poor pattern set to the certified optimum."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pytest
import torch

from convexcnn import PatchSpec, PatternSet, fit
from convexcnn.growth import GrowthRound, grow_patterns
from convexcnn.solvers import ExactSolver
from test_certificate import _instance


def _poor_patterns(X: np.ndarray, spec: PatchSpec, seed: int) -> PatternSet:
    """Three Gaussian generator filters' patterns."""
    h = PatternSet.enumerate(X, spec).filter_size
    filters = torch.randn(
        (3, h), generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return PatternSet.from_filters(X, spec, filters)


def _check_growth_closes_gap(i: int) -> None:
    X, y, spec, beta = _instance(i)
    kernel = spec.kernel_size
    optimum = fit(X, y, beta=beta, kernel_size=kernel, patterns="enumerate").network_objective
    poor = fit(X, y, beta=beta, kernel_size=kernel, patterns=_poor_patterns(X, spec, i))
    assert poor.certificate.scope.startswith("searched")
    assert poor.certificate.gap > 1e-3 * abs(optimum)  # the 3-pattern fit is visibly not optimal
    assert poor.certificate.lower_bound <= optimum + 1e-9
    grown = fit(
        X,
        y,
        beta=beta,
        kernel_size=kernel,
        patterns=_poor_patterns(X, spec, i),
        grow_patterns=True,
        growth_rounds=15,
        seed=i,
    )
    history = grown.growth_history
    assert history is not None and len(history) >= 2
    assert history[0]["network_objective"] == pytest.approx(poor.network_objective, rel=1e-7)
    counts = [r["n_patterns"] for r in history]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    objectives = [r["objective"] for r in history]
    assert all(b <= a + 1e-7 * abs(a) for a, b in pairwise(objectives))
    assert grown.network_objective <= optimum * (1 + 1e-6)
    assert grown.network_objective >= optimum * (1 - 1e-6)  # nothing beats the proved optimum
    assert grown.certificate.relative_gap <= 1e-6, grown.certificate
    assert history[-1]["added"] == 0


@pytest.mark.parametrize("i", [0, 1, 2])
def test_growth_from_three_patterns_reaches_enumerated_optimum(i: int) -> None:
    _check_growth_closes_gap(i)


@pytest.mark.slow
@pytest.mark.parametrize("i", range(3, 24))
def test_growth_from_three_patterns_reaches_enumerated_optimum_many(i: int) -> None:
    _check_growth_closes_gap(i)


def test_embed_solution_and_grown() -> None:
    X, y, spec, beta = _instance(0)
    res = fit(X, y, beta=beta, kernel_size=2, patterns=_poor_patterns(X, spec, 0))
    problem = res.problem
    more = problem.grown(torch.randn((5, 2), generator=torch.Generator().manual_seed(1)).double())
    assert len(more.patterns) > len(problem.patterns)
    assert torch.equal(more.masks[: problem.P], problem.masks)
    W = more.embed_solution(res.solution.W, problem)
    assert W.shape == more.variable_shape
    assert more.objective(W) == pytest.approx(problem.objective(res.solution.W), rel=1e-12)
    same = problem.grown(problem.patterns.filters)  # nothing new
    assert len(same.patterns) == len(problem.patterns)
    other = fit(X, y, beta=beta, kernel_size=2, patterns=_poor_patterns(X, spec, 5)).problem
    with pytest.raises(ValueError, match="prefix"):
        more.embed_solution(other.zeros(), other)


class _RecordingSolver:
    """Exact solver that records the warm starts it is handed."""

    def __init__(self) -> None:
        self.inner = ExactSolver()
        self.warm: list[Any] = []

    def solve(self, problem: Any, warm_start: torch.Tensor | None = None) -> Any:
        self.warm.append(None if warm_start is None else tuple(warm_start.shape))
        return self.inner.solve(problem)


def test_budget_warm_start_and_history() -> None:
    X, y, spec, beta = _instance(1)
    res = fit(X, y, beta=beta, kernel_size=3, patterns=_poor_patterns(X, spec, 1))
    solver = _RecordingSolver()
    out = grow_patterns(res.problem, solver, rounds=1, per_round=2, seed=0)
    assert len(out.history) == 2 and isinstance(out.history[0], GrowthRound)
    assert solver.warm[0] is None
    # the previous solution, zero-padded to the grown program's shape
    assert solver.warm[1] == (1, 2, len(res.patterns) + out.history[0].added, 3)
    assert out.history[0].added <= 2
    assert out.history[1].n_patterns == out.history[0].n_patterns + out.history[0].added
    assert not out.converged  # two rounds cannot reach the optimum from 3 patterns here
    assert out.certificate.gap > 0
    row = out.history[0].as_dict()
    assert {"n_patterns", "gap", "objective", "network_objective"} <= set(row)
    capped = grow_patterns(res.problem, ExactSolver(), rounds=5, per_round=3, max_patterns=5)
    assert capped.history[-1].n_patterns <= 5


def test_growth_stops_at_once_on_complete_sets() -> None:
    X, y, _, beta = _instance(0)
    res = fit(X, y, beta=beta, kernel_size=2, patterns="enumerate", grow_patterns=True)
    assert res.growth_history is not None and len(res.growth_history) == 1
    assert res.certificate.is_proof


def test_growth_rejects_bad_arguments() -> None:
    X, y, _, beta = _instance(0)
    problem = fit(X, y, beta=beta, kernel_size=2, patterns=5, certificate_starts=0).problem
    bad: list[dict[str, Any]] = [
        {"rounds": -1},
        {"per_round": 0},
        {"starts": 0},
        {"tol": -1.0},
        {"confirm_factor": 0},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError, match="growth"):
            grow_patterns(problem, ExactSolver(), **kwargs)  # type: ignore[arg-type]


def test_growth_refuses_programs_without_a_search(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y, _, beta = _instance(0)
    problem = fit(X, y, beta=beta, kernel_size=2, patterns=5, certificate_starts=0).problem

    def no_search(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("no search here")

    monkeypatch.setattr(problem, "search_violations", no_search)
    with pytest.raises(ValueError, match="violating-filter search"):
        grow_patterns(problem, ExactSolver(), rounds=2)
