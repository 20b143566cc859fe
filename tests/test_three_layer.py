"""Three-layer CNN with two ReLU layers (SPEC §8): operators, exact optimum, recovery,
certificate, tuple growth and the Adam baseline."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import cvxpy as cp
import numpy as np
import pytest
import torch

from _instances import reference_instance
from convexcnn import fit
from convexcnn.certificate import certify_solution
from convexcnn.growth import grow_patterns
from convexcnn.losses import SquaredLoss
from convexcnn.patches import PatchSpec, as_signal_batch, extract_patches
from convexcnn.problems.three_layer import ThreeLayerReLU, search_branches, train_baseline
from convexcnn.solvers.exact import ExactSolver
from convexcnn.tuples import TupleSet, sample_tuples

#: REFERENCE_VALUES.md, three-layer m1 = 2: (n, d, seed, β, regularization) → optimum.
REFERENCE = {
    (6, 4, 0, 0.1, "path"): 0.277647,
    (6, 4, 0, 0.1, "unit"): 0.222481,
    (8, 4, 1, 0.05, "path"): 0.581355,
    (8, 4, 1, 0.05, "unit"): 0.427416,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(
    n: int,
    d: int,
    seed: int,
    beta: float,
    regularization: str,
    branches: int | TupleSet,
    *,
    pooling: str = "sum",
    targets: np.ndarray | None = None,
    prune: bool = True,
) -> ThreeLayerReLU:
    X, y = reference_instance(n, d, seed)
    batch, rs = as_signal_batch(torch.as_tensor(X), PatchSpec(2))
    patches = extract_patches(batch, rs)
    tuples = (
        branches
        if isinstance(branches, TupleSet)
        else sample_tuples(patches, branches, regularization=regularization, seed=0)
    )
    Y = torch.as_tensor(y if targets is None else targets)
    Y = Y[:, None] if Y.ndim == 1 else Y
    return ThreeLayerReLU(
        patches,
        tuples,
        Y,
        beta,
        SquaredLoss(),
        pooling=pooling,
        regularization=regularization,
        spec=rs,
        in_channels=1,
        inputs=batch,
        prune=prune,
    )


@cache
def _solved(key: tuple[int, int, int, float, str], branches: int) -> tuple[ThreeLayerReLU, object]:
    problem = _problem(*key, branches)
    return problem, ExactSolver().solve(problem)


def independent_cvxpy_optimum(problem: ThreeLayerReLU) -> float:
    """SPEC §8 program written directly from the TupleSet (masks, slots, signs, δ) and the raw
    patches: full first-layer cones (every patch row), A_i from the masks, m1 = 2, scalar output.
    Shares no code with ThreeLayerReLU's operators, cone reduction or cvxpy_program."""
    ts = problem.tuples
    X = problem.patches.numpy()  # (n, K, h), pooling already applied
    n, K, h = X.shape
    masks = ts.patterns.masks.numpy().astype(float)  # (P, n, K)
    A = np.einsum("ptk,tkh->pth", masks, X)
    M = X.reshape(n * K, h)
    slots, signs, deltas = ts.slots.numpy(), ts.signs.numpy().astype(float), ts.deltas.numpy()
    T = len(ts)
    D = deltas.astype(float)
    y = problem.targets.numpy()[:, 0]
    preds, reg, cons = 0, 0, []
    for sigma in (1.0, -1.0):
        C = [cp.Variable((T, h)) for _ in range(2)]
        pre = 0
        for l in range(2):
            first_sign = 2 * masks.reshape(len(masks), -1)[slots[:, l]] - 1  # (T, nK)
            cons.append(cp.multiply(first_sign, C[l] @ M.T) >= 0)
            SA = signs[:, l, None, None] * A[slots[:, l]]  # (T, n, h)
            for q in range(h):
                pre = pre + cp.multiply(SA[:, :, q], C[l][:, q : q + 1] @ np.ones((1, n)))
        cons.append(cp.multiply(2 * D - 1, pre) >= 0)
        preds = preds + sigma * cp.sum(cp.multiply(D, pre), axis=0)
        if problem.regularization == "path":
            reg = reg + cp.sum(cp.norm(C[0], 2, axis=1)) + cp.sum(cp.norm(C[1], 2, axis=1))
        else:
            reg = reg + cp.sum(cp.norm(cp.hstack([C[0], C[1]]), 2, axis=1))
    program = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(preds - y) + problem.beta * reg), cons)
    program.solve(solver="CLARABEL")
    return float(program.value)


# ----- operators -------------------------------------------------------------------------


@pytest.mark.parametrize("regularization", ["path", "unit"])
@pytest.mark.parametrize("pooling", ["sum", "avg"])
def test_adjoints_prox_and_cvxpy_hooks(regularization: str, pooling: str) -> None:
    y2 = np.random.default_rng(3).standard_normal((6, 2))
    problem = _problem(6, 4, 0, 0.1, regularization, 300, pooling=pooling, targets=y2)
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(problem.variable_shape, generator=gen, dtype=torch.float64)
    R = torch.randn((6, 2), generator=gen, dtype=torch.float64)
    assert torch.allclose((problem.predict(W) * R).sum(), (W * problem.predict_adjoint(R)).sum())
    G = problem.constraint(W)
    L = torch.randn(G.shape, generator=gen, dtype=torch.float64)
    assert torch.allclose((G * L).sum(), (W * problem.constraint_adjoint(L)).sum())
    # per-block constraint matrices (certificate hook) reproduce 𝒢(W) block by block
    for index in [(0, 0, 0), (1, 1, problem.T - 1), (0, 1, problem.T // 2)]:
        Gb = problem.block_constraint_matrix(index)
        assert torch.allclose(Gb @ W[index].reshape(-1), G[index])
    # prox: optimality of argmin ½‖Z − W‖² + t·β·ρ(Z) checked against nearby points
    t = 0.7
    Z = problem.prox(W, t)

    def f(V: torch.Tensor) -> float:
        return float(0.5 * (V - W).pow(2).sum() + t * problem.regularizer(V))

    for _ in range(20):
        E = 1e-3 * torch.randn(W.shape, generator=gen, dtype=torch.float64)
        assert f(Z) <= f(Z + E) + 1e-12
    # dual norm (Hölder): ⟨W, W⟩ ≤ ρ°(W)·ρ(W), with equality for a single block
    rho = float(problem.regularizer(W)) / problem.beta
    assert float((W * W).sum()) <= float(problem.dual_norm(W)) * rho
    single = torch.zeros_like(W)
    single[0, 0, 0] = W[0, 0, 0]
    rho1 = float(problem.regularizer(single)) / problem.beta
    if regularization == "unit":
        assert math.isclose(float((single * single).sum()), float(problem.dual_norm(single)) * rho1)
    # cvxpy expressions equal the operators at W
    w = cp.Variable(W.numel())
    pred, reg, cons = problem.cvxpy_program(w)
    w.value = W.reshape(-1).numpy()
    assert np.allclose(pred.value, problem.predict(W).numpy())
    assert math.isclose(float(reg.value), float(problem.regularizer(W)), rel_tol=1e-10)
    (con,) = cons
    assert np.allclose(-con.expr.value, G.reshape(-1).numpy())  # stored as 0 − Gw ≤ 0


def test_cone_rows_describe_the_full_cones() -> None:
    """The reduced cone rows (facets for h = 2) accept exactly the points the full
    (2d − 1) ⊙ M u ≥ 0 description accepts."""
    problem = _problem(8, 4, 1, 0.05, "path", 2000)
    assert problem.cone.reduction == "facets" and problem.cone.rows == 2
    gen = torch.Generator().manual_seed(0)
    U = torch.randn((5000, 2), generator=gen, dtype=torch.float64)
    masks = problem.tuples.patterns.masks.reshape(len(problem.tuples.patterns), -1)
    full = (((2 * masks.double() - 1)[:, None, :] * (U @ problem.M.T)[None]) >= 0).all(dim=2)
    rows = problem.cone.matrices(torch.arange(len(masks)))  # (P, r, h)
    reduced = (torch.einsum("prh,uh->pur", rows, U) >= 0).all(dim=2)
    assert torch.equal(full, reduced)


# ----- exact optimum, recovery, certificate ----------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        (6, 4, 0, 0.1, "path"),
        (6, 4, 0, 0.1, "unit"),
        pytest.param((8, 4, 1, 0.05, "path"), marks=pytest.mark.slow),
        pytest.param((8, 4, 1, 0.05, "unit"), marks=pytest.mark.slow),
    ],
)
def test_exact_optimum_recovery_and_certificate(key: tuple[int, int, int, float, str]) -> None:
    problem, solution = _solved(key, 100_000)
    reference = REFERENCE[key]
    assert solution.status == "optimal"
    assert abs(solution.objective - reference) <= 2e-6
    assert solution.max_violation <= 1e-8
    # the recovered network, run on the data, has the convex objective
    rec = problem.recover(solution.W)
    assert abs(rec.objective - solution.objective) <= 1e-6 * solution.objective
    assert rec.n_branches <= problem.n  # pruned to a basic solution
    assert rec.info["nonzero_blocks"] >= rec.n_branches
    assert rec.info["max_constraint_norm"] <= 1 + 1e-9  # ‖U_j‖_F ≤ 1 or ‖u_jl‖ ≤ 1
    # the second ReLU matters: some branch mixes signs in w1
    assert rec.info["mixed_branches"] >= 1
    # weight decay (β/2)(‖w1‖² + ‖w2‖²) of the network = β Σ ρ of its blocks
    net = rec.module
    with torch.no_grad():
        loss = 0.5 * float((net(problem.inputs) - problem.targets[:, 0]).pow(2).sum())
        decay = float(net.weight_penalty(problem.beta))
        path = float(net.path_penalty(problem.beta))
    assert math.isclose(decay, rec.objective - loss, rel_tol=1e-9)
    if key[4] == "path":  # balanced: weight decay = path norm
        assert math.isclose(decay, path, rel_tol=1e-9)
    # certificate: no branch violates dual feasibility (search over random/ascended branches)
    cert = certify_solution(
        problem,
        solution.W,
        upper_bound=rec.objective,
        multipliers=solution.multipliers,
        starts=1024,
        steps=200,
    )
    assert cert.details["search_ratio"] <= 1 + 1e-4
    assert cert.details["restricted_ratio"] <= 1 + 1e-6
    assert cert.gap <= 1e-5


@pytest.mark.parametrize(
    ("key", "branches"),
    [
        ((6, 4, 0, 0.1, "path"), 3000),
        ((6, 4, 0, 0.1, "unit"), 3000),
        pytest.param((6, 4, 0, 0.1, "path"), 100_000, marks=pytest.mark.slow),
        pytest.param((6, 4, 0, 0.1, "unit"), 100_000, marks=pytest.mark.slow),
    ],
)
def test_independent_cvxpy_formulation(
    key: tuple[int, int, int, float, str], branches: int
) -> None:
    problem, solution = _solved(key, branches)
    assert abs(independent_cvxpy_optimum(problem) - solution.objective) <= 1e-6


def test_avg_pooling_multi_output_and_no_prune() -> None:
    y2 = np.random.default_rng(3).standard_normal((6, 2))
    problem = _problem(6, 4, 0, 0.1, "unit", 3000, pooling="avg", targets=y2, prune=False)
    solution = ExactSolver().solve(problem)
    rec = problem.recover(solution.W)
    assert abs(rec.objective - solution.objective) <= 1e-6 * solution.objective
    assert rec.n_branches == rec.info["nonzero_blocks"]  # prune=False keeps every block
    out = rec.module(problem.inputs)
    assert out.shape == (6, 2)
    assert torch.allclose(out, problem.predict(solution.W), atol=1e-7)


def test_few_branches_are_suboptimal_and_growth_reaches_the_optimum() -> None:
    key = (6, 4, 0, 0.1, "path")
    small = _problem(*key, 1000)
    solution = ExactSolver().solve(small)
    assert solution.objective > REFERENCE[key] + 1e-4
    V = small.loss.dual_point(small.predict(solution.W), small.targets)
    search = search_branches(small, V, starts=1024, steps=200)
    assert search.best_value / small.beta > 1 + 1e-3  # certificate > 1: a better branch exists
    violating = search.violating(small.beta, 1e-4)
    assert violating.shape[1:] == (2, 3) and len(violating) >= 1
    outcome = grow_patterns(
        small, ExactSolver(), rounds=6, starts=1024, steps=200, per_round=64, tol=1e-4
    )
    assert outcome.converged
    assert abs(outcome.solution.objective - REFERENCE[key]) <= 2e-6
    assert outcome.history[-1].max_dual_ratio <= 1 + 1e-4
    assert len(outcome.problem.tuples) > len(small.tuples)


@pytest.mark.parametrize(
    "regularization",
    ["path", pytest.param("unit", marks=pytest.mark.slow)],
)
def test_adam_restarts_do_not_beat_the_convex_optimum(regularization: str) -> None:
    key = (6, 4, 0, 0.1, regularization)
    problem, solution = _solved(key, 100_000)
    runs = train_baseline(problem, restarts=12, epochs=200, lr=2e-2)
    best = min(r.objective for r in runs)
    assert best >= solution.objective - 1e-6
    # the baseline keeps its constraint (projection after every step)
    with torch.no_grad():
        for r in runs:
            assert float(r.network.constraint_norms().max()) <= 1 + 1e-12


# ----- fit() -------------------------------------------------------------------------------


def test_fit_api_and_bad_options(tmp_path: Path) -> None:
    X, y = reference_instance(6, 4, 0)
    result = fit(
        X,
        y,
        architecture="three_layer",
        kernel_size=2,
        beta=0.1,
        patterns=3000,
        regularization="unit",
        certificate_starts=32,
    )
    assert abs(result.network_objective - result.objective) <= 1e-6 * result.objective
    assert result.certificate is not None and result.certificate.lower_bound <= result.objective
    assert result.problem.regularization == "unit"
    # the recovered network saves and loads (config + state, output mask included)
    from convexcnn.io import load_network, save_network

    save_network(tmp_path / "net", result.network, {"objective": result.objective})
    loaded, meta = load_network(tmp_path / "net")
    batch = result.problem.inputs
    with torch.no_grad():
        assert torch.allclose(loaded(batch), result.network(batch))
    assert meta["objective"] == result.objective
    with pytest.raises(ValueError, match="pooling"):
        fit(X, y, architecture="three_layer", kernel_size=2, pooling="max")
    with pytest.raises(ValueError, match="regularization"):
        fit(X, y, architecture="three_layer", kernel_size=2, regularization="l1")
    with pytest.raises(ValueError, match="branch_width"):
        fit(X, y, architecture="three_layer", kernel_size=2, branch_width=0)
    with pytest.raises(ValueError, match="unknown option"):
        fit(X, y, architecture="three_layer", kernel_size=2, width=3)
    with pytest.raises(ValueError, match="branch_width=2"):
        fit(X, y, architecture="three_layer", kernel_size=2, patterns="enumerate", branch_width=3)


def test_branch_width_three() -> None:
    """m1 = 3: path merges dominated duplicate slots; unit duplicates make filters cheaper
    (‖c‖/√m1), so its optimum drops below m1 = 2's (SPEC §8: "degenerates as m1 grows")."""
    X, y = reference_instance(6, 4, 0)
    values = {}
    for reg in ("path", "unit"):
        result = fit(
            X,
            y,
            architecture="three_layer",
            kernel_size=2,
            beta=0.1,
            patterns=2000,
            branch_width=3,
            regularization=reg,
            certificate_starts=0,
        )
        assert abs(result.network_objective - result.objective) <= 1e-6 * result.objective
        assert result.network.branch_width == 3
        values[reg] = result.objective
        merged = result.problem.tuples.counts["merged"]
        assert (merged > 0) if reg == "path" else (merged == 0)
    assert values["unit"] < REFERENCE[(6, 4, 0, 0.1, "unit")] - 1e-3


@pytest.mark.slow
def test_enumerated_tuples_give_the_reference_optimum_with_a_proof() -> None:
    X, y = reference_instance(6, 4, 0)
    result = fit(X, y, architecture="three_layer", kernel_size=2, beta=0.1, patterns="enumerate")
    assert abs(result.objective - REFERENCE[(6, 4, 0, 0.1, "path")]) <= 2e-6
    assert result.certificate.scope == "enumerated"
    assert result.certificate.gap <= 1e-6


@pytest.mark.slow
def test_fit_on_digits() -> None:
    from convexcnn.data import load_digits_binary

    ds = load_digits_binary()
    X, y = np.asarray(ds.X_train)[:40], np.asarray(ds.y_train)[:40]
    result = fit(X, y, architecture="three_layer", kernel_size=3, stride=2, beta=1e-2, patterns=60)
    assert abs(result.network_objective - result.objective) <= 1e-6 * max(1, result.objective)
    assert result.certificate is not None
    labels = np.where(result.decision_function(X).numpy() >= 0, 1.0, -1.0)
    assert float((labels == y).mean()) >= 0.9  # training accuracy of the ±1 regression
