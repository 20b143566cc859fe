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

    # ----- certificate and pattern-growth hooks (convexcnn.certificate / growth) ----------
    # Blocks: the leading axes of W such that W[b] is one group of the regularizer and
    # 𝒢(W)[b] depends on W[b] only. Programs that do not implement a hook raise
    # NotImplementedError; the certificate then falls back to what the protocol gives.
    def block_dual_norms(self, G: torch.Tensor) -> torch.Tensor:
        """Per-block ρ°(G[b]) (shape = the block axes); ``dual_norm(G)`` is their max."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its blocks")

    def block_constraint_matrix(self, index: tuple[int, ...]) -> torch.Tensor:
        """G_b with vec(𝒢(W)[b]) = G_b · vec(W[b]) for block ``index``, shape (rows, size).

        The certificate minimizes ‖z_b + G_bᵀλ‖₂ over λ ≥ 0 by NNLS and evaluates the block's
        ρ° there: exact when ρ°_b is Euclidean (group ℓ2), a valid upper bound otherwise."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its blocks")

    @property
    def patterns_complete(self) -> bool:
        """True when the program holds every activation pattern of the data (exact
        enumeration): then dual feasibility over its blocks is feasibility over all filters."""
        return False

    def search_violations(
        self, V: torch.Tensor, *, starts: int = 64, steps: int = 100, seed: int = 0
    ) -> Any:
        """Search filters beyond the current patterns for max |vᵀ g(X; u)| (dual feasibility
        over *all* filters); returns a :class:`convexcnn.certificate.FilterSearch`."""
        raise NotImplementedError(
            f"{type(self).__name__} has no violating-filter search; certificates for it "
            "cover the current patterns only"
        )

    def with_patterns(self, patterns: Any) -> ConvexProblem:
        """The same program on another pattern set (same data, loss, β)."""
        raise NotImplementedError(f"{type(self).__name__} does not support pattern growth")

    def grown(self, filters: torch.Tensor) -> ConvexProblem:
        """The program with the patterns of ``filters`` (m, h) added (column generation)."""
        raise NotImplementedError(f"{type(self).__name__} does not support pattern growth")

    def embed_solution(self, W: torch.Tensor, source: ConvexProblem) -> torch.Tensor:
        """A solution W of ``source`` (whose patterns are a prefix of ours) as our variable."""
        raise NotImplementedError(f"{type(self).__name__} does not support pattern growth")

    # ----- exact-solver hooks ----------------------------------------------------------
    @abstractmethod
    def cvxpy_size(self) -> dict[str, int]:
        """Sizes of the CVXPY program: ``variables``, ``constraint_rows``, ``nonzeros``."""

    @abstractmethod
    def cvxpy_program(self, w: Any) -> tuple[Any, Any, list[Any]]:
        """(prediction (n, c) expression, regularizer expression, constraints) in the flat
        variable ``w`` of size prod(variable_shape), C (row-major) order."""
