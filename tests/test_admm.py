"""ADMM (slack splitting) for constrained programs whose prox has no closed form (circular CNNs),
and the first-order path for max pooling (dual AL over dense block operators)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convexcnn import fit
from convexcnn.data import load_digits_binary
from convexcnn.solvers import ADMM
from convexcnn.solvers.admm import _Run
from test_circular import all_patterns, instance
from test_solvers import rel

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("depth", [3, 4])
def test_admm_matches_exact_on_circular_with_all_patterns(depth: int) -> None:
    X, y = instance(6, 6, 3)
    patterns = all_patterns(X)
    kw = dict(architecture="circular", pooling="none", beta=0.05, patterns=patterns, depth=depth)
    exact = fit(X, y, solver="exact", **kw)  # type: ignore[arg-type]
    admm = fit(X, y, solver="admm", solver_options={"tol": 1e-8}, **kw)  # type: ignore[arg-type]
    sol = admm.solution
    assert sol.status == "optimal"
    assert sol.info["solver"] == "admm"
    assert sol.info["gap"] <= 1e-8
    assert sol.info["lower_bound"] <= exact.objective * (1 + 1e-7)
    assert rel(admm.objective, exact.objective) <= 1e-6
    assert sol.max_violation <= 1e-10
    assert rel(admm.network_objective, admm.objective) <= 1e-6
    assert admm.network.max_filter_norm() <= 1 + 1e-9


def test_al_hands_circular_programs_to_admm_on_digits() -> None:
    data = load_digits_binary()
    X, y = data.X_train[:30], data.y_train[:30]
    kw = dict(architecture="circular", pooling="none", beta=0.1, patterns=10, certificate_starts=0)
    exact = fit(X, y, solver="exact", **kw)  # type: ignore[arg-type]
    al = fit(X, y, solver="al", **kw)  # type: ignore[arg-type]
    assert al.solution.info["solver"] == "admm"
    assert al.status == "optimal"
    assert rel(al.objective, exact.objective) <= 1e-6
    assert rel(al.network_objective, al.objective) <= 1e-6


@pytest.mark.parametrize(("architecture", "pooling"), [("two_layer", "sum"), ("circular", None)])
def test_w_step_solves_its_normal_equations(architecture: str, pooling: str | None) -> None:
    data = load_digits_binary()
    X, y = data.X_train[:20], data.y_train[:20]
    problem = fit(
        X,
        y,
        architecture=architecture,
        pooling=pooling,
        patterns=4,
        solver="admm",
        solver_options={"max_iter": 1},
        certificate_starts=0,
    ).problem
    run = _Run(ADMM(), problem, None)
    gen = torch.Generator().manual_seed(0)
    run.Z = torch.randn(run.Z.shape, generator=gen, dtype=run.Z.dtype)
    run.U = torch.randn(run.U.shape, generator=gen, dtype=run.U.dtype)
    assert run.S is not None and run.rows is not None
    run.S = torch.rand(run.S.shape, generator=gen, dtype=run.S.dtype)
    run.US = -torch.rand(run.S.shape, generator=gen, dtype=run.S.dtype)
    rho = 0.37
    W, AW = run.w_step(rho)
    grad = (
        problem.predict_adjoint(problem.predict(W) - problem.targets)
        + rho * (W - run.Z + run.U)
        + rho * run.rows.adjoint(run.rows.apply(W) - run.S + run.US)
    )
    assert float(grad.norm()) <= 1e-8 * float(problem.predict_adjoint(problem.targets).norm())
    assert torch.allclose(AW, problem.predict(W), rtol=1e-10, atol=1e-10)
    L = torch.randn(run.S.shape, generator=gen, dtype=run.S.dtype)
    Wr = torch.randn(W.shape, generator=gen, dtype=W.dtype)
    lhs = float((run.rows.apply(Wr) * L).sum())
    rhs = float((Wr * run.rows.adjoint(L)).sum())
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))
    scaled = run.rows.apply(Wr) * run.rows.g
    assert torch.allclose(scaled.flatten(), problem.constraint(Wr).flatten(), atol=1e-10)


def test_max_pooling_with_the_first_order_al_solver_matches_exact() -> None:
    data = load_digits_binary()
    X, y = data.X_train[:40], data.y_train[:40]
    kw = dict(pooling="max", beta=1e-3, patterns=20, certificate_starts=0)
    exact = fit(X, y, solver="exact", **kw)  # type: ignore[arg-type]
    al = fit(X, y, solver="al", **kw)  # type: ignore[arg-type]
    assert al.solution.info["solver"] == "al"
    assert al.status == "optimal"
    assert rel(al.objective, exact.objective) <= 1e-6
    assert al.solution.max_violation <= 1e-10
    assert rel(al.network_objective, al.objective) <= 1e-6


def test_admm_refuses_other_losses_and_bad_relaxation() -> None:
    X, y = instance(6, 6, 3)
    kw = dict(architecture="circular", pooling="none", patterns=4, certificate_starts=0)
    with pytest.raises(ValueError, match="loss"):
        fit(X, np.sign(y), loss="logistic", solver="admm", **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="relaxation"):
        fit(X, y, solver="admm", solver_options={"relaxation": 2.5}, **kw)  # type: ignore[arg-type]


def test_all_zero_solution_recovers_to_a_zero_network() -> None:
    data = load_digits_binary()
    X, y = data.X_train[:20], data.y_train[:20]
    for pooling in ("sum", "max"):
        problem = fit(X, y, pooling=pooling, patterns=4, certificate_starts=0).problem
        recovered = problem.recover(problem.zeros())
        assert recovered.n_branches == 0
        assert rel(recovered.objective, 0.5 * float((y**2).sum())) <= 1e-12


def test_programs_without_last_axis_blocks_are_refused_by_first_order_solvers() -> None:
    from _instances import reference_instance

    X, y = reference_instance(6, 4, 0)
    for solver in ("al", "admm"):
        with pytest.raises(ValueError, match="use solver='exact'"):
            fit(X, y, architecture="three_layer", kernel_size=2, patterns=50, solver=solver)


def test_sign_factored_rows_match_the_dense_block_rows() -> None:
    from convexcnn.solvers.admm import _sign_factor

    gen = torch.Generator().manual_seed(1)
    M = torch.randn((5, 3), generator=gen, dtype=torch.float64)
    signs = torch.where(torch.rand((4, 5), generator=gen) < 0.5, -1.0, 1.0).to(torch.float64)
    G = signs[:, :, None] * M
    factored = _sign_factor(G)
    assert factored is not None
    assert torch.equal(factored[1][:, :, None] * factored[0], G)
    G[2, 1, 0] += 1e-3  # no longer diag(±1)·M for a shared M
    assert _sign_factor(G) is None


def test_admm_without_anderson_still_certifies() -> None:
    X, y = instance(6, 6, 3)
    kw = dict(architecture="circular", pooling="none", beta=0.05, patterns=all_patterns(X))
    options = {"memory": 0, "tol": 1e-5}
    plain = fit(X, y, solver="admm", solver_options=options, **kw)  # type: ignore[arg-type]
    options = {"memory": 5, "tol": 1e-5}
    accel = fit(X, y, solver="admm", solver_options=options, **kw)  # type: ignore[arg-type]
    assert plain.status == accel.status == "optimal"
    assert plain.solution.info["anderson_accepted"] == 0
    assert accel.solution.info["anderson_accepted"] > 0
    assert rel(plain.objective, accel.objective) <= 2e-5
    assert plain.solution.max_violation <= 1e-10
