"""Solvers for :class:`~convexcnn.problems.base.ConvexProblem` programs."""

from .exact import ExactSolver, ProblemTooLargeError
from .result import ConvexSolution, History

__all__ = ["ConvexSolution", "ExactSolver", "History", "ProblemTooLargeError", "get_solver"]


def get_solver(name: str, **options: object) -> object:
    """A solver object by name ("exact"; first-order solvers register here too)."""
    if name == "exact":
        return ExactSolver(**options)  # type: ignore[arg-type]
    raise ValueError(f"solver must be one of ['exact']; got {name!r}")
