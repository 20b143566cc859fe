"""Pattern growth (column generation) for sampled programs (SPEC §2.4, §10).

A program over a sampled pattern set is a restriction: its optimum upper-bounds the true one.
Growth alternates

    solve on the current patterns (warm start) → dual point V = −∇ℓ(𝒜Ŵ)
    → search filters u maximizing |vᵀ g(X; u)| → add the patterns of those with value > β(1+tol)

until the search finds no violating filter (then the restricted optimum is, up to the search's
reach, the global one) or the round budget is spent. Each round's certificate is recorded.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .certificate import Certificate, certify_solution
from .problems.base import ConvexProblem, RecoveredNetwork
from .solvers.result import ConvexSolution

__all__ = ["GrowthOutcome", "GrowthRound", "grow_patterns"]


@dataclass
class GrowthRound:
    """One solve + certificate of the growth loop."""

    round: int
    n_patterns: int
    objective: float  # convex objective on the current patterns
    network_objective: float  # the recovered network's own objective
    lower_bound: float
    gap: float
    relative_gap: float
    max_dual_ratio: float
    added: int  # patterns added after this round
    solve_time: float
    certificate_time: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GrowthOutcome:
    """Final program, solution, network and certificate of :func:`grow_patterns`.

    ``converged`` is True when the last search found no violating filter (or the pattern set
    was complete); ``history`` has one :class:`GrowthRound` per solve."""

    problem: ConvexProblem
    solution: ConvexSolution
    recovered: RecoveredNetwork
    certificate: Certificate
    converged: bool
    history: list[GrowthRound] = field(default_factory=list)


def _solve(solver: Any, problem: ConvexProblem, warm: torch.Tensor | None) -> ConvexSolution:
    if warm is not None and "warm_start" in inspect.signature(solver.solve).parameters:
        solution: ConvexSolution = solver.solve(problem, warm_start=warm)
        return solution
    solution = solver.solve(problem)
    return solution


def grow_patterns(
    problem: ConvexProblem,
    solver: Any,
    *,
    rounds: int = 10,
    starts: int = 64,
    steps: int = 100,
    per_round: int = 10,
    tol: float = 1e-6,
    seed: int = 0,
    max_patterns: int | None = None,
    confirm_factor: int = 4,
) -> GrowthOutcome:
    """Column generation on ``problem``'s patterns (module docstring).

    Args:
        problem: a program implementing ``search_violations`` and ``grown``.
        solver: an object with ``solve(problem[, warm_start])``.
        rounds: at most this many growth steps (``rounds + 1`` solves).
        starts, steps: filter search per round (:func:`convexcnn.certificate.search_filters`).
        per_round: at most this many new patterns per round (best violations first).
        tol: a filter violates when |vᵀg(u)| > β(1 + tol).
        seed: seeds the searches (round r uses seed + r).
        max_patterns: stop growing once the program has this many patterns.
        confirm_factor: when a search finds no violation, search once more from this many
            times the starts before stopping (1: no confirmation).
    """
    for name, value, low in (
        ("confirm_factor", confirm_factor, 1),
        ("rounds", rounds, 0),
        ("starts", starts, 1),
        ("per_round", per_round, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"growth {name} must be an integer ≥ {low}; got {value!r}")
    if not tol >= 0:
        raise ValueError(f"growth tol must be ≥ 0; got {tol!r}")
    history: list[GrowthRound] = []
    warm: torch.Tensor | None = None
    previous: ConvexProblem | None = None
    for r in range(rounds + 1):
        if previous is not None and warm is not None:
            warm = problem.embed_solution(warm, previous)
        solution = _solve(solver, problem, warm)
        recovered = problem.recover(solution.W)
        cert = certify_solution(
            problem,
            solution.W,
            upper_bound=recovered.objective,
            multipliers=solution.multipliers,
            starts=starts,
            steps=steps,
            seed=seed + r,
        )
        if cert.search is None and not problem.patterns_complete:
            raise ValueError(
                f"pattern growth needs a violating-filter search, which {type(problem).__name__} "
                "does not implement; use grow_patterns=False"
            )
        violating = (
            cert.search.violating(problem.beta, tol)
            if cert.search is not None
            else torch.zeros((0, 0))
        )
        if cert.search is not None and len(violating) == 0 and confirm_factor > 1:
            # before declaring convergence, search again from confirm_factor× more starts
            # (violating filters can have small basins of attraction)
            cert = certify_solution(
                problem,
                solution.W,
                upper_bound=recovered.objective,
                multipliers=solution.multipliers,
                starts=confirm_factor * starts,
                steps=steps,
                seed=seed + 7919 * (r + 1),
            )
            assert cert.search is not None
            violating = cert.search.violating(problem.beta, tol)
        n_now = _pattern_count(problem)
        room = per_round if max_patterns is None else min(per_round, max_patterns - n_now)
        done = problem.patterns_complete or len(violating) == 0
        grown: ConvexProblem | None = None
        if not done and r < rounds and room > 0:
            grown = problem.grown(violating[:room])
        added = 0 if grown is None else _pattern_count(grown) - n_now
        history.append(
            GrowthRound(
                round=r,
                n_patterns=n_now,
                objective=solution.objective,
                network_objective=recovered.objective,
                lower_bound=cert.lower_bound,
                gap=cert.gap,
                relative_gap=cert.relative_gap,
                max_dual_ratio=cert.max_dual_ratio,
                added=added,
                solve_time=solution.solve_time,
                certificate_time=float(cert.details.get("time", 0.0)),
            )
        )
        if grown is None or added == 0:
            return GrowthOutcome(problem, solution, recovered, cert, done, history)
        previous, warm, problem = problem, solution.W, grown
    raise AssertionError("unreachable")  # pragma: no cover


def _pattern_count(problem: ConvexProblem) -> int:
    patterns = getattr(problem, "patterns", None)
    return len(patterns) if patterns is not None else 0
