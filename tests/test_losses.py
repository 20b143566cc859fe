"""Losses: gradients vs autograd, Fenchel dual values (Fenchel–Young), CVXPY forms."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

from convexcnn.losses import LOSSES, get_loss


def _targets(name: str, gen: torch.Generator) -> torch.Tensor:
    if name in ("logistic", "squared_hinge"):
        return torch.where(torch.rand(7, 1, generator=gen) > 0.5, 1.0, -1.0).double()
    if name == "cross_entropy":
        return torch.eye(3, dtype=torch.float64)[torch.randint(0, 3, (7,), generator=gen)]
    return torch.randn(7, 2, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_matches_autograd(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    loss = get_loss(name)
    Y = _targets(name, gen)
    F = (2 * torch.randn(Y.shape, generator=gen, dtype=torch.float64)).requires_grad_()
    loss.value(F, Y).backward()
    torch.testing.assert_close(loss.gradient(F.detach(), Y), F.grad)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_fenchel_young_equality_at_dual_point(name: str) -> None:
    """ℓ(F) + ℓ*(−V) = ⟨−V, F⟩ exactly when V = −∇ℓ(F); ≥ for any other scaled V."""
    gen = torch.Generator().manual_seed(1)
    loss = get_loss(name)
    Y = _targets(name, gen)
    F = torch.randn(Y.shape, generator=gen, dtype=torch.float64)
    V = loss.dual_point(F, Y)
    lhs = loss.value(F, Y) - loss.dual_value(V, Y)  # ℓ(F) + ℓ*(−V)
    assert float(lhs) == pytest.approx(float(-(V * F).sum()), abs=1e-9)
    for s in (0.0, 0.3, 0.9):
        # weak duality: ℓ(F) ≥ −ℓ*(−sV) − ⟨sV, F⟩ for every F
        bound = loss.dual_value(s * V, Y) - (s * V * F).sum()
        assert float(bound) <= float(loss.value(F, Y)) + 1e-12


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_cvxpy_form_matches_value(name: str) -> None:
    gen = torch.Generator().manual_seed(2)
    loss = get_loss(name)
    Y = _targets(name, gen)
    F = torch.randn(Y.shape, generator=gen, dtype=torch.float64)
    expr = loss.cvxpy(cp.Constant(F.numpy()), Y.numpy())
    assert float(expr.value) == pytest.approx(float(loss.value(F, Y)), rel=1e-9)


def test_unknown_loss() -> None:
    with pytest.raises(ValueError, match="loss must be one of"):
        get_loss("hinge")
    assert np.isinf(float(get_loss("logistic").dual_value(torch.tensor([[2.0]]), torch.ones(1, 1))))
