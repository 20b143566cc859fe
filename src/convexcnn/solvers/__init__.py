"""Solvers for :class:`~convexcnn.problems.base.ConvexProblem` programs.

Every solver is a small configuration object with ``solve(problem, warm_start=None) ->
ConvexSolution``. :func:`get_solver` maps ``fit(solver=...)`` names to them.
"""

from __future__ import annotations

from typing import Any

from .admm import ADMM
from .al import AugmentedLagrangian
from .auto import AutoSolver
from .exact import ExactSolver, ProblemTooLargeError
from .fista import FISTA
from .result import ConvexSolution, History
from .stopping import DualityGap, GradientMapping, MaxIterations, StoppingRule, TimeLimit
from .working_set import WorkingSetSolver

__all__ = [
    "ADMM",
    "FISTA",
    "SOLVERS",
    "AugmentedLagrangian",
    "AutoSolver",
    "ConvexSolution",
    "DualityGap",
    "ExactSolver",
    "GradientMapping",
    "History",
    "MaxIterations",
    "ProblemTooLargeError",
    "StoppingRule",
    "TimeLimit",
    "WorkingSetSolver",
    "get_solver",
]

#: name → solver class. First-order solvers register here.
SOLVERS: dict[str, Any] = {
    "exact": ExactSolver,
    "fista": FISTA,
    "al": AugmentedLagrangian,
    "admm": ADMM,
    "working_set": WorkingSetSolver,
    "auto": AutoSolver,
}


def get_solver(name: str, **options: Any) -> Any:
    """A solver object by name with its options; a clear error for unknown names/options."""
    if name not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}; got {name!r}")
    try:
        return SOLVERS[name](**options)
    except TypeError as err:
        raise ValueError(f"bad solver_options for solver={name!r}: {err}") from None
