"""Solvers for :class:`~convexcnn.problems.base.ConvexProblem` programs.

Every solver is a small configuration object with ``solve(problem, warm_start=None) ->
ConvexSolution``. :func:`get_solver` maps ``fit(solver=...)`` names to them.
"""

from __future__ import annotations

from typing import Any

from .exact import ExactSolver, ProblemTooLargeError
from .result import ConvexSolution, History

__all__ = [
    "SOLVERS",
    "ConvexSolution",
    "ExactSolver",
    "History",
    "ProblemTooLargeError",
    "get_solver",
]

#: name → solver class. First-order solvers register here.
SOLVERS: dict[str, Any] = {"exact": ExactSolver}


def get_solver(name: str, **options: Any) -> Any:
    """A solver object by name with its options; a clear error for unknown names/options."""
    if name not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}; got {name!r}")
    try:
        return SOLVERS[name](**options)
    except TypeError as err:
        raise ValueError(f"bad solver_options for solver={name!r}: {err}") from None
