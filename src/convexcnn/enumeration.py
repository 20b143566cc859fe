"""Exact enumeration of the ReLU activation patterns of a data matrix.

A filter ``u ∈ R^h`` induces the *pattern* ``1[M u ≥ 0] ∈ {0,1}^N`` on the rows of a matrix
``M ∈ R^{N×h}``. Up to measure zero, patterns are the full-dimensional (open) cells of the central
hyperplane arrangement ``{u : m_tᵀu = 0}``; on the closure of a cell with pattern ``d`` we have
``(M u)_+ = diag(d) M u`` (SPEC §2.2). For the two-layer CNN with sum pooling ``M`` is the stacked
patch matrix (SPEC §3); for max pooling the hyperplanes are the patch rows and their pairwise
differences (SPEC §4). The functions here take whatever ``M`` they are given.

Method (ray method with recursion on degenerate rays)
-----------------------------------------------------
1. Reduce to the row space: ``Y = M V_r`` with ``V_r`` the top-``r`` right singular vectors of
   ``M`` (``r`` = numerical rank). Patterns only depend on ``Y``; the arrangement in ``R^r`` is
   essential (the hyperplanes meet only in ``0``).
2. Zero rows get bit 1 in every pattern. The other rows are normalized and deduplicated up to
   scale and sign, giving ``N'`` distinct hyperplanes with unit normals ``a_j``.
3. For ``r ≥ 2`` every open cell's closure is a pointed polyhedral cone, hence has an extreme ray
   ``v``: a line on which a rank-``(r−1)`` subset ``Z(v)`` of the hyperplanes meet. The cells whose
   closure contains ``v`` are exactly: sign ``sign(a_jᵀv)`` on every hyperplane not through ``v``,
   combined with any cell of the arrangement ``Z(v)`` restricted to ``v^⊥ ≅ R^{r−1}`` (an essential
   arrangement one dimension lower). All rays are found from the ``(r−1)``-subsets of independent
   hyperplanes. When exactly ``r−1`` hyperplanes pass through ``v`` (general position) the local
   cells are all ``2^{r−1}`` sign combinations; otherwise the local arrangement is enumerated
   recursively, so non-realizable combinations never appear. Cells come in antipodal pairs, so only
   the ``+v`` direction of each ray is visited and complements are added at the end.

The result is exact up to the numerical resolution ``tol``: two normals closer than ``tol`` (in
angle) are one hyperplane, a hyperplane at distance ``≤ tol`` from a ray passes through it, and
rows whose norm is ``≤ tol`` times the largest row norm count as zero; the rank counts singular
values above ``tol`` times the largest.

Complexity for ``N'`` distinct hyperplanes in rank ``r`` (polynomial for fixed ``r``): the ray
search costs ``O(C(N', r−1)·(r³ + N'·r))``; generating cells costs ``O(C(N', r−1)·2^{r−1}·N')`` bit
operations in general position (degenerate rays recurse on fewer hyperplanes in one dimension
less); deduplication sorts ``O(C(N', r−1)·2^{r−1})`` packed rows. The output has at most
``count_cells_upper_bound(N', r) = 2·Σ_{i<r} C(N'−1, i) = O(N'^{r−1})`` rows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "count_cells_upper_bound",
    "enumerate_cells",
    "estimate_enumeration_cost",
    "sign_patterns_of",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.intp]

# Number of bool entries materialized at once when generating candidate cells.
_CHUNK_ENTRIES = 1 << 23


def count_cells_upper_bound(N: int, r: int) -> int:
    """Maximum number of open cells of a central arrangement of ``N`` hyperplanes in ``R^r``.

    Attained exactly in general position: ``2·Σ_{i=0}^{r−1} C(N−1, i)``. With no hyperplanes
    (``N = 0``) or in rank ``r = 0`` there is a single cell.
    """
    N, r = int(N), int(r)
    if N < 0 or r < 0:
        raise ValueError(f"N and r must be non-negative, got N={N}, r={r}")
    if N == 0 or r == 0:
        return 1
    return 2 * sum(math.comb(N - 1, i) for i in range(r))


def estimate_enumeration_cost(N: int, r: int) -> float:
    """Rough number of elementary operations ``enumerate_cells`` needs in the worst case.

    ``C(N, r−1)`` candidate rays, each costing ``r³`` for its null vector, ``N·r`` to find the
    hyperplanes through it and ``2^{r−1}·N`` to write the cells around it.
    """
    N, r = int(N), int(r)
    if N < 0 or r < 0:
        raise ValueError(f"N and r must be non-negative, got N={N}, r={r}")
    if N == 0 or r == 0:
        return 1.0
    if r == 1:
        return float(N)
    rays = float(math.comb(N, r - 1))
    return rays * (r**3 + N * r + 2 ** (r - 1) * N)


def sign_patterns_of(M: ArrayLike, U: ArrayLike) -> BoolArray:
    """Patterns ``1[M u ≥ 0]`` for a batch of filters.

    ``M`` has shape ``(N, h)``; ``U`` has shape ``(B, h)`` (or ``(h,)`` for a single filter).
    Returns a bool array of shape ``(B, N)``.
    """
    M_arr = np.asarray(M, dtype=np.float64)
    U_arr = np.atleast_2d(np.asarray(U, dtype=np.float64))
    if M_arr.ndim != 2 or U_arr.ndim != 2 or U_arr.shape[1] != M_arr.shape[1]:
        raise ValueError(
            f"expected M of shape (N, h) and U of shape (B, h), got {M_arr.shape} and {U_arr.shape}"
        )
    result: BoolArray = (U_arr @ M_arr.T) >= 0
    return result


def enumerate_cells(M: ArrayLike, *, max_cells: int = 2_000_000, tol: float = 1e-9) -> BoolArray:
    """All distinct patterns ``1[M u > 0]`` of the open cells of the arrangement of ``M``'s rows.

    Parameters
    ----------
    M:
        Data matrix of shape ``(N, h)``; its rows are the normals of hyperplanes through the origin.
    max_cells:
        Refuse (``ValueError``, before any enumeration work) when the number of cells can exceed
        this, judged by ``count_cells_upper_bound(N', r)`` for the ``N'`` distinct hyperplanes and
        the rank ``r`` of ``M``.
    tol:
        Numerical resolution (see the module docstring).

    Returns
    -------
    Bool array of shape ``(P, N)``: one row per open cell, rows distinct, in a deterministic
    order (first half of the rows, then their antipodes ``−u`` in the same order). A zero row of
    ``M`` has bit 1 in every pattern (``1[0 ≥ 0] = 1``); duplicated, parallel or antiparallel rows
    are one hyperplane. Degenerate data (non-general position, ``rank(M) < h``, ``h = 1``) is
    handled exactly. ``rank(M) = 0`` gives the single all-ones pattern.

    Complexity: polynomial for fixed rank; see the module docstring.
    """
    M_arr = np.asarray(M, dtype=np.float64)
    if M_arr.ndim != 2:
        raise ValueError(f"M must be a 2-D array (N, h), got shape {M_arr.shape}")
    if not np.all(np.isfinite(M_arr)):
        raise ValueError("M contains NaN or infinite entries")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    if max_cells < 1:
        raise ValueError(f"max_cells must be at least 1, got {max_cells}")
    N, h = M_arr.shape
    all_ones = np.ones((1, N), dtype=bool)
    if N == 0 or h == 0:
        return all_ones
    scale = float(np.max(np.linalg.norm(M_arr, axis=1)))
    if scale == 0.0:
        return all_ones

    # 1. Row space of rank r.
    _, s, Vt = np.linalg.svd(M_arr / scale, full_matrices=False)
    r = int(np.sum(s > tol * s[0]))
    Y = (M_arr / scale) @ Vt[:r].T

    # 2. Zero rows, normalization, deduplication up to scale and sign.
    norms = np.linalg.norm(Y, axis=1)
    nonzero = norms > tol
    if not np.any(nonzero):
        return all_ones
    A_rows = Y[nonzero] / norms[nonzero, None]
    A, group, flip = _dedupe_hyperplanes(A_rows, tol)
    n_distinct = A.shape[0]

    bound = count_cells_upper_bound(n_distinct, r)
    if bound > max_cells:
        cost = estimate_enumeration_cost(n_distinct, r)
        raise ValueError(
            f"enumerate_cells refuses: N={N} rows ({n_distinct} distinct hyperplanes) in rank "
            f"r={r} can have up to {bound} cells, more than max_cells={max_cells} "
            f"(estimated cost ~{cost:.2e} operations). Use fewer samples, a smaller kernel, or "
            f"sampled patterns instead (or raise max_cells if you really want this)."
        )

    # 3. Cells of the essential arrangement of distinct hyperplanes, mapped back to the rows.
    # The map from cells to patterns is injective, so the rows stay distinct.
    cells = _essential_cells(A, tol)
    mapped = np.take(cells, group, axis=1)
    mapped ^= flip[None, :]
    if np.all(nonzero):
        return mapped
    out = np.ones((cells.shape[0], N), dtype=bool)
    out[:, np.flatnonzero(nonzero)] = mapped
    return out


# --------------------------------------------------------------------------------------------
# internals


def _dedupe_hyperplanes(A: FloatArray, tol: float) -> tuple[FloatArray, IntArray, BoolArray]:
    """Merge unit normals that are equal up to sign (rounded on a grid of size ``tol``).

    Returns ``(A_unique, group, flip)`` with ``A[i] ≈ (−1)^flip[i] · A_unique[group[i]]``.
    Near-duplicates that land in different grid cells stay separate; the rest of the algorithm
    tolerates that (they are then found to pass through the same rays).
    """
    n, r = A.shape
    # Canonical sign: the first coordinate with |a_k| > 1/(2√r) (one with |a_k| ≥ 1/√r exists)
    # is made positive. Threshold far from 0, so rounding noise cannot flip the choice.
    big = np.abs(A) > 0.5 / math.sqrt(r)
    first = np.argmax(big, axis=1)
    flip = A[np.arange(n), first] < 0
    canon = np.where(flip[:, None], -A, A)
    keys = np.round(canon / max(tol, 1e-15)).astype(np.int64)
    _, first_idx, group = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return canon[first_idx], group.reshape(-1).astype(np.intp), flip


def _all_sign_vectors(k: int) -> BoolArray:
    """All ``2^k`` bool vectors of length ``k``, shape ``(2^k, k)``."""
    codes = np.arange(1 << k)[:, None]
    result: BoolArray = ((codes >> np.arange(k)[None, :]) & 1).astype(bool)
    return result


def _subset_chunks(n: int, k: int, chunk: int) -> Iterator[IntArray]:
    """All ``k``-subsets of ``range(n)`` (lexicographic), as index arrays of ≤ ``chunk`` rows."""
    if k == 1:
        idx = np.arange(n, dtype=np.intp)[:, None]
        for start in range(0, n, chunk):
            yield idx[start : start + chunk]
        return
    if k == 2:
        i, j = np.triu_indices(n, 1)
        pairs = np.stack([i, j], axis=1).astype(np.intp)
        for start in range(0, len(pairs), chunk):
            yield pairs[start : start + chunk]
        return
    combos = itertools.combinations(range(n), k)
    while True:
        flat = np.fromiter(
            itertools.chain.from_iterable(itertools.islice(combos, chunk)), dtype=np.intp
        )
        if flat.size == 0:
            return
        yield flat.reshape(-1, k)


def _null_vectors(AS: FloatArray, tol: float) -> tuple[FloatArray, BoolArray]:
    """Unit null vectors of a batch of ``(r−1)×r`` matrices with unit rows; ``ok`` = full rank."""
    c, _, r = AS.shape
    if r == 2:
        a = AS[:, 0, :]
        V = np.stack([-a[:, 1], a[:, 0]], axis=1)
        return V, np.ones(c, dtype=bool)
    if r == 3:
        V = np.cross(AS[:, 0, :], AS[:, 1, :])
        nrm = np.linalg.norm(V, axis=1)
        ok = nrm > tol
        V[ok] /= nrm[ok, None]
        return V, ok
    _, s, Vh = np.linalg.svd(AS, full_matrices=True)
    return np.ascontiguousarray(Vh[:, -1, :]), s[:, -1] > tol


def _orthogonal_complement(v: FloatArray) -> FloatArray:
    """Orthonormal basis of ``v^⊥`` as the columns of an ``r × (r−1)`` matrix."""
    _, _, Vh = np.linalg.svd(v.reshape(1, -1), full_matrices=True)
    basis: FloatArray = Vh[1:].T
    return basis


def _pack(P: BoolArray) -> NDArray[np.uint8]:
    return np.packbits(P, axis=1)


def _unique_packed(packed: NDArray[np.uint8]) -> NDArray[np.uint8]:
    if packed.shape[0] <= 1:
        return packed
    nbytes = packed.shape[1]
    view = np.ascontiguousarray(packed).view(np.dtype((np.void, nbytes))).reshape(-1)
    uniq = np.unique(view)
    result: NDArray[np.uint8] = uniq.view(np.uint8).reshape(-1, nbytes)
    return result


def _canonical_half(P: BoolArray) -> BoolArray:
    """Represent each antipodal pair {p, ~p} by its member with bit 0 set."""
    result: BoolArray = P ^ ~P[:, :1]
    return result


def _essential_cells(A: FloatArray, tol: float) -> BoolArray:
    """Cells of the essential central arrangement with distinct unit normals ``A`` (n × r).

    Returns a bool array ``(P, n)``; entry ``[p, j]`` is ``a_jᵀu > 0`` on cell ``p``.
    """
    n, r = A.shape
    if r == 1:
        s = A[:, 0] > 0
        return np.stack([s, ~s])
    if n == r:  # r independent hyperplanes: every sign vector is a cell
        return _all_sign_vectors(r)

    k = r - 1
    combos = _all_sign_vectors(k)
    n_combos = combos.shape[0]
    chunk = max(1, _CHUNK_ENTRIES // (n_combos * n))
    halves: list[NDArray[np.uint8]] = []
    deg_keys: list[NDArray[np.uint8]] = []
    deg_rays: list[FloatArray] = []

    for S in _subset_chunks(n, k, chunk):
        V, ok = _null_vectors(A[S], tol)
        if not np.all(ok):
            S, V = S[ok], V[ok]
        if S.shape[0] == 0:
            continue
        D = V @ A.T  # (c, n): a_jᵀv for every hyperplane j
        Z = np.abs(D) <= tol  # hyperplanes through the ray
        simple = Z.sum(axis=1) == k
        if np.any(simple):
            # General-position ray: exactly the r−1 independent hyperplanes of S pass through it,
            # so all 2^{r−1} sign combinations on S are cells around it.
            Ss = S[simple]
            c = Ss.shape[0]
            P = np.broadcast_to((D[simple] > 0)[None], (n_combos, c, n)).copy()
            rows = np.arange(c)[:, None]
            for t in range(n_combos):
                P[t][rows, Ss] = combos[t][None, :]
            halves.append(_unique_packed(_pack(_canonical_half(P.reshape(-1, n)))))
        if not np.all(simple):
            deg_keys.append(_pack(Z[~simple]))
            deg_rays.append(V[~simple])

    if deg_keys:
        keys = np.concatenate(deg_keys)
        rays = np.concatenate(deg_rays)
        nbytes = keys.shape[1]
        view = np.ascontiguousarray(keys).view(np.dtype((np.void, nbytes))).reshape(-1)
        _, first = np.unique(view, return_index=True)
        for i in first:
            halves.append(_unique_packed(_pack(_cells_around_ray(A, rays[i], keys[i], tol))))

    if not halves:  # cannot happen for an essential arrangement; kept as a guard
        raise RuntimeError("enumerate_cells found no ray; the arrangement is not essential")
    half = np.unpackbits(_unique_packed(np.concatenate(halves)), axis=1, count=n).view(bool)
    return np.concatenate([half, ~half])


def _cells_around_ray(
    A: FloatArray, v: FloatArray, key: NDArray[np.uint8], tol: float
) -> BoolArray:
    """Canonical halves of the cells whose closure contains the ray ``R_+ v`` (degenerate ray)."""
    n, r = A.shape
    idx = np.flatnonzero(np.unpackbits(key, count=n))
    local = A[idx] @ _orthogonal_complement(v)
    local /= np.linalg.norm(local, axis=1, keepdims=True)
    L, group, flip = _dedupe_hyperplanes(local, tol)
    s = np.linalg.svd(L, compute_uv=False)
    if int(np.sum(s > tol)) < r - 1:  # not a ray after all (numerically); other rays cover it
        return np.zeros((0, n), dtype=bool)
    local_cells = _essential_cells(L, tol)
    P = np.broadcast_to((A @ v > 0)[None, :], (local_cells.shape[0], n)).copy()
    P[:, idx] = local_cells[:, group] ^ flip[None, :]
    return _canonical_half(P)
