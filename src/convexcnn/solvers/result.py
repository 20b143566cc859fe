"""What every solver returns: the solution, its status, and a uniform per-iteration history."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["ConvexSolution", "History"]


@dataclass
class History:
    """Per-iteration records, the same for every solver: objective, relative duality gap
    (NaN when not computed), max constraint violation, elapsed seconds, plus solver extras."""

    objective: list[float] = field(default_factory=list)
    gap: list[float] = field(default_factory=list)
    violation: list[float] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)

    def record(
        self, *, objective: float, gap: float, violation: float, time: float, **extra: float
    ) -> None:
        self.objective.append(float(objective))
        self.gap.append(float(gap))
        self.violation.append(float(violation))
        self.time.append(float(time))
        for key, value in extra.items():
            self.extra.setdefault(key, []).append(float(value))

    def __len__(self) -> int:
        return len(self.objective)

    def as_dict(self) -> dict[str, list[float]]:
        out = {
            "objective": self.objective,
            "gap": self.gap,
            "violation": self.violation,
            "time": self.time,
        }
        out.update(self.extra)
        return out


@dataclass
class ConvexSolution:
    """A solver's answer: W (problem.variable_shape), status ("optimal" when the solver's own
    stopping rule was met), the convex objective at W, its constraint violation, and history.

    ``multipliers`` (shaped like problem.constraint(W)) are the cone-constraint multipliers
    when the solver has them; certificates use them.
    """

    W: torch.Tensor
    status: str
    objective: float
    max_violation: float
    solve_time: float
    history: History
    multipliers: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return self.status == "optimal"
