"""Max-pooling activation patterns (SPEC §4): winner-or-inactive per (sample, window).

Pooling windows are given as a long tensor ``windows`` (Ω, S): row ω lists the S patch indices
(ascending) that window ω covers; global max pooling is the single window ``arange(K)``.

For a filter u and sample t, window ω has the value ``max_{k∈ω} (X_k u)_+``. Its *winner* is
``a_tω = argmax_{k∈ω} X_k u`` (ties → lowest patch index) when that maximum is ≥ 0, and the
window is *inactive* (stored as −1) otherwise. The pattern of u is the (n, Ω) winner array. On
the closed cone of filters with a given pattern

    active (t, ω):   X_{a_tω} u ≥ 0  and  X_{a_tω} u ≥ X_k u  for every k ∈ ω,
    inactive (t, ω): X_k u ≤ 0  for every k ∈ ω,

each window's value is linear in u: ``X_{a_tω} u`` (active) or 0 (inactive). Patterns are the
cells of the arrangement of the hyperplanes ``x_tkᵀu = 0`` and ``(x_tk − x_tj)ᵀu = 0`` (k, j in a
common window), so :func:`enumerate_max_patch_patterns` can list them all for small rank.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from .patterns import draw_generator_filters

__all__ = [
    "INACTIVE",
    "MaxPatternSet",
    "enumerate_max_patch_patterns",
    "global_window",
    "max_winners",
    "sample_max_patch_patterns",
]

#: Winner value of an inactive (sample, window) pair.
INACTIVE = -1

_CHUNK_BYTES = 64 * 2**20


def global_window(n_positions: int) -> torch.Tensor:
    """The single window of global max pooling over K positions, shape (1, K)."""
    return torch.arange(n_positions, dtype=torch.long)[None, :]


def max_winners(
    patches: torch.Tensor, filters: torch.Tensor, windows: torch.Tensor
) -> torch.Tensor:
    """Winner patterns of filters (F, h) on patches (n, K, h) → long (F, n, Ω), −1 = inactive.

    ``windows`` (Ω, S) long, ascending rows. Ties are broken by the lowest patch index.
    """
    values = torch.einsum("tkh,fh->ftk", patches, filters.to(patches.dtype))  # (F, n, K)
    in_windows = values[:, :, windows]  # (F, n, Ω, S)
    best, slot = in_windows.max(dim=-1)  # first maximal slot = lowest patch index
    winners = windows[torch.arange(windows.shape[0])[None, None, :], slot]  # (F, n, Ω)
    return torch.where(best >= 0, winners, torch.full_like(winners, INACTIVE))


@dataclass
class MaxPatternSet:
    """P distinct max-pooling patterns, none all-inactive.

    Attributes:
        winners: long (P, n, Ω); ``winners[i, t, ω]`` = winning patch of sample t in window ω,
            or −1 (inactive).
        filters: (P, h) generator filters; ``filters[i]`` realizes ``winners[i]``.
        windows: long (Ω, S) patch indices of each pooling window (shared by all patterns).
        n_drawn: filters tried (or cells enumerated) to obtain this set.
        source: "gaussian", "patches", "filters", "enumerated", ...
        complete: True when the set holds every pattern of the data (exact enumeration).
    """

    winners: torch.Tensor
    filters: torch.Tensor
    windows: torch.Tensor
    n_drawn: int
    source: str = "filters"
    history: list[str] = field(default_factory=list)
    complete: bool = False

    def __post_init__(self) -> None:
        if self.winners.dtype != torch.long or self.winners.ndim != 3:
            raise ValueError("MaxPatternSet.winners must be a long tensor of shape (P, n, Ω)")
        if self.windows.dtype != torch.long or self.windows.ndim != 2:
            raise ValueError("MaxPatternSet.windows must be a long tensor of shape (Ω, S)")
        if self.winners.shape[2] != self.windows.shape[0]:
            raise ValueError("MaxPatternSet.winners has a different number of windows than windows")
        if self.filters.ndim != 2 or self.filters.shape[0] != self.winners.shape[0]:
            raise ValueError("MaxPatternSet.filters must have shape (P, h), one row per pattern")

    def __len__(self) -> int:
        return int(self.winners.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.winners.shape[1])

    @property
    def n_windows(self) -> int:
        return int(self.windows.shape[0])

    @property
    def filter_size(self) -> int:
        return int(self.filters.shape[1])

    @property
    def active(self) -> torch.Tensor:
        """bool (P, n, Ω): window active (its maximum is ≥ 0)."""
        return self.winners >= 0

    def __repr__(self) -> str:
        return (
            f"MaxPatternSet(P={len(self)}, n={self.n_samples}, windows={tuple(self.windows.shape)},"
            f" h={self.filter_size}, drawn={self.n_drawn}, source={self.source!r})"
        )

    @classmethod
    def from_patch_filters(
        cls,
        patches: torch.Tensor,
        filters: torch.Tensor | np.ndarray,
        windows: torch.Tensor,
        *,
        source: str = "filters",
        n_drawn: int | None = None,
    ) -> MaxPatternSet:
        """Distinct non-trivial winner patterns of generator filters (F, h) (or Conv weights
        (F, C, *kernel)) on patches (n, K, h), in order of first appearance."""
        filt = torch.as_tensor(filters, dtype=patches.dtype)
        if filt.ndim in (3, 4):
            filt = filt.reshape(filt.shape[0], -1)
        n, K, h = patches.shape
        if filt.ndim != 2 or filt.shape[1] != h:
            raise ValueError(
                f"filters must have shape (F, {h}) (or Conv weights (F, C, *kernel) with "
                f"C·Πkernel = {h}); got {tuple(filt.shape)}"
            )
        if not torch.isfinite(filt).all():
            raise ValueError("filters contain NaN or Inf")
        kept_w: list[torch.Tensor] = []
        kept_f: list[torch.Tensor] = []
        seen: set[bytes] = set()
        chunk = max(1, _CHUNK_BYTES // max(1, 8 * n * K))
        for start in range(0, filt.shape[0], chunk):
            block = filt[start : start + chunk]
            win = max_winners(patches, block, windows)  # (F, n, Ω)
            rows = win.reshape(win.shape[0], -1).numpy().astype(np.int32)
            nontrivial = np.asarray((rows >= 0).any(axis=1), dtype=bool)
            _, first = np.unique(rows, axis=0, return_index=True)
            for i in np.sort(first):
                if not nontrivial[i]:
                    continue
                key = rows[i].tobytes()
                if key in seen:
                    continue
                seen.add(key)
                kept_w.append(win[i])
                kept_f.append(block[i])
        winners = (
            torch.stack(kept_w)
            if kept_w
            else torch.zeros((0, n, windows.shape[0]), dtype=torch.long)
        )
        filters_t = torch.stack(kept_f) if kept_f else torch.zeros((0, h), dtype=patches.dtype)
        drawn = int(filt.shape[0]) if n_drawn is None else n_drawn
        return cls(winners, filters_t, windows.clone(), drawn, source)

    def merged(self, other: MaxPatternSet) -> MaxPatternSet:
        """Union with another set on the same data and windows (this set's order first)."""
        if other.winners.shape[1:] != self.winners.shape[1:] or not torch.equal(
            other.windows, self.windows
        ):
            raise ValueError("cannot merge MaxPatternSets built on different data or windows")
        seen = {_key(w) for w in self.winners}
        extra = [i for i, w in enumerate(other.winners) if _key(w) not in seen]
        idx = torch.as_tensor(extra, dtype=torch.long)
        return MaxPatternSet(
            winners=torch.cat([self.winners, other.winners[idx]]),
            filters=torch.cat([self.filters, other.filters[idx].to(self.filters.dtype)]),
            windows=self.windows,
            n_drawn=self.n_drawn + other.n_drawn,
            source=self.source if not extra else f"{self.source}+{other.source}",
            history=[*self.history, f"merged {len(extra)} new of {len(other)}"],
            complete=self.complete or other.complete,
        )

    def subset(self, index: Iterable[int] | torch.Tensor) -> MaxPatternSet:
        """The patterns at ``index`` (in that order)."""
        idx = torch.as_tensor(list(index) if not isinstance(index, torch.Tensor) else index)
        idx = idx.to(torch.long)
        return MaxPatternSet(
            winners=self.winners[idx],
            filters=self.filters[idx],
            windows=self.windows,
            n_drawn=self.n_drawn,
            source=self.source,
            history=list(self.history),
        )


def _key(winners: torch.Tensor) -> bytes:
    return winners.reshape(-1).numpy().astype(np.int32).tobytes()


def sample_max_patch_patterns(
    patches: torch.Tensor,
    windows: torch.Tensor,
    n_filters: int,
    *,
    seed: int = 0,
    kind: str = "gaussian",
) -> MaxPatternSet:
    """Draw ``n_filters`` generator filters ("gaussian" or "patches", as for sum pooling),
    keep their distinct winner patterns that are not all-inactive."""
    filters = draw_generator_filters(patches, n_filters, seed=seed, kind=kind)
    return MaxPatternSet.from_patch_filters(patches, filters, windows, source=kind)


def comparison_pairs(windows: torch.Tensor) -> np.ndarray:
    """Distinct patch pairs (k, j), k < j, that share a window: (Q, 2) int array."""
    S = windows.shape[1]
    iu, ju = np.triu_indices(S, k=1)
    w = windows.numpy()
    pairs = np.stack([w[:, iu].reshape(-1), w[:, ju].reshape(-1)], axis=1)
    if pairs.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.sort(pairs, axis=1), axis=0)


def enumerate_max_patch_patterns(
    patches: torch.Tensor, windows: torch.Tensor, *, max_cells: int = 2_000_000
) -> MaxPatternSet:
    """Every max-pooling pattern, by exact enumeration of the SPEC §4 arrangement.

    Rows of the arrangement: ``x_tk`` (n·K) and ``x_tk − x_tj`` for each pair (k, j) sharing a
    window (n·Q). For each open cell (a sign vector from
    :func:`convexcnn.enumeration.enumerate_cells`) the winner of (t, ω) is the member that beats
    every other member (bit of x_tk − x_tj, with k < j, read as "k ≥ j"), active when its own
    bit is set. One generator filter per distinct pattern is found by a max-margin LP on its
    cone, and the pattern is re-derived from that filter (so it follows :func:`max_winners`'
    tie rule). Cost: polynomial in n·K for a fixed rank of the patch matrix (see
    :mod:`convexcnn.enumeration`); only practical for small h (1-D signals, h ≤ 3).
    """
    from .enumeration import enumerate_cells

    n, K, h = patches.shape
    X = patches.detach().cpu().numpy().astype(np.float64)
    pairs = comparison_pairs(windows)
    diff = X[:, pairs[:, 0]] - X[:, pairs[:, 1]]  # (n, Q, h)
    rows = np.concatenate([X.reshape(n * K, h), diff.reshape(-1, h)])
    cells = enumerate_cells(rows, max_cells=max_cells)  # bool (cells, nK + nQ)
    value_bit = cells[:, : n * K].reshape(-1, n, K)
    pair_bit = cells[:, n * K :].reshape(-1, n, len(pairs))
    # beats[c, t, k, j]: k ≥ j on cell c (k ≠ j in a common window)
    beats = np.zeros((cells.shape[0], n, K, K), dtype=bool)
    beats[:, :, pairs[:, 0], pairs[:, 1]] = pair_bit
    beats[:, :, pairs[:, 1], pairs[:, 0]] = ~pair_bit
    w = windows.numpy()
    S = w.shape[1]
    sub = beats[:, :, w[:, :, None], w[:, None, :]]  # (cells, n, Ω, S, S)
    sub = sub | np.eye(S, dtype=bool)
    is_winner = sub.all(axis=-1)  # (cells, n, Ω, S)
    slot = is_winner.argmax(axis=-1)
    winner = w[np.arange(w.shape[0])[None, None, :], slot]
    active = np.take_along_axis(value_bit, winner, axis=2)
    codes = np.where(active, winner, INACTIVE)
    codes = codes[(codes >= 0).reshape(codes.shape[0], -1).any(axis=1)]
    distinct = np.unique(codes.reshape(codes.shape[0], -1), axis=0).reshape(-1, n, w.shape[0])
    filters = (
        np.stack([_interior_filter(X, w, code) for code in distinct])
        if len(distinct)
        else (np.zeros((0, h)))
    )
    result = MaxPatternSet.from_patch_filters(
        patches,
        torch.as_tensor(filters, dtype=patches.dtype),
        windows,
        source="enumerated",
        n_drawn=int(cells.shape[0]),
    )
    result.history.append(f"{cells.shape[0]} cells, {len(distinct)} distinct winner patterns")
    result.complete = len(result) == len(distinct)
    return result


def _interior_filter(X: np.ndarray, windows: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Max-margin point of the open cone of a winner pattern (LP, |u|_∞ ≤ 1)."""
    from scipy.optimize import linprog

    n, _, h = X.shape
    rows: list[np.ndarray] = []
    for t in range(n):
        for o, members in enumerate(windows):
            a = code[t, o]
            if a < 0:
                rows.extend(-X[t, members])
                continue
            rows.append(X[t, a])
            rows.extend(X[t, a] - X[t, k] for k in members if k != a)
    G = np.asarray(rows)
    norms = np.linalg.norm(G, axis=1)
    G, norms = G[norms > 1e-12], norms[norms > 1e-12]
    # maximize s subject to G u ≥ s·‖g‖, −1 ≤ u ≤ 1, s ≤ 1
    A_ub = np.hstack([-G, norms[:, None]])
    c = np.zeros(h + 1)
    c[-1] = -1.0
    bounds = [(-1.0, 1.0)] * h + [(None, 1.0)]
    res = linprog(c, A_ub=A_ub, b_ub=np.zeros(len(G)), bounds=bounds, method="highs")
    return np.asarray(res.x[:h], dtype=np.float64)
