"""Exact (interior-point / conic) solves through CVXPY: the reference for small problems.

The program is built from the problem object's ``cvxpy_program`` hook (objective + constraints,
CVXPY's own data model). Clarabel by default; SCS as fallback; MOSEK when requested and licensed.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..problems.base import ConvexProblem
from .result import ConvexSolution, History

__all__ = ["MAX_CONSTRAINT_ROWS", "ExactSolver", "ProblemTooLargeError"]

#: Beyond this many cone-constraint rows an interior-point solve will not finish here.
MAX_CONSTRAINT_ROWS = 2_000_000


class ProblemTooLargeError(ValueError):
    """The exact solver refuses a program too large to finish; the message names the knobs."""


@dataclass
class ExactSolver:
    """CVXPY solve of a :class:`ConvexProblem`.

    Args:
        solver: "CLARABEL" (default), "SCS" or "MOSEK".
        fallback: try SCS when the first solver fails.
        max_constraint_rows: refuse larger programs before building them.
        verbose: print the conic solver's log.
    """

    solver: str = "CLARABEL"
    fallback: bool = True
    max_constraint_rows: int = MAX_CONSTRAINT_ROWS
    verbose: bool = False
    name: str = "exact"

    def check_size(self, problem: ConvexProblem) -> dict[str, int]:
        size = problem.cvxpy_size()
        if size["constraint_rows"] > self.max_constraint_rows:
            raise ProblemTooLargeError(
                f"the exact program has {size['constraint_rows']:,} cone-constraint rows, "
                f"{size['variables']:,} variables and ~{size['nonzeros']:,} nonzeros "
                f"(limit {self.max_constraint_rows:,} rows): an interior-point solve would "
                "not finish. Use solver='al' (first-order, exact constraints) or "
                "solver='auto', fewer patterns, fewer samples, or a larger stride."
            )
        return size

    def solve(
        self, problem: ConvexProblem, warm_start: torch.Tensor | None = None
    ) -> ConvexSolution:
        import cvxpy as cp

        size = self.check_size(problem)
        start = time.perf_counter()
        dim = int(np.prod(problem.variable_shape))
        w = cp.Variable(dim)
        prediction, regularizer, constraints = problem.cvxpy_program(w)
        Y = problem.targets.detach().cpu().numpy()
        objective = problem.loss.cvxpy(prediction, Y) + regularizer
        program = cp.Problem(cp.Minimize(objective), constraints)
        build_time = time.perf_counter() - start
        order = [self.solver] + (["SCS"] if self.fallback and self.solver != "SCS" else [])
        status, used, errors = "not solved", self.solver, []
        for name in order:
            try:
                with warnings.catch_warnings():  # the status says it; no stray warning
                    warnings.simplefilter("ignore", UserWarning)
                    program.solve(solver=name, verbose=self.verbose, **_solver_options(name))
                status, used = program.status, name
                if status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
                    break
            except (cp.SolverError, ValueError) as err:  # solver missing or failed
                errors.append(f"{name}: {err}")
        if w.value is None:
            raise RuntimeError(
                f"CVXPY could not solve the program (status {status!r}; {'; '.join(errors)})"
            )
        W = torch.as_tensor(np.asarray(w.value), dtype=problem.targets.dtype).reshape(
            problem.variable_shape
        )
        elapsed = time.perf_counter() - start
        value = problem.objective(W)
        violation = problem.max_violation(W)
        history = History()
        history.record(objective=value, gap=float("nan"), violation=violation, time=elapsed)
        duals = [
            np.asarray(con.dual_value) if con.dual_value is not None else None
            for con in constraints
        ]
        info: dict[str, Any] = {
            "solver": used,
            "cvxpy_status": status,
            "cvxpy_value": float(program.value) if program.value is not None else float("nan"),
            "build_time": build_time,
            "size": size,
            "errors": errors,
        }
        multipliers = None
        if duals and duals[0] is not None:
            g = problem.constraint(W)
            if g is not None:
                multipliers = torch.as_tensor(duals[0], dtype=W.dtype).reshape(g.shape)
        return ConvexSolution(
            W=W,
            status="optimal" if status == cp.OPTIMAL else str(status),
            objective=value,
            max_violation=violation,
            solve_time=elapsed,
            history=history,
            multipliers=multipliers,
            info=info,
        )


def _solver_options(name: str) -> dict[str, Any]:
    if name == "CLARABEL":
        return {"tol_gap_abs": 1e-9, "tol_gap_rel": 1e-9, "tol_feas": 1e-9, "max_iter": 500}
    if name == "SCS":
        return {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 200_000}
    return {}
