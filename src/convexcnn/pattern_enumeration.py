"""Every joint activation pattern of the two-layer CNN, with a generator filter each (SPEC §3, §10).

The joint patterns ``1[M u ≥ 0]`` of the stacked patch matrix ``M ∈ R^{nK×h}`` are the open cells
of the central arrangement of M's rows, enumerated exactly by
:func:`convexcnn.enumeration.enumerate_cells` (polynomial for fixed rank). A
:class:`~convexcnn.patterns.PatternSet` also needs one filter realizing each pattern: most are
found by matching the patterns of random Gaussian filters, the rest by a linear program that
maximizes the margin ``min_t σ_t m̂_tᵀu`` inside the cell (unit-normalized rows, ``‖u‖_∞ ≤ 1``).
"""

from __future__ import annotations

import numpy as np
import torch

from .enumeration import count_cells_upper_bound, enumerate_cells

__all__ = ["DEFAULT_MAX_PATTERNS", "enumerate_patch_patterns", "interior_filters"]

#: Default refusal threshold of :func:`enumerate_patch_patterns` (cells of the arrangement).
DEFAULT_MAX_PATTERNS = 100_000

#: Random filters tried per cell before falling back to linear programs.
_RANDOM_PER_CELL = 20
_RANDOM_CHUNK = 1 << 14


def interior_filters(
    M: np.ndarray, cells: np.ndarray, *, seed: int = 0, tol: float = 1e-9
) -> tuple[np.ndarray, np.ndarray]:
    """One filter u with ``1[M u ≥ 0] = cell`` for each row of ``cells`` (P, N).

    Returns ``(filters (P, h), found (P,) bool)``; ``found[i]`` is False when no such filter
    exists at floating-point resolution (the LP margin is ≤ ``tol``: a numerically degenerate
    cell). Rows of M with norm ≤ ``tol``·max are zero rows (bit 1 in every pattern).
    """
    h = M.shape[1]
    P = cells.shape[0]
    filters = np.zeros((P, h))
    found = np.zeros(P, dtype=bool)
    if P == 0:
        return filters, found
    index = {np.packbits(row).tobytes(): i for i, row in enumerate(cells)}
    rng = np.random.default_rng(seed)
    budget = _RANDOM_PER_CELL * P
    drawn = 0
    while drawn < budget and not found.all():
        U = rng.standard_normal((min(_RANDOM_CHUNK, budget - drawn), h))
        drawn += U.shape[0]
        packed = np.packbits(U @ M.T >= 0, axis=1)
        for row, key in zip(U, packed, strict=True):
            hit = index.get(key.tobytes())
            if hit is not None and not found[hit]:
                filters[hit], found[hit] = row, True
    missing = np.flatnonzero(~found)
    if missing.size:
        norms = np.linalg.norm(M, axis=1)
        nonzero = norms > tol * max(float(norms.max()), 1e-300)
        Mn = M[nonzero] / norms[nonzero, None]
        for i in missing:
            u = _max_margin_point(Mn, 2.0 * cells[i, nonzero] - 1.0, tol)
            if u is not None and np.array_equal(M @ u >= 0, cells[i]):
                filters[i], found[i] = u, True
    return filters, found


def _max_margin_point(Mn: np.ndarray, signs: np.ndarray, tol: float) -> np.ndarray | None:
    """argmax_u min_t signs_t·m_tᵀu over ‖u‖_∞ ≤ 1 (LP); None when the margin is ≤ tol."""
    from scipy.optimize import linprog

    h = Mn.shape[1]
    if Mn.shape[0] == 0:
        return np.ones(h)
    G = signs[:, None] * Mn
    res = linprog(
        c=np.r_[np.zeros(h), -1.0],
        A_ub=np.hstack([-G, np.ones((G.shape[0], 1))]),
        b_ub=np.zeros(G.shape[0]),
        bounds=[(-1.0, 1.0)] * h + [(None, 1.0)],
        method="highs",
    )
    if res.status != 0 or -float(res.fun) <= tol:
        return None
    return np.asarray(res.x[:h])


def enumerate_patch_patterns(
    patches: torch.Tensor, *, max_patterns: int = DEFAULT_MAX_PATTERNS, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """All distinct non-zero joint patterns of patches (n, K, h) with generator filters.

    Returns ``(masks (P, n, K) bool, filters (P, h), dropped)``, ``dropped`` = cells without a
    floating-point realization (0 for data in reasonable position). Refuses with ValueError,
    before enumerating, when the arrangement can have more than ``max_patterns`` cells.
    """
    n, K, h = patches.shape
    M = patches.reshape(n * K, h).detach().cpu().double().numpy()
    rank = int(np.linalg.matrix_rank(M)) if M.size else 0
    bound = count_cells_upper_bound(n * K, rank)
    try:
        cells = enumerate_cells(M, max_cells=max_patterns)
    except ValueError as err:
        raise ValueError(
            f"exact pattern enumeration refused: {n}·{K} = {n * K} patch rows of rank {rank} "
            f"(up to {bound:,} patterns; limit max_patterns={max_patterns:,}). Use sampled "
            "patterns (fit(patterns=<number of filters>)), pattern growth "
            f"(fit(grow_patterns=True)), fewer samples or a smaller kernel. [{err}]"
        ) from None
    cells = cells[cells.any(axis=1)]
    filters, found = interior_filters(M, cells, seed=seed)
    dropped = int((~found).sum())
    masks = torch.as_tensor(cells[found]).reshape(-1, n, K)
    return masks, torch.as_tensor(filters[found], dtype=patches.dtype), dropped
