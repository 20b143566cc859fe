"""Convex losses: value, gradient, Fenchel dual value and CVXPY form (SPEC §2.4, §9).

Every loss is a sum over samples of ``φ(F_t, Y_t)`` with predictions ``F ∈ R^{n×c}`` and targets
``Y ∈ R^{n×c}`` (c = 1 for scalar outputs; one-hot rows for cross-entropy). The dual value of a
point ``V ∈ R^{n×c}`` is ``−ℓ*(−V)``; the natural dual point of a prediction is ``V = −∇ℓ(F)``,
and scaling it by s ∈ [0, 1] keeps it in the conjugate's domain for every loss here.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

__all__ = [
    "LOSSES",
    "CrossEntropyLoss",
    "HuberLoss",
    "LogisticLoss",
    "Loss",
    "SquaredHingeLoss",
    "SquaredLoss",
    "get_loss",
]


def _xlogx(p: torch.Tensor) -> torch.Tensor:
    """p·log p with 0·log 0 = 0 (p ≥ 0)."""
    return torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))


class Loss(ABC):
    """A convex loss ℓ(F; Y) = Σ_t φ(F_t, Y_t)."""

    name: ClassVar[str]
    task: ClassVar[str]  # "regression" | "binary" | "multiclass"
    #: Lipschitz constant of ∇ℓ (for step sizes).
    smoothness: ClassVar[float]

    @abstractmethod
    def value(self, F: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """ℓ(F; Y), a scalar tensor."""

    @abstractmethod
    def gradient(self, F: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """∇_F ℓ(F; Y), shape (n, c)."""

    @abstractmethod
    def dual_value(self, V: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """−ℓ*(−V); −inf outside the conjugate's domain."""

    @abstractmethod
    def cvxpy(self, F: Any, Y: Any) -> Any:
        """The loss as a CVXPY expression of the (n, c) prediction expression F."""

    def dual_point(self, F: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """V = −∇ℓ(F): optimal dual variable when F is the optimal prediction."""
        return -self.gradient(F, Y)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SquaredLoss(Loss):
    """½‖F − Y‖²_F. Conjugate: −ℓ*(−V) = −½‖V‖² + ⟨V, Y⟩."""

    name = "squared"
    task = "regression"
    smoothness = 1.0

    def value(self, F: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((F - Y) ** 2).sum()

    def gradient(self, F: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        return F - Y

    def dual_value(self, V: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        return -0.5 * (V**2).sum() + (V * Y).sum()

    def cvxpy(self, F: Any, Y: Any) -> Any:
        import cvxpy as cp

        return 0.5 * cp.sum_squares(F - Y)


class LogisticLoss(Loss):
    """Σ log(1 + exp(−y f)) for y = ±1.

    With a = v·y ∈ [0,1]: −ℓ*(−v) = −Σ[a log a + (1−a)log(1−a)].
    """

    name = "logistic"
    task = "binary"
    smoothness = 0.25

    def value(self, F: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softplus(-Y * F).sum()

    def gradient(self, F: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        return -Y * torch.sigmoid(-Y * F)

    def dual_value(self, V: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        a = V * Y
        if bool(((a < -1e-12) | (a > 1 + 1e-12)).any()):
            return torch.tensor(-math.inf, dtype=V.dtype)
        a = a.clamp(0.0, 1.0)
        return -(_xlogx(a) + _xlogx(1 - a)).sum()

    def cvxpy(self, F: Any, Y: Any) -> Any:
        import cvxpy as cp

        return cp.sum(cp.logistic(-cp.multiply(Y, F)))


class CrossEntropyLoss(Loss):
    """Σ_t [logsumexp(F_t) − ⟨F_t, Y_t⟩], Y one-hot.

    −ℓ*(−V) = −Σ p log p with P = Y − V ∈ simplex.
    """

    name = "cross_entropy"
    task = "multiclass"
    smoothness = 0.5

    def value(self, F: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        return (torch.logsumexp(F, dim=1) - (F * Y).sum(dim=1)).sum()

    def gradient(self, F: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        return torch.softmax(F, dim=1) - Y

    def dual_value(self, V: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        P = Y - V
        if bool((P < -1e-12).any()) or bool(((P.sum(dim=1) - 1).abs() > 1e-9).any()):
            return torch.tensor(-math.inf, dtype=V.dtype)
        return -_xlogx(P.clamp_min(0.0)).sum()

    def cvxpy(self, F: Any, Y: Any) -> Any:
        import cvxpy as cp

        return cp.sum(cp.log_sum_exp(F, axis=1)) - cp.sum(cp.multiply(Y, F))


class SquaredHingeLoss(Loss):
    """½Σ(1 − y f)_+² for y = ±1. With b = v·y ≥ 0: −ℓ*(−v) = Σ (b − ½b²)."""

    name = "squared_hinge"
    task = "binary"
    smoothness = 1.0

    def value(self, F: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((1 - Y * F).clamp_min(0) ** 2).sum()

    def gradient(self, F: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        return -Y * (1 - Y * F).clamp_min(0)

    def dual_value(self, V: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        b = V * Y
        if bool((b < -1e-12).any()):
            return torch.tensor(-math.inf, dtype=V.dtype)
        b = b.clamp_min(0)
        return (b - 0.5 * b**2).sum()

    def cvxpy(self, F: Any, Y: Any) -> Any:
        import cvxpy as cp

        return 0.5 * cp.sum_squares(cp.pos(1 - cp.multiply(Y, F)))


class HuberLoss(Loss):
    """Σ H_δ(f − y), H_δ(r) = ½r² (|r| ≤ δ), δ|r| − ½δ² otherwise.

    −ℓ*(−V) = Σ(−½v² + v·y) for |v| ≤ δ.
    """

    name = "huber"
    task = "regression"
    smoothness = 1.0

    def __init__(self, delta: float = 1.0) -> None:
        if not delta > 0:
            raise ValueError(f"huber delta must be > 0, got {delta!r}")
        self.delta = float(delta)

    def value(self, F: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        r = (F - Y).abs()
        d = self.delta
        return torch.where(r <= d, 0.5 * r**2, d * r - 0.5 * d * d).sum()

    def gradient(self, F: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        return (F - Y).clamp(-self.delta, self.delta)

    def dual_value(self, V: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        if bool((V.abs() > self.delta * (1 + 1e-12)).any()):
            return torch.tensor(-math.inf, dtype=V.dtype)
        return (-0.5 * V**2 + V * Y).sum()

    def cvxpy(self, F: Any, Y: Any) -> Any:
        import cvxpy as cp

        return 0.5 * cp.sum(cp.huber(F - Y, self.delta))  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"HuberLoss(delta={self.delta})"


LOSSES: dict[str, type[Loss]] = {
    cls.name: cls
    for cls in (SquaredLoss, LogisticLoss, CrossEntropyLoss, SquaredHingeLoss, HuberLoss)
}


def get_loss(loss: str | Loss) -> Loss:
    """A :class:`Loss` from its name ("squared", "logistic", "cross_entropy", "squared_hinge",
    "huber") or an instance."""
    if isinstance(loss, Loss):
        return loss
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}; got {loss!r}")
    return LOSSES[loss]()
