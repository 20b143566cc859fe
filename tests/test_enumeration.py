"""Tests for exact enumeration of arrangement cells (convexcnn.enumeration)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from convexcnn.enumeration import (
    count_cells_upper_bound,
    enumerate_cells,
    estimate_enumeration_cost,
    sign_patterns_of,
)

# --------------------------------------------------------------------------------------------
# helpers


def _as_set(P: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in np.asarray(P, dtype=bool)}


def _nonzero_rows(M: np.ndarray) -> np.ndarray:
    return np.linalg.norm(M, axis=1) > 0


def _interior_margin(M: np.ndarray, signs: np.ndarray) -> tuple[float, np.ndarray]:
    """max t s.t. signs_t · m_tᵀu ≥ t for every given row, u ∈ [−1, 1]^h, t ≤ 1 (LP, HiGHS)."""
    h = M.shape[1]
    if M.shape[0] == 0:
        return 1.0, np.zeros(h)
    G = signs[:, None] * M
    A_ub = np.hstack([-G, np.ones((M.shape[0], 1))])
    res = linprog(
        c=np.r_[np.zeros(h), -1.0],
        A_ub=A_ub,
        b_ub=np.zeros(M.shape[0]),
        bounds=[(-1.0, 1.0)] * h + [(None, 1.0)],
        method="highs",
    )
    assert res.status == 0, res.message
    return float(-res.fun), res.x[:h]


def _assert_all_realizable(M: np.ndarray, P: np.ndarray, margin: float = 1e-7) -> None:
    """Every enumerated pattern is an open cell: an interior point exists (LP)."""
    nz = _nonzero_rows(M)
    for d in P:
        assert np.all(d[~nz]), "zero rows must have bit 1"
        t, u = _interior_margin(M[nz], 2.0 * d[nz] - 1.0)
        assert t > margin, f"pattern {d.astype(int)} is not realized (margin {t})"
        np.testing.assert_array_equal(sign_patterns_of(M, u)[0], d)


def _sampled_patterns(M: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    N = M.shape[0]
    out = []
    for start in range(0, n_samples, 100_000):
        U = rng.standard_normal((min(100_000, n_samples - start), M.shape[1]))
        packed = np.packbits(sign_patterns_of(M, U), axis=1)
        out.append(np.unique(packed.view(np.dtype((np.void, packed.shape[1])))))
    uniq = np.unique(np.concatenate(out)).view(np.uint8).reshape(-1, (N + 7) // 8)
    return np.unpackbits(uniq, axis=1, count=N).astype(bool)


def _reference_cells(M: np.ndarray) -> set[bytes]:
    """Independent oracle: insert the rows one by one and split cells with LP feasibility tests."""
    nz = np.flatnonzero(_nonzero_rows(M))
    h = M.shape[1]
    cells: list[tuple[list[float], np.ndarray]] = [([], np.zeros(h))]  # (signs, interior point)
    for step, t in enumerate(nz):
        rows = M[nz[: step + 1]]
        new_cells = []
        for signs, u in cells:
            value = float(M[t] @ u)
            for s in (1.0, -1.0):
                if s * value > 1e-9:  # the witness already lies on this side
                    new_cells.append(([*signs, s], u))
                    continue
                margin, w = _interior_margin(rows, np.array([*signs, s]))
                if margin > 1e-9:
                    new_cells.append(([*signs, s], w))
        cells = new_cells
    out = np.ones((len(cells), M.shape[0]), dtype=bool)
    for i, (signs, _) in enumerate(cells):
        out[i, nz] = np.array(signs) > 0
    return _as_set(out)


def _check_instance(M: np.ndarray, *, n_samples: int, seed: int) -> np.ndarray:
    P = enumerate_cells(M)
    assert P.dtype == np.bool_ and P.shape[1] == M.shape[0]
    assert len(_as_set(P)) == P.shape[0], "patterns must be distinct"
    sampled = _sampled_patterns(M, n_samples, seed)
    missing = _as_set(sampled) - _as_set(P)
    assert not missing, f"{len(missing)} sampled patterns were not enumerated"
    _assert_all_realizable(M, P)
    # Central symmetry: −u flips every bit except those of zero rows.
    nz = _nonzero_rows(M)
    flipped = P.copy()
    flipped[:, nz] = ~flipped[:, nz]
    assert _as_set(flipped) == _as_set(P)
    return P


# --------------------------------------------------------------------------------------------
# random instances, general and degenerate


def _instance(kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    N = int(rng.integers(3, 15))
    h = int(rng.integers(1, 4))
    if kind == "gaussian":
        return rng.standard_normal((N, h))
    if kind == "rank_deficient":
        r = max(1, h - 1)
        return rng.standard_normal((N, r)) @ rng.standard_normal((r, h))
    if kind == "duplicates":
        base = rng.standard_normal((max(2, N // 2), h))
        return base[rng.integers(0, base.shape[0], N)] * rng.uniform(0.5, 2.0, (N, 1))
    if kind == "zeros":
        M = rng.standard_normal((N, h))
        M[rng.random(N) < 0.3] = 0.0
        return M
    if kind == "antiparallel":
        base = rng.standard_normal((max(2, N // 2), h))
        return base[rng.integers(0, base.shape[0], N)] * rng.choice([-3.0, -1.0, 0.5, 2.0], (N, 1))
    if kind == "integer":
        return rng.integers(-2, 3, (N, h)).astype(float)
    raise AssertionError(kind)


KINDS = ["gaussian", "rank_deficient", "duplicates", "zeros", "antiparallel", "integer"]
CASES = [(kind, seed) for kind in KINDS for seed in range(4)]  # 24 instances


@pytest.mark.parametrize(("kind", "seed"), CASES)
def test_random_instances_match_sampling(kind: str, seed: int) -> None:
    M = _instance(kind, 1000 * KINDS.index(kind) + seed)
    P = _check_instance(M, n_samples=100_000, seed=seed)
    if kind == "gaussian":
        r = np.linalg.matrix_rank(M)
        assert P.shape[0] == count_cells_upper_bound(M.shape[0], r)


@pytest.mark.parametrize("seed", range(4))
def test_degenerate_integer_instances_match_lp_oracle(seed: int) -> None:
    rng = np.random.default_rng(77 + seed)
    M = rng.integers(-1, 2, (9, 3)).astype(float)
    M = np.vstack([M, M[:2] * -2.0, np.zeros((1, 3))])  # antiparallel copies and a zero row
    P = enumerate_cells(M)
    assert _as_set(P) == _reference_cells(M)
    _check_instance(M, n_samples=200_000, seed=seed)


def test_general_position_counts_equal_bound() -> None:
    rng = np.random.default_rng(5)
    for N, h in [(1, 3), (2, 3), (5, 1), (9, 2), (13, 3), (11, 4), (8, 5)]:
        M = rng.standard_normal((N, h))
        assert enumerate_cells(M).shape[0] == count_cells_upper_bound(N, min(N, h))


# --------------------------------------------------------------------------------------------
# property test


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 7).flatmap(
        lambda n: st.integers(1, 3).flatmap(
            lambda h: st.lists(
                st.lists(st.integers(-2, 2), min_size=h, max_size=h), min_size=n, max_size=n
            )
        )
    )
)
def test_property_small_integer_matrices(rows: list[list[int]]) -> None:
    M = np.array(rows, dtype=float)
    P = enumerate_cells(M)
    assert _as_set(P) == _reference_cells(M)
    nz = _nonzero_rows(M)
    assert np.all(P[:, ~nz])
    # Never more cells than N' distinct hyperplanes allow.
    if np.any(nz):
        unit = M[nz] / np.linalg.norm(M[nz], axis=1, keepdims=True)
        unit *= np.where(
            unit[np.arange(len(unit)), np.argmax(np.abs(unit) > 0.3, axis=1)] < 0, -1, 1
        )[:, None]
        n_distinct = len(np.unique(np.round(unit, 9), axis=0))
        assert P.shape[0] <= count_cells_upper_bound(n_distinct, np.linalg.matrix_rank(M))
    sampled = sign_patterns_of(M, np.random.default_rng(0).standard_normal((5_000, M.shape[1])))
    assert _as_set(sampled) <= _as_set(P)


# --------------------------------------------------------------------------------------------
# edge cases


def test_edge_cases() -> None:
    assert enumerate_cells(np.zeros((0, 3))).shape == (1, 0)
    np.testing.assert_array_equal(enumerate_cells(np.zeros((4, 2))), np.ones((1, 4), dtype=bool))
    # h = 1: two cells (u > 0, u < 0); zero rows are always on.
    M = np.array([[2.0], [-1.0], [0.0], [3.0]])
    expected = np.array([[False, True, True, False], [True, False, True, True]])
    assert _as_set(enumerate_cells(M)) == _as_set(expected)
    # Rank 1 inside R^3: still two cells.
    v = np.array([1.0, -2.0, 0.5])
    M = np.outer([1.0, -3.0, 2.0, 0.0], v)
    P = enumerate_cells(M)
    assert _as_set(P) == _as_set(np.array([[1, 0, 1, 1], [0, 1, 0, 1]], dtype=bool))
    # Identical rows: one hyperplane.
    assert enumerate_cells(np.ones((5, 3))).shape == (2, 5)
    # Coordinate hyperplanes in R^3: the 8 orthants.
    assert enumerate_cells(np.eye(3)).shape == (8, 3)
    # Three planes through one line in R^3 (degenerate): 6 cells, not the generic 8.
    M = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert enumerate_cells(M).shape == (6, 3)
    # Braid arrangement x_i = x_j in R^4 (rank 3, many concurrencies): 4! = 24 chambers.
    rows = [np.eye(4)[i] - np.eye(4)[j] for i in range(4) for j in range(i + 1, 4)]
    assert enumerate_cells(np.array(rows)).shape == (24, 6)


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="2-D"):
        enumerate_cells(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        enumerate_cells(np.array([[np.nan, 1.0]]))


def test_upper_bound_and_cost() -> None:
    assert count_cells_upper_bound(0, 3) == 1
    assert count_cells_upper_bound(5, 0) == 1
    assert count_cells_upper_bound(4, 1) == 2
    assert count_cells_upper_bound(4, 2) == 8
    assert count_cells_upper_bound(3, 3) == 8
    assert count_cells_upper_bound(4, 3) == 14
    assert count_cells_upper_bound(10, 10) == 2**10
    assert estimate_enumeration_cost(100, 3) > estimate_enumeration_cost(50, 3) > 0
    assert estimate_enumeration_cost(50, 4) > estimate_enumeration_cost(50, 3)


def test_refuses_hopeless_size_before_starting() -> None:
    M = np.random.default_rng(0).standard_normal((20_000, 4))
    start = time.perf_counter()
    with pytest.raises(ValueError, match="sampled patterns") as err:
        enumerate_cells(M)
    assert time.perf_counter() - start < 5.0
    message = str(err.value)
    assert "N=20000" in message and "r=4" in message
    assert str(count_cells_upper_bound(20_000, 4)) in message
    with pytest.raises(ValueError, match="max_cells=10"):
        enumerate_cells(np.random.default_rng(1).standard_normal((10, 3)), max_cells=10)


# --------------------------------------------------------------------------------------------
# the matrices convexcnn actually feeds in (SPEC §3, §4)


def _patches_1d(x: np.ndarray, f: int) -> np.ndarray:
    """x: (n, C, L) → stacked patch matrix (n·K, C·f) in (channel, position) order."""
    n, C, L = x.shape
    K = L - f + 1
    patches = np.stack([x[:, :, k : k + f].reshape(n, C * f) for k in range(K)], axis=1)
    return patches.reshape(n * K, C * f)


def test_sum_pooling_patch_matrix() -> None:
    x = np.random.default_rng(3).standard_normal((5, 1, 9))
    M = _patches_1d(x, 3)  # (35, 3)
    P = enumerate_cells(M)
    assert P.shape[0] == count_cells_upper_bound(M.shape[0], 3)
    sampled = _sampled_patterns(M, 200_000, 0)
    assert _as_set(sampled) <= _as_set(P)


def test_max_pooling_difference_arrangement() -> None:
    x = np.random.default_rng(4).integers(-2, 3, (2, 1, 5)).astype(float)
    X = _patches_1d(x, 3).reshape(2, 3, 3)  # (n, K, h)
    rows = [X[t, k] for t in range(2) for k in range(3)]
    rows += [X[t, k] - X[t, j] for t in range(2) for k in range(3) for j in range(k + 1, 3)]
    M = np.array(rows)
    P = _check_instance(M, n_samples=200_000, seed=1)
    assert _as_set(P) == _reference_cells(M)
