"""Composable stopping rules for the iterative solvers.

A solver fills an :class:`IterationState` and asks its rule; a rule answers None (go on) or the
reason to stop, which becomes the solution's ``status``. Rules combine with ``|`` (stop when any
fires)::

    rule = DualityGap(1e-6) | MaxIterations(10_000) | TimeLimit(60.0)

Only :class:`DualityGap` answers ``"optimal"``: the relative duality gap (SPEC §2.4)
``(objective − lower_bound) / |objective|`` over the current program is at most ``tol``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

__all__ = [
    "AnyOf",
    "DualityGap",
    "GradientMapping",
    "IterationState",
    "MaxIterations",
    "StoppingRule",
    "TimeLimit",
    "default_rule",
]


@dataclass
class IterationState:
    """What a solver knows after an iteration (NaN where not computed this iteration).

    ``gap`` is relative, ``gradient_mapping`` is the largest block norm of the prox-gradient
    mapping ``L·(x⁺ − y)`` divided by β (dimensionless), ``violation`` the largest constraint
    violation of the current iterate.
    """

    iteration: int
    elapsed: float
    objective: float = math.nan
    gap: float = math.nan
    gradient_mapping: float = math.nan
    violation: float = 0.0


class StoppingRule(ABC):
    """Decides whether to stop; returns the reason (a status string) or None."""

    @abstractmethod
    def check(self, state: IterationState) -> str | None: ...

    def __or__(self, other: StoppingRule) -> AnyOf:
        return AnyOf((self, other))


@dataclass(frozen=True)
class AnyOf(StoppingRule):
    """Stop when any of ``rules`` fires (first in order wins)."""

    rules: tuple[StoppingRule, ...]

    def check(self, state: IterationState) -> str | None:
        for rule in self.rules:
            reason = rule.check(state)
            if reason is not None:
                return reason
        return None

    def __or__(self, other: StoppingRule) -> AnyOf:
        return AnyOf((*self.rules, other))

    def find(self, kind: type[StoppingRule]) -> StoppingRule | None:
        """The first rule of type ``kind``, if any."""
        for rule in self.rules:
            if isinstance(rule, kind):
                return rule
        return None


@dataclass(frozen=True)
class DualityGap(StoppingRule):
    """|relative duality gap| ≤ ``tol`` with violation ≤ ``max_violation`` → "optimal" (a gap
    below −tol can only come from an infeasible iterate and never counts)."""

    tol: float = 1e-6
    max_violation: float = math.inf

    def check(self, state: IterationState) -> str | None:
        if abs(state.gap) <= self.tol and state.violation <= self.max_violation:
            return "optimal"
        return None


@dataclass(frozen=True)
class GradientMapping(StoppingRule):
    """Scaled prox-gradient mapping ≤ ``tol`` → "stationary" (not a certificate)."""

    tol: float = 1e-8

    def check(self, state: IterationState) -> str | None:
        return "stationary" if state.gradient_mapping <= self.tol else None


@dataclass(frozen=True)
class MaxIterations(StoppingRule):
    """``iteration + 1 ≥ max_iter`` → "max_iter"."""

    max_iter: int = 10_000

    def check(self, state: IterationState) -> str | None:
        return "max_iter" if state.iteration + 1 >= self.max_iter else None


@dataclass(frozen=True)
class TimeLimit(StoppingRule):
    """``elapsed ≥ seconds`` → "time_limit"."""

    seconds: float = math.inf

    def check(self, state: IterationState) -> str | None:
        return "time_limit" if state.elapsed >= self.seconds else None


def default_rule(tol: float, max_iter: int, time_limit: float | None) -> AnyOf:
    """DualityGap(tol) | MaxIterations(max_iter) | TimeLimit(time_limit)."""
    rule = DualityGap(tol) | MaxIterations(max_iter)
    if time_limit is not None:
        rule = rule | TimeLimit(time_limit)
    return rule
