"""``solver="auto"``: the exact interior-point solve for tiny programs, first-order otherwise.

:func:`convexcnn.fit` builds the solver before the problem exists, so the choice is made in
:meth:`AutoSolver.solve` from the problem itself:

1. ``cvxpy_size()`` within ``exact_max_rows`` constraint rows and ``exact_max_variables``
   variables → :class:`~convexcnn.solvers.exact.ExactSolver`;
2. squared loss, cone constraints with per-block projections and at most
   ``working_set_max_variables`` variables →
   :class:`~convexcnn.solvers.working_set.WorkingSetSolver` (measured here: P1, 100 images and
   900 variables, 1.2 s against 12 s for ``al``; max pooling on 249 images, 1800 variables, 8 s
   against > 300 s for ``al``; at 5400 variables ``al`` was faster, 22 s against 55 s);
3. squared loss and per-block operators → :class:`~convexcnn.solvers.al.AugmentedLagrangian`
   (semismooth Newton; gated or cone-constrained);
4. otherwise → :class:`~convexcnn.solvers.fista.FISTA` (unconstrained, or cone-constrained with
   per-block projections), else the augmented Lagrangian, which hands constrained programs
   without a per-block prox (circular) to :class:`~convexcnn.solvers.admm.ADMM`.

When the first-order solver stops without a certificate (e.g. its time limit) and the program
fits the exact solver's size limit, the exact solver finishes the job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..losses import SquaredLoss
from ..problems.base import ConvexProblem
from .al import AugmentedLagrangian
from .cones import supports_cone_prox
from .exact import ExactSolver
from .fista import FISTA
from .result import ConvexSolution
from .working_set import WorkingSetSolver

__all__ = ["AutoSolver"]


@dataclass
class AutoSolver:
    """Pick a solver per problem (module docstring); ``tol``/``time_limit``/``verbose`` are
    passed to the first-order solvers."""

    tol: float | None = None
    time_limit: float | None = None
    verbose: bool = False
    exact_max_rows: int = 20_000
    exact_max_variables: int = 5_000
    working_set_max_variables: int = 2_500
    name: str = field(default="auto", init=False)

    def choose(self, problem: ConvexProblem) -> Any:
        """The solver object ``solve`` would use for ``problem``."""
        try:
            size = problem.cvxpy_size()
        except NotImplementedError:
            size = None
        if (
            size is not None
            and size["constraint_rows"] <= self.exact_max_rows
            and size["variables"] <= self.exact_max_variables
        ):
            return ExactSolver(verbose=self.verbose)
        ops = getattr(problem, "operators", None)
        has_maps = hasattr(ops, "block_maps")
        constrained_ok = not problem.has_constraints or supports_cone_prox(problem)
        squared = isinstance(problem.loss, SquaredLoss)
        n_variables = math.prod(problem.variable_shape)
        if (
            squared
            and problem.has_constraints
            and constrained_ok
            and n_variables <= self.working_set_max_variables
        ):
            return WorkingSetSolver(tol=self.tol, time_limit=self.time_limit, verbose=self.verbose)
        if isinstance(problem.loss, SquaredLoss) and has_maps and constrained_ok:
            return AugmentedLagrangian(
                tol=self.tol, time_limit=self.time_limit, verbose=self.verbose
            )
        if constrained_ok:
            return FISTA(tol=self.tol, time_limit=self.time_limit, verbose=self.verbose)
        return AugmentedLagrangian(tol=self.tol, time_limit=self.time_limit, verbose=self.verbose)

    def solve(self, problem: ConvexProblem, warm_start: Any = None) -> ConvexSolution:
        """Solve with :meth:`choose`'s solver; when a first-order solver ends without a
        certificate ("optimal") and the exact program is within the exact solver's size
        limit, solve it exactly as well and return the better-certified of the two."""
        solver = self.choose(problem)
        solution: ConvexSolution = solver.solve(problem, warm_start)
        solution.info["auto_choice"] = solver.name
        if solution.status == "optimal" or isinstance(solver, ExactSolver):
            return solution
        exact = ExactSolver(verbose=self.verbose)
        try:
            exact.check_size(problem)
        except (ValueError, NotImplementedError):
            return solution
        fallback: ConvexSolution = exact.solve(problem)
        fallback.info["auto_choice"] = f"{solver.name}, then exact"
        fallback.info["first_order"] = {
            "status": solution.status,
            "objective": solution.objective,
            "gap": solution.info.get("gap"),
            "solve_time": solution.solve_time,
        }
        fallback.solve_time += solution.solve_time
        return fallback
