"""Linear CNNs (SPEC §6): ℓ2 (sum pooling), nuclear norm (flatten), spectral ℓ1 (circular).

Each program is checked against an independent CVXPY formulation written here from explicitly
extracted patches / a dense numpy DFT, against its recovered network's own objective, and
against 8 Adam restarts of the non-convex network.
"""

from __future__ import annotations

import math
from typing import Any

import cvxpy as cp
import numpy as np
import pytest
import torch

from convexcnn import fit
from convexcnn.losses import get_loss
from convexcnn.networks import LinearCircularCNN, LinearCNN, train_network
from convexcnn.problems.linear import nuclear_prox

REL = 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")


def instance(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.standard_normal(n)


def patches_1d(X: np.ndarray, h: int) -> np.ndarray:
    """(n, K, h): patch k of sample t is X[t, k:k+h] (stride 1, no padding)."""
    K = X.shape[1] - h + 1
    return np.stack([X[:, k : k + h] for k in range(K)], axis=1)


def solve(objective: Any) -> float:
    problem = cp.Problem(cp.Minimize(objective))
    problem.solve(solver="CLARABEL")
    return float(problem.value)


def loss_expr(name: str, pred: Any, y: np.ndarray) -> Any:
    if name == "squared":
        return 0.5 * cp.sum_squares(pred - y)
    return cp.sum(cp.logistic(-cp.multiply(y, pred)))


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_sum_pooling_is_an_l2_program(loss: str) -> None:
    X, y = instance(8, 6, 1)
    if loss == "logistic":
        y = np.where(y >= 0, 1.0, -1.0)
    beta = 0.3
    Xbar = patches_1d(X, 3).sum(axis=1)
    z = cp.Variable(3)
    reference = solve(loss_expr(loss, Xbar @ z, y) + beta * cp.norm(z, 2))
    result = fit(X, y, architecture="linear", pooling="sum", kernel_size=3, beta=beta, loss=loss)
    assert abs(result.objective - reference) <= REL * reference
    assert abs(result.network_objective - result.objective) <= REL * result.objective
    assert result.n_filters == 1
    assert isinstance(result.network, LinearCNN)


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_flatten_is_a_nuclear_norm_program(loss: str) -> None:
    X, y = instance(8, 6, 2)
    if loss == "logistic":
        y = np.where(y >= 0, 1.0, -1.0)
    beta = 0.2
    P = patches_1d(X, 3)  # (8, 4, 3)
    Z = cp.Variable((3, 4))
    pred = sum(P[:, k, :] @ Z[:, k] for k in range(4))
    reference = solve(loss_expr(loss, pred, y) + beta * cp.normNuc(Z))
    result = fit(
        X, y, architecture="linear", pooling="flatten", kernel_size=3, beta=beta, loss=loss
    )
    assert abs(result.objective - reference) <= REL * reference
    assert abs(result.network_objective - result.objective) <= REL * result.objective
    net = result.network
    # recovery from the SVD: balanced branches ‖u_i‖ = ‖w_i‖ = √σ_i
    u_norms = net.conv.weight.detach().flatten(1).norm(dim=1)
    w_norms = net.linear.weight.detach().reshape(result.n_filters, 4).norm(dim=1)
    np.testing.assert_allclose(u_norms.numpy(), w_norms.numpy(), rtol=1e-10)
    W = result.solution.W[0]
    sigma = torch.linalg.svdvals(W)
    assert result.n_filters == int((sigma > 1e-10 * sigma.max()).sum())


def test_flatten_multiclass_cross_entropy_on_shared_positions() -> None:
    rng = np.random.default_rng(4)
    X = rng.standard_normal((9, 6))
    labels = np.arange(9) % 3
    beta = 0.1
    P = patches_1d(X, 2)  # (9, 5, 2)
    Zs = [cp.Variable((2, 5)) for _ in range(3)]
    F = cp.vstack([sum(P[:, k, :] @ Z[:, k] for k in range(5)) for Z in Zs]).T
    Y = np.eye(3)[labels]
    ce = cp.sum(cp.log_sum_exp(F, axis=1)) - cp.sum(cp.multiply(Y, F))
    reference = solve(ce + beta * sum(cp.normNuc(Z) for Z in Zs))
    result = fit(
        X,
        labels,
        architecture="linear",
        pooling="flatten",
        kernel_size=2,
        beta=beta,
        loss="cross_entropy",
    )
    assert abs(result.objective - reference) <= REL * reference
    assert abs(result.network_objective - result.objective) <= REL * result.objective


def dense_dft(spatial: tuple[int, ...]) -> np.ndarray:
    d = math.prod(spatial)
    cols = [np.fft.fftn(np.eye(d)[k].reshape(spatial)).ravel() for k in range(d)]
    return np.stack(cols, axis=1) / np.sqrt(d)


@pytest.mark.parametrize("shape", [(6,), (7,), (3, 4)])
def test_linear_circular_is_a_spectral_l1_program(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(5)
    d = math.prod(shape)
    X = rng.standard_normal((9, *shape))
    y = rng.standard_normal(9)
    beta = 0.5
    F = dense_dft(shape)
    z = cp.Variable(d)
    moduli = cp.norm(cp.vstack([F.real @ z, F.imag @ z]), 2, axis=0)
    reference = solve(
        0.5 * cp.sum_squares(X.reshape(9, d) @ z - y) + beta / np.sqrt(d) * cp.sum(moduli)
    )
    result = fit(X, y, architecture="linear_circular", pooling="none", beta=beta)
    assert abs(result.objective - reference) <= REL * reference
    assert abs(result.network_objective - result.objective) <= REL * result.objective
    net = result.network
    assert isinstance(net, LinearCircularCNN)
    # balanced factors: ‖u‖² = ‖w‖² = ‖F z‖₁/√d
    u2 = float(net.conv.weight.detach().pow(2).sum())
    w2 = float(net.linear.weight.detach().pow(2).sum())
    assert u2 == pytest.approx(w2, rel=1e-9)


def _adam_best(net_factory: Any, X: torch.Tensor, Y: torch.Tensor, beta: float) -> float:
    best = math.inf
    for seed in range(8):
        torch.manual_seed(seed)
        net = net_factory().double()
        run = train_network(
            net, X, Y, loss=get_loss("squared"), beta=beta, lr=2e-2, epochs=400, seed=seed
        )
        best = min(best, min(run.history))
    return best


def test_adam_restarts_do_not_beat_the_convex_optima() -> None:
    X, y = instance(8, 6, 1)
    Xt, Yt = torch.as_tensor(X)[:, None, :], torch.as_tensor(y)[:, None]
    beta = 0.3
    for pooling in ("sum", "flatten"):
        result = fit(X, y, architecture="linear", pooling=pooling, kernel_size=3, beta=beta)
        spec = result.resolved_spec

        def factory(pooling: str = pooling, spec: Any = spec) -> LinearCNN:
            return LinearCNN(1, 3, spec, pooling=pooling, n_positions=4)

        best = _adam_best(factory, Xt, Yt, beta)
        assert best >= result.objective * (1 - 1e-6)
        assert best <= result.objective * 1.05
    result = fit(X, y, architecture="linear_circular", pooling="none", beta=beta)
    best = _adam_best(lambda: LinearCircularCNN(1, (6,), 3), Xt, Yt, beta)
    assert best >= result.objective * (1 - 1e-6)
    assert best <= result.objective * 1.05


def test_nuclear_prox_matches_cvxpy() -> None:
    rng = np.random.default_rng(6)
    W = rng.standard_normal((2, 4, 5))
    got = nuclear_prox(torch.as_tensor(W), 0.8).numpy()
    for j in range(2):
        Z = cp.Variable((4, 5))
        cp.Problem(cp.Minimize(0.5 * cp.sum_squares(Z - W[j]) + 0.8 * cp.normNuc(Z))).solve(
            solver="CLARABEL"
        )
        np.testing.assert_allclose(got[j], Z.value, atol=1e-6)


def test_problem_operators_are_adjoint() -> None:
    X, y = instance(7, 6, 3)
    gen = torch.Generator().manual_seed(0)
    for arch, pooling in (("linear", "sum"), ("linear", "flatten"), ("linear_circular", "none")):
        problem = fit(X, y, architecture=arch, pooling=pooling, kernel_size=2, beta=0.1).problem
        W = torch.randn(problem.variable_shape, generator=gen, dtype=torch.float64)
        R = torch.randn((7, 1), generator=gen, dtype=torch.float64)
        lhs = float((problem.predict(W) * R).sum())
        assert lhs == pytest.approx(float((W * problem.predict_adjoint(R)).sum()), rel=1e-12)
        assert not problem.has_constraints
        # ⟨G, W⟩ ≤ ρ(W)·ρ°(G) (ρ = regularizer/β)
        G = torch.randn(problem.variable_shape, generator=gen, dtype=torch.float64)
        rho = float(problem.regularizer(W)) / problem.beta
        assert float((G * W).sum()) <= rho * float(problem.dual_norm(G)) * (1 + 1e-12)


def test_fit_on_digits_flatten_and_sum() -> None:
    from convexcnn.data import load_digits_binary

    data = load_digits_binary()
    X, y = data.X_train[:80], data.y_train[:80]
    for pooling in ("flatten", "sum"):
        result = fit(X, y, architecture="linear", pooling=pooling, kernel_size=3, beta=0.1)
        assert abs(result.network_objective - result.objective) <= 1e-6 * result.objective
        accuracy = float((np.sign(result.decision_function(X).numpy()) == y).mean())
        assert accuracy >= (0.95 if pooling == "flatten" else 0.6)


def test_patterns_are_refused_for_linear_models() -> None:
    X, y = instance(6, 6, 0)
    with pytest.raises(ValueError, match="no activation patterns"):
        fit(X, y, architecture="linear", pooling="sum", patterns="enumerate")
    # a sampling count (the CLI's default) is ignored: nothing to sample
    assert fit(X, y, architecture="linear", pooling="sum", patterns=10).n_filters == 1
    with pytest.raises(ValueError, match="pooling must be one of"):
        fit(X, y, architecture="linear", pooling="max")
