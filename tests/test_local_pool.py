"""Local pooling windows (pool_size, pool_stride) followed by a sum over windows, for max and
avg (SPEC §4 per window): window geometry vs torch's pooling, exact optima vs independent CVXPY
programs written here, recovery, Adam restarts never beating the optimum, validation."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convexcnn
from convexcnn import PatchSpec, PatternSet
from convexcnn.networks import PooledCNN
from convexcnn.patches import patches_of
from convexcnn.problems.local_pool import WindowedSumReLU, pool_windows, window_counts
from convexcnn.problems.max_pool import MaxPoolReLU, max_patterns
from test_max_pool import (
    as_key_set,
    best_adam_restart,
    independent_max_cvxpy,
    independent_winner_codes,
    independent_winner_patterns,
)


def windows_1d(K: int, size: int, stride: int) -> list[list[int]]:
    return [list(range(o * stride, o * stride + size)) for o in range((K - size) // stride + 1)]


def independent_sign_patterns(patches: np.ndarray, n_filters: int, seed: int) -> np.ndarray:
    """Distinct non-zero (P, n, K) masks 1[X_k u ≥ 0] of Gaussian filters."""
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((n_filters, patches.shape[2]))
    masks = np.einsum("tkh,fh->ftk", patches, U) >= 0
    masks = masks[masks.reshape(n_filters, -1).any(axis=1)]
    return np.unique(masks, axis=0)


def all_cell_filters_2d(rows: np.ndarray) -> np.ndarray:
    """One interior filter per cell of the central arrangement {u ∈ R²: rᵀu = 0}, r in rows:
    the cells are the angular sectors between consecutive boundary directions ±r^⊥."""
    rows = rows[np.linalg.norm(rows, axis=1) > 1e-12]
    boundary = np.arctan2(rows[:, 0], -rows[:, 1])  # direction of (−r₁, r₀) ⟂ r
    angles = np.unique(np.mod(np.concatenate([boundary, boundary + np.pi]), 2 * np.pi))
    middles = angles + np.diff(np.append(angles, angles[0] + 2 * np.pi)) / 2
    return np.stack([np.cos(middles), np.sin(middles)], axis=1)


def independent_avg_window_cvxpy(
    patches: np.ndarray, windows: list[list[int]], masks: np.ndarray, y: np.ndarray, beta: float
) -> float:
    """Σ_ω (1/|ω|) Σ_{k∈ω} (X_k u)_+ per branch, written pattern by pattern (SPEC §3 cones)."""
    n, K, h = patches.shape
    prediction, penalty, constraints = 0, 0, []
    for d in masks:
        A = np.zeros((n, h))
        for members in windows:
            for k in members:
                A += d[:, k, None] * patches[:, k] / len(members)
        G = ((2 * d.astype(float) - 1)[:, :, None] * patches).reshape(n * K, h)
        c, c_neg = cp.Variable(h), cp.Variable(h)
        prediction = prediction + A @ (c - c_neg)
        penalty = penalty + cp.norm(c, 2) + cp.norm(c_neg, 2)
        constraints += [G @ c >= 0, G @ c_neg >= 0]
    program = cp.Problem(
        cp.Minimize(0.5 * cp.sum_squares(prediction - y) + beta * penalty), constraints
    )
    program.solve(solver="CLARABEL")
    return float(program.value)


# --------------------------------------------------------------------------------------------
# Window geometry
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid", "size", "stride"),
    [((7,), (3,), (2,)), ((7,), (2,), (3,)), ((4, 5), (2, 2), (1, 2)), ((5, 4), (3, 2), (2, 2))],
)
def test_windows_match_torch_pooling(
    grid: tuple[int, ...], size: tuple[int, ...], stride: tuple[int, ...]
) -> None:
    windows = pool_windows(grid, size, stride)
    z = torch.randn((3, 2, *grid), dtype=torch.float64)
    flat = z.flatten(2)  # (3, 2, K)
    max_pool = F.max_pool1d if len(grid) == 1 else F.max_pool2d
    avg_pool = F.avg_pool1d if len(grid) == 1 else F.avg_pool2d
    torch_max = max_pool(z, size, stride).flatten(2)
    assert windows.shape[0] == torch_max.shape[2]
    assert torch.allclose(flat[..., windows].amax(-1), torch_max)
    assert torch.allclose(flat[..., windows].mean(-1), avg_pool(z, size, stride).flatten(2))
    counts = window_counts(windows, flat.shape[2]).to(z.dtype)
    weighted = (flat * counts / windows.shape[1]).sum(-1)
    assert torch.allclose(weighted, avg_pool(z, size, stride).flatten(2).sum(-1))


# --------------------------------------------------------------------------------------------
# Exact optima, 1-D (all patterns present)
# --------------------------------------------------------------------------------------------

SIZE, STRIDE = 3, 2


def tiny_1d() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    return rng.standard_normal((8, 8)), rng.standard_normal(8)


def test_local_max_windows_1d_global_optimum() -> None:
    X, y = tiny_1d()
    spec = PatchSpec(2)
    enumerated = max_patterns(X, spec, pool_size=SIZE, pool_stride=STRIDE)
    assert enumerated.complete
    result = convexcnn.fit(
        X,
        y,
        kernel_size=2,
        beta=0.1,
        pooling="max",
        pool_size=SIZE,
        pool_stride=STRIDE,
        patterns=enumerated,
    )
    assert isinstance(result.problem, MaxPoolReLU)
    patches = patches_of(X, spec).numpy()
    windows = windows_1d(patches.shape[1], SIZE, STRIDE)
    codes = independent_winner_patterns(patches, windows, 100_000, seed=5)
    assert as_key_set(enumerated.winners) == as_key_set(codes)
    reference = independent_max_cvxpy(patches, windows, codes, y, 0.1)
    assert result.objective == pytest.approx(reference, rel=1e-6)
    assert result.network_objective == pytest.approx(result.objective, rel=1e-6)
    net = result.network
    assert isinstance(net, PooledCNN) and net.pooling == "max" and net.pool_size == (SIZE,)
    best = best_adam_restart(X, y, spec, 0.1, pool_size=(SIZE,), pool_stride=(STRIDE,))
    assert best >= result.objective - 1e-6


def test_local_avg_windows_1d_global_optimum() -> None:
    X, y = tiny_1d()
    spec = PatchSpec(2)
    result = convexcnn.fit(
        X,
        y,
        kernel_size=2,
        beta=0.1,
        pooling="avg",
        pool_size=SIZE,
        pool_stride=STRIDE,
        patterns=20_000,
    )
    assert isinstance(result.problem, WindowedSumReLU)
    patches = patches_of(X, spec).numpy()
    windows = windows_1d(patches.shape[1], SIZE, STRIDE)
    masks = independent_sign_patterns(patches, 100_000, seed=6)
    library = result.patterns.masks.numpy()
    assert {m.tobytes() for m in library} == {m.tobytes() for m in masks}
    reference = independent_avg_window_cvxpy(patches, windows, masks, y, 0.1)
    assert result.objective == pytest.approx(reference, rel=1e-6)
    assert result.network_objective == pytest.approx(result.objective, rel=1e-6)
    assert result.network.pooling == "avg" and result.network.pool_stride == (STRIDE,)
    best = best_adam_restart(
        X, y, spec, 0.1, pooling="avg", pool_size=(SIZE,), pool_stride=(STRIDE,)
    )
    assert best >= result.objective - 1e-6


def test_local_sum_windows_recover_the_objective() -> None:
    X, y = tiny_1d()
    result = convexcnn.fit(
        X,
        y,
        kernel_size=2,
        beta=0.1,
        pooling="sum",
        pool_size=SIZE,
        pool_stride=STRIDE,
        patterns=2000,
    )
    assert isinstance(result.problem, WindowedSumReLU)
    assert result.network_objective == pytest.approx(result.objective, rel=1e-6)


# --------------------------------------------------------------------------------------------
# 2-D windows
# --------------------------------------------------------------------------------------------


GEOMETRY_2D = {"pool_size": (2, 2), "pool_stride": (2, 1)}


def fit_2d(pooling: str) -> tuple[np.ndarray, np.ndarray, convexcnn.FitResult]:
    """Images (6, 1, 5, 4), kernel (2, 1) → 4×4 grid, windows 2×2 every (2, 1): 6 overlapping
    windows. h = 2: max pooling uses the library's exact enumeration, avg pooling one filter
    per angular sector of the patch arrangement (computed here)."""
    rng = np.random.default_rng(9)
    X = rng.standard_normal((6, 1, 5, 4))
    y = rng.standard_normal(6)
    spec = PatchSpec((2, 1))
    if pooling == "max":
        patterns: object = max_patterns(X, spec, **GEOMETRY_2D)
    else:
        filters = all_cell_filters_2d(patches_of(X, spec).numpy().reshape(-1, 2))
        patterns = PatternSet.from_filters(X, spec, filters)
    result = convexcnn.fit(
        X, y, kernel_size=(2, 1), beta=0.05, pooling=pooling, patterns=patterns, **GEOMETRY_2D
    )
    return X, y, result


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_local_windows_2d(pooling: str) -> None:
    X, y, result = fit_2d(pooling)
    patches = patches_of(X, PatchSpec((2, 1))).numpy()
    windows = [w.tolist() for w in pool_windows((4, 4), (2, 2), (2, 1))]
    assert len(windows) == 6
    if pooling == "max":  # every pattern is present: the sectors of the §4 arrangement
        codes = result.patterns.winners.numpy()
        pairs = {(k, j) for w in windows for k in w for j in w if k < j}
        rows = [patches[:, k] - patches[:, j] for k, j in sorted(pairs)]
        rows = np.concatenate([patches.reshape(-1, 2), *rows])
        sector_codes = independent_winner_codes(patches, windows, all_cell_filters_2d(rows))
        assert as_key_set(codes) == as_key_set(sector_codes)
        reference = independent_max_cvxpy(patches, windows, codes, y, 0.05)
    else:
        masks = result.patterns.masks.numpy()
        assert len(masks) == 2 * patches.shape[0] * patches.shape[1]  # 192 sectors, all ≠ 0
        reference = independent_avg_window_cvxpy(patches, windows, masks, y, 0.05)
    assert result.objective == pytest.approx(reference, rel=1e-6)
    assert result.network_objective == pytest.approx(result.objective, rel=1e-6)
    assert isinstance(result.network.conv, torch.nn.Conv2d)


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_local_windows_2d_adam_does_not_beat_the_optimum(pooling: str) -> None:
    X, y, result = fit_2d(pooling)
    best = best_adam_restart(X, y, PatchSpec((2, 1)), 0.05, pooling=pooling, **GEOMETRY_2D)
    assert best >= result.objective - 1e-6


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def test_pool_option_validation() -> None:
    X, y = tiny_1d()
    with pytest.raises(ValueError, match="pool_size"):
        convexcnn.fit(X, y, kernel_size=2, pooling="max", pool_size=9)
    with pytest.raises(ValueError, match="pool_size"):
        convexcnn.fit(X, y, kernel_size=2, pooling="avg", pool_size=(2, 2))
    with pytest.raises(ValueError, match="pool_size"):
        convexcnn.fit(X, y, kernel_size=2, pooling="avg", pool_size=0)
    with pytest.raises(ValueError, match="pool_stride"):
        convexcnn.fit(X, y, kernel_size=2, pooling="max", pool_size=2, pool_stride=-1)
    with pytest.raises(ValueError, match="pool_stride needs pool_size"):
        convexcnn.fit(X, y, kernel_size=2, pooling="sum", pool_stride=2)
    with pytest.raises(ValueError, match="pool_stride needs pool_size"):
        convexcnn.fit(X, y, kernel_size=2, pooling="max", pool_stride=2)


def test_windowed_program_keeps_its_windows_under_with_patterns() -> None:
    X, y = tiny_1d()
    result = convexcnn.fit(
        X,
        y,
        kernel_size=2,
        beta=0.1,
        pooling="avg",
        pool_size=SIZE,
        pool_stride=STRIDE,
        patterns=300,
    )
    problem = result.problem
    again = problem.with_patterns(problem.patterns)
    assert isinstance(again, WindowedSumReLU)
    assert torch.allclose(again.patches, problem.patches)
    recovered = again.recover(result.solution.W)
    assert recovered.objective == pytest.approx(result.network_objective, rel=1e-12)
