"""Two-layer ReLU CNN with global max pooling (SPEC §4): exact optimum vs an independent CVXPY
program written here, recovery, Adam restarts of the max-pool network never beating it, the
operators and their adjoints, patterns (sampling = enumeration), ties, digits, validation."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import convexcnn
from _instances import reference_instance
from convexcnn import PatchSpec, PatternSet
from convexcnn.data import load_digits_binary
from convexcnn.losses import SquaredLoss
from convexcnn.max_patterns import MaxPatternSet, global_window, max_winners
from convexcnn.networks import PooledCNN, train_network
from convexcnn.patches import as_signal_batch, patches_of
from convexcnn.problems.max_pool import MaxPoolReLU, max_patterns
from convexcnn.solvers import SOLVERS

# --------------------------------------------------------------------------------------------
# Independent references (no library code beyond patch extraction)
# --------------------------------------------------------------------------------------------


def independent_winner_patterns(
    patches: np.ndarray, windows: list[list[int]], n_filters: int, seed: int
) -> np.ndarray:
    """Distinct (P, n, Ω) winner arrays (−1 inactive, ties → lowest index) of Gaussian filters."""
    rng = np.random.default_rng(seed)
    return independent_winner_codes(
        patches, windows, rng.standard_normal((n_filters, patches.shape[2]))
    )


def independent_winner_codes(
    patches: np.ndarray, windows: list[list[int]], U: np.ndarray
) -> np.ndarray:
    """Distinct non-trivial (P, n, Ω) winner arrays of the filters U (F, h)."""
    n_filters = U.shape[0]
    values = np.einsum("tkh,fh->ftk", patches, U)
    codes = np.empty((n_filters, patches.shape[0], len(windows)), dtype=np.int64)
    for o, members in enumerate(windows):
        block = values[:, :, members]
        slot = block.argmax(axis=2)
        winner = np.asarray(members)[slot]
        codes[:, :, o] = np.where(block.max(axis=2) >= 0, winner, -1)
    codes = codes[(codes >= 0).reshape(n_filters, -1).any(axis=1)]
    return np.unique(codes, axis=0)


def independent_max_cvxpy(
    patches: np.ndarray, windows: list[list[int]], codes: np.ndarray, y: np.ndarray, beta: float
) -> float:
    """SPEC §4 per window, written out pattern by pattern with loops."""
    n, _, h = patches.shape
    prediction, penalty, constraints = 0, 0, []
    for code in codes:
        B = np.zeros((n, h))
        rows = []
        for t in range(n):
            for o, members in enumerate(windows):
                a = code[t, o]
                if a < 0:
                    rows += [-patches[t, k] for k in members]
                    continue
                B[t] += patches[t, a]
                rows.append(patches[t, a])
                rows += [patches[t, a] - patches[t, k] for k in members if k != a]
        G = np.asarray(rows)
        c, c_neg = cp.Variable(h), cp.Variable(h)
        prediction = prediction + B @ (c - c_neg)
        penalty = penalty + cp.norm(c, 2) + cp.norm(c_neg, 2)
        constraints += [G @ c >= 0, G @ c_neg >= 0]
    program = cp.Problem(
        cp.Minimize(0.5 * cp.sum_squares(prediction - y) + beta * penalty), constraints
    )
    program.solve(solver="CLARABEL")
    return float(program.value)


def best_adam_restart(
    X: np.ndarray,
    y: np.ndarray,
    spec: PatchSpec,
    beta: float,
    *,
    pooling: str = "max",
    pool_size: tuple[int, ...] | None = None,
    pool_stride: tuple[int, ...] | None = None,
    restarts: int = 8,
    epochs: int = 1200,
) -> float:
    """Best objective (over all epochs) of Adam restarts of the pooled network, width 12.

    Runs single-threaded: on this shared 2-core machine a tiny conv with 2 threads costs
    ~20 ms (thread-pool contention) against ~5 µs with one thread."""
    batch, resolved = as_signal_batch(torch.as_tensor(X, dtype=torch.float64), spec)
    Y = torch.as_tensor(y, dtype=torch.float64)[:, None]
    best = np.inf
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed in range(restarts):
            torch.manual_seed(seed)
            net = PooledCNN(
                batch.shape[1],
                12,
                resolved,
                pooling=pooling,
                pool_size=pool_size,
                pool_stride=pool_stride,
            ).to(torch.float64)
            run = train_network(
                net, batch, Y, loss=SquaredLoss(), beta=beta, lr=3e-2, epochs=epochs, seed=seed
            )
            best = min(best, min(run.history))
    finally:
        torch.set_num_threads(threads)
    return best


def as_key_set(codes: np.ndarray | torch.Tensor) -> set[bytes]:
    arr = np.asarray(codes, dtype=np.int64)
    return {row.tobytes() for row in arr.reshape(arr.shape[0], -1)}


# --------------------------------------------------------------------------------------------
# Global optimum on the reference instance
# --------------------------------------------------------------------------------------------


def test_reference_global_max_optimum() -> None:
    """REFERENCE_VALUES: n=8, d=6, kernel 2, β=0.1, seed 2 → 1.324114 with all patterns."""
    X, y = reference_instance(8, 6, 2)
    result = convexcnn.fit(X, y, kernel_size=2, beta=0.1, pooling="max", patterns=100_000)
    assert result.status == "optimal"
    assert isinstance(result.patterns, MaxPatternSet)
    assert result.objective == pytest.approx(1.324114, abs=1e-6)
    patches = patches_of(X, PatchSpec(2)).numpy()
    windows = [list(range(patches.shape[1]))]
    codes = independent_winner_patterns(patches, windows, 100_000, seed=11)
    # every pattern is present: the library's set equals an independent sample's set
    assert as_key_set(result.patterns.winners) == as_key_set(codes)
    reference = independent_max_cvxpy(patches, windows, codes, y, 0.1)
    assert result.objective == pytest.approx(reference, rel=1e-6)
    assert result.network_objective == pytest.approx(result.objective, rel=1e-6)
    net = result.network
    assert isinstance(net, PooledCNN) and net.pooling == "max" and net.pool_size is None
    assert isinstance(net.conv, torch.nn.Conv1d)
    best = best_adam_restart(X, y, PatchSpec(2), 0.1)
    assert best >= result.objective - 1e-6


def test_enumeration_equals_dense_sampling() -> None:
    X, y = reference_instance(8, 6, 2)
    enumerated = max_patterns(X, PatchSpec(2))
    sampled = max_patterns(X, PatchSpec(2), 100_000, seed=3)
    assert enumerated.source == "enumerated" and enumerated.complete
    assert not sampled.complete
    assert as_key_set(enumerated.winners) == as_key_set(sampled.winners)
    # each generator filter realizes its own pattern
    patches = patches_of(X, PatchSpec(2))
    again = max_winners(patches, enumerated.filters, enumerated.windows)
    assert torch.equal(again, enumerated.winners)
    result = convexcnn.fit(X, y, kernel_size=2, beta=0.1, pooling="max", patterns=enumerated)
    assert result.objective == pytest.approx(1.324114, abs=1e-6)
    assert result.problem.patterns_complete


# --------------------------------------------------------------------------------------------
# Operators, cone, ties
# --------------------------------------------------------------------------------------------


def tiny_problem(seed: int = 0, c: int = 2) -> MaxPoolReLU:
    rng = np.random.default_rng(seed)
    X = torch.as_tensor(rng.standard_normal((5, 1, 5, 4)))
    spec = PatchSpec(2)
    batch, resolved = as_signal_batch(X, spec)
    patches = patches_of(X, spec)
    patterns = max_patterns(X, spec, 400, seed=seed)
    targets = torch.as_tensor(rng.standard_normal((5, c)))
    return MaxPoolReLU(
        patches,
        patterns,
        targets,
        0.1,
        SquaredLoss(),
        spec=resolved,
        in_channels=1,
        inputs=batch,
    )


def test_adjoints_and_cone_matrices() -> None:
    problem = tiny_problem()
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(problem.variable_shape, generator=gen, dtype=torch.float64)
    R = torch.randn((problem.n, problem.c), generator=gen, dtype=torch.float64)
    lhs = (problem.predict(W) * R).sum()
    assert float(lhs) == pytest.approx(float((W * problem.predict_adjoint(R)).sum()), rel=1e-12)
    g = problem.constraint(W)
    assert g.shape == (problem.c, 2, problem.P, problem.n, 1, problem.K)
    L = torch.randn(g.shape, generator=gen, dtype=torch.float64)
    lhs = (g * L).sum()
    assert float(lhs) == pytest.approx(float((W * problem.constraint_adjoint(L)).sum()), rel=1e-12)
    G = torch.as_tensor(problem.cone_matrices())
    dense = torch.einsum("prh,jsph->jspr", G, W)
    assert torch.allclose(dense, g.flatten(-3), atol=1e-12)


def test_generator_filters_lie_in_their_cones_and_linearize_the_network() -> None:
    """For each pattern's own filter u: 𝒢 ≥ 0 and B_i u = Σ_ω max_k (X_k u)_+ (the network)."""
    problem = tiny_problem(1, c=1)
    U = problem.patterns.filters  # (P, h)
    W = torch.zeros(problem.variable_shape, dtype=torch.float64)
    W[0, 0] = U
    assert float(problem.constraint(W).min()) >= -1e-12
    pooled = torch.einsum("pth,ph->pt", problem.pooled_patches, U)
    values = torch.einsum("tkh,ph->ptk", problem.patches, U).clamp_min(0).amax(dim=2)
    assert torch.allclose(pooled, values, atol=1e-12)


def test_cone_does_not_force_losing_patches_nonpositive() -> None:
    """An active sample whose losing patch is positive is feasible (SPEC §4: only the winner is
    constrained)."""
    problem = tiny_problem(2, c=1)
    U = problem.patterns.filters
    values = torch.einsum("tkh,ph->ptk", problem.patches, U)
    active = problem.patterns.winners[:, :, 0] >= 0
    positive_losers = ((values > 0).sum(dim=2) >= 2) & active
    assert bool(positive_losers.any()), "instance should contain a positive losing patch"
    W = torch.zeros(problem.variable_shape, dtype=torch.float64)
    W[0, 1] = U
    assert float(problem.constraint(W).min()) >= -1e-12


def test_ties_go_to_the_lowest_patch_index() -> None:
    patches = torch.tensor(
        [[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]]
    )
    u = torch.tensor([[1.0, 0.5]])
    winners = max_winners(patches, u, global_window(3))
    assert winners.tolist() == [[[0], [1]]]  # sample 0: patches 0 and 1 tie at 1 → 0
    u = torch.tensor([[-1.0, -1.0]])
    winners = max_winners(patches, u, global_window(3))
    # sample 0: every patch < 0 → inactive; sample 1: zero patches 0 and 2 tie at 0 ≥ 0 → 0
    assert winners.tolist() == [[[-1], [0]]]


# --------------------------------------------------------------------------------------------
# Digits, first-order solver, validation
# --------------------------------------------------------------------------------------------


def test_fits_digits_with_max_pooling() -> None:
    data = load_digits_binary((3, 8))
    X, y = data.X_train[:40], data.y_train[:40]
    result = convexcnn.fit(X, y, pooling="max", beta=1e-2, patterns=15)
    assert result.status == "optimal"
    assert isinstance(result.network.conv, torch.nn.Conv2d)
    assert result.network_objective == pytest.approx(result.objective, rel=1e-6)
    accuracy = float(
        (torch.sign(result.decision_function(X)) == torch.as_tensor(y)).double().mean()
    )
    assert accuracy >= 0.9


@pytest.mark.skipif("al" not in SOLVERS, reason="solver='al' is not registered yet")
def test_augmented_lagrangian_matches_exact() -> None:
    X, y = reference_instance(8, 6, 2)
    patterns = max_patterns(X, PatchSpec(2))
    exact = convexcnn.fit(X, y, kernel_size=2, beta=0.1, pooling="max", patterns=patterns)
    first_order = convexcnn.fit(
        X, y, kernel_size=2, beta=0.1, pooling="max", patterns=patterns, solver="al"
    )
    assert first_order.objective == pytest.approx(exact.objective, rel=1e-6)
    assert first_order.network_objective == pytest.approx(exact.objective, rel=1e-6)


def test_validation_errors() -> None:
    X, y = reference_instance(8, 6, 2)
    sum_patterns = PatternSet.from_filters(
        X, PatchSpec(2), np.random.default_rng(0).normal(size=(5, 2))
    )
    with pytest.raises(ValueError, match="MaxPatternSet"):
        convexcnn.fit(X, y, kernel_size=2, pooling="max", patterns=sum_patterns)
    with pytest.raises(ValueError, match="gated"):
        convexcnn.fit(X, y, kernel_size=2, pooling="max", gated=True)
    other_windows = max_patterns(X, PatchSpec(2), 50, pool_size=2)
    with pytest.raises(ValueError, match="other pooling windows"):
        convexcnn.fit(X, y, kernel_size=2, pooling="max", patterns=other_windows)


def test_pooled_network_config_round_trip() -> None:
    """config()/from_config() (used by convexcnn.io) keep pooling and the windows."""
    rng = np.random.default_rng(0)
    X = torch.as_tensor(rng.standard_normal((4, 1, 6, 5)))
    batch, resolved = as_signal_batch(X, PatchSpec(2))
    torch.manual_seed(0)
    net = PooledCNN(1, 3, resolved, pooling="max", pool_size=(2, 2), pool_stride=(1, 2)).double()
    clone = PooledCNN.from_config(net.config()).double()
    clone.load_state_dict(net.state_dict())
    assert clone.pool_size == (2, 2) and clone.pool_stride == (1, 2) and clone.pooling == "max"
    assert torch.equal(clone(batch), net(batch))


def test_block_hooks_and_pattern_growth() -> None:
    problem = tiny_problem(3, c=1)
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(problem.variable_shape, generator=gen, dtype=torch.float64)
    g = problem.constraint(W)
    G = problem.block_constraint_matrix((0, 1, 4))
    assert torch.allclose(G @ W[0, 1, 4], g[0, 1, 4].reshape(-1), atol=1e-12)
    assert torch.equal(problem.block_dual_norms(W), W.norm(dim=-1))
    smaller = problem.with_patterns(problem.patterns.subset(range(10)))
    grown = smaller.grown(problem.patterns.filters[10:])
    assert grown.P == problem.P and torch.equal(grown.patterns.winners, problem.patterns.winners)
    small_W = W[:, :, :10]
    embedded = grown.embed_solution(small_W, smaller)
    assert torch.allclose(grown.predict(embedded), smaller.predict(small_W))
