"""The convex-problem protocol every architecture implements (DESIGN: one idea).

A problem is "objective + constraints" over one variable tensor ``W`` of shape
``variable_shape``:

    minimize  ℓ(predict(W); Y) + regularizer(W)
    subject to constraint(W) ≥ 0   (elementwise; absent for unconstrained programs)

with linear ``predict``/``constraint`` maps and their adjoints, a regularizer with a cheap prox,
and ``recover`` mapping a solution to the equivalent non-convex torch network. Solvers
(:mod:`convexcnn.solvers`) only see this protocol; the exact CVXPY solver additionally uses the
``cvxpy_*`` hooks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from ..losses import Loss

__all__ = ["ConvexProblem", "RecoveredNetwork"]


@dataclass
class RecoveredNetwork:
    """A torch network equivalent to a convex solution, with its training objective.

    ``objective`` is computed by running ``module`` on the training data (loss + the
    architecture's weight penalty), never copied from the convex program.
    """

    module: torch.nn.Module
    objective: float
    n_branches: int
    info: dict[str, Any] = field(default_factory=dict)


class ConvexProblem(ABC):
    """Protocol of a convex training program. Shapes: targets Y (n, c); W ``variable_shape``."""

    loss: Loss
    targets: torch.Tensor
    beta: float

    # ----- linear maps -------------------------------------------------------------------
    @property
    @abstractmethod
    def variable_shape(self) -> tuple[int, ...]:
        """Shape of the optimization variable W."""

    @abstractmethod
    def predict(self, W: torch.Tensor) -> torch.Tensor:
        """Predictions F = 𝒜(W), shape (n, c)."""

    @abstractmethod
    def predict_adjoint(self, R: torch.Tensor) -> torch.Tensor:
        """𝒜ᵀ(R) for R of shape (n, c), shape ``variable_shape``."""

    def constraint(self, W: torch.Tensor) -> torch.Tensor | None:
        """𝒢(W), which must be ≥ 0 elementwise; None for unconstrained programs."""
        return None

    def constraint_adjoint(self, L: torch.Tensor) -> torch.Tensor:
        """𝒢ᵀ(L) for multipliers L shaped like 𝒢(W)."""
        raise NotImplementedError(f"{type(self).__name__} has no constraints")

    @property
    def has_constraints(self) -> bool:
        return False

    # ----- regularizer ------------------------------------------------------------------
    @abstractmethod
    def regularizer(self, W: torch.Tensor) -> torch.Tensor:
        """β·ρ(W), a scalar tensor."""

    @abstractmethod
    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        """argmin_Z ½‖Z − W‖² + step·β·ρ(Z)."""

    @abstractmethod
    def dual_norm(self, G: torch.Tensor) -> torch.Tensor:
        """ρ°(G): the dual norm of the regularizer's gauge, scalar (for dual feasibility)."""

    # ----- objective --------------------------------------------------------------------
    def loss_value(self, W: torch.Tensor) -> torch.Tensor:
        return self.loss.value(self.predict(W), self.targets)

    def objective(self, W: torch.Tensor) -> float:
        """ℓ(𝒜W; Y) + β·ρ(W) (constraints not checked)."""
        return float(self.loss_value(W) + self.regularizer(W))

    def max_violation(self, W: torch.Tensor) -> float:
        """max(0, −min 𝒢(W)): the largest constraint violation (0 when unconstrained)."""
        g = self.constraint(W)
        if g is None or g.numel() == 0:
            return 0.0
        return float((-g).clamp_min(0).max())

    def zeros(self) -> torch.Tensor:
        return torch.zeros(self.variable_shape, dtype=self.targets.dtype)

    # ----- recovery ---------------------------------------------------------------------
    @abstractmethod
    def recover(self, W: torch.Tensor) -> RecoveredNetwork:
        """The equivalent non-convex torch network of a solution W."""

    # ----- exact-solver hooks ----------------------------------------------------------
    @abstractmethod
    def cvxpy_size(self) -> dict[str, int]:
        """Sizes of the CVXPY program: ``variables``, ``constraint_rows``, ``nonzeros``."""

    @abstractmethod
    def cvxpy_program(self, w: Any) -> tuple[Any, Any, list[Any]]:
        """(prediction (n, c) expression, regularizer expression, constraints) in the flat
        variable ``w`` of size prod(variable_shape), C (row-major) order."""
