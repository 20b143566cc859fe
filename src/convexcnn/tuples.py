"""Branch tuples of the three-layer CNN with two ReLU layers (SPEC §8).

A branch of width m1 is ``g(X) = (Σ_l w1_l a(u_l))_+`` with ``a(u) = Σ_k (X_k u)_+ ∈ R^n``. On
the data it is linear in the filters inside one *tuple* τ = (s, i, δ): signs ``s_l = sign w1_l``,
the first-layer joint patch pattern ``i_l`` of every filter (an index into a
:class:`~convexcnn.patterns.PatternSet`), and the second-layer pattern
``δ = 1[Σ_l w1_l a(u_l) ≥ 0] ∈ {0,1}^n``.

Canonical form (the reductions of §8, plus two that follow from them):

* slots are sorted by (pattern, sign) — permuting the filters of a branch changes nothing;
* a slot whose filter has the all-zero pattern (a(u) = 0) is replaced by a copy of the first
  active slot; a branch with no active slot is dropped (``counts["zero"]``);
* all-negative signs give a zero branch: dropped (``counts["all_negative"]``); so is δ = 0
  (``counts["inactive"]``);
* δ = 1 on every sample (in particular all-positive signs) makes the branch linear; it is then a
  sum of single-pattern branches ±A_a c_a that are at least as cheap (path: equal cost; unit:
  ``Σ_l‖c_l‖/√m1 ≤ ‖c‖_F`` by Cauchy–Schwarz), so it is replaced by the *linear tuples*
  (+a, …, +a; δ = 1) of its patterns (``counts["linear"]``). Every first-layer pattern of the set
  gets its linear tuple;
* ``"path"``: a tuple with repeated (s_l, i_l) slots equals the tuple with those slots merged;
  it is dropped when a tuple with the same δ contains its distinct slots and more
  (``counts["merged"]``; only possible for m1 ≥ 3 with mixed signs).

Any tuple, realizable or not, is safe in the convex program: its cone 𝒞_τ makes every feasible
block a real branch. Missing tuples only make the program a restriction (an upper bound).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from .patterns import PatternSet, joint_masks

__all__ = [
    "REGULARIZATIONS",
    "TupleSet",
    "branch_activations",
    "enumerate_tuples",
    "sample_branches",
    "sample_tuples",
]

REGULARIZATIONS = ("path", "unit")

#: Filters processed at once when computing patterns of sampled branches (entries of M·U).
_CHUNK_ENTRIES = 1 << 23


def _check_regularization(regularization: str) -> str:
    if regularization not in REGULARIZATIONS:
        raise ValueError(
            f"regularization must be one of {list(REGULARIZATIONS)}; got {regularization!r}"
        )
    return regularization


def _void_rows(a: np.ndarray) -> np.ndarray:
    """Rows of a 2-D uint8 array as one opaque (hashable, sortable) item each."""
    a = np.ascontiguousarray(a)
    return a.view(np.dtype((np.void, a.shape[1]))).reshape(-1)


def branch_activations(patches: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """a(u) = Σ_k (X_k u)_+ for filters (B, h) on patches (n, K, h) → (n, B)."""
    n, K, h = patches.shape
    z = (patches.reshape(n * K, h) @ filters.T).clamp_min(0)
    return z.reshape(n, K, -1).sum(dim=1)


@dataclass
class TupleSet:
    """Distinct canonical tuples of a three-layer CNN on fixed training patches.

    Attributes:
        patterns: first-layer joint patterns (P1 of them), masks (P1, n, K).
        slots: long (T, m1), ``slots[τ, l]`` = pattern index of filter slot l.
        signs: int8 (T, m1), ±1.
        deltas: bool (T, n), second-layer pattern.
        regularization: "path" or "unit" (decides the path-only merge reduction).
        n_drawn: random branches drawn to build the set (0 when enumerated).
        complete: True when the set holds every tuple of the data (exact enumeration).
        counts: what the reductions did (drawn, zero, all_negative, inactive, linear, mixed,
            merged, duplicates, distinct).
    """

    patterns: PatternSet
    slots: torch.Tensor
    signs: torch.Tensor
    deltas: torch.Tensor
    regularization: str = "path"
    n_drawn: int = 0
    source: str = "branches"
    complete: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_regularization(self.regularization)
        T = self.slots.shape[0]
        if self.slots.ndim != 2 or self.signs.shape != self.slots.shape:
            raise ValueError("TupleSet.slots and .signs must both have shape (T, m1)")
        if self.deltas.ndim != 2 or self.deltas.shape[0] != T:
            raise ValueError("TupleSet.deltas must have shape (T, n)")
        if self.deltas.dtype != torch.bool:
            raise ValueError("TupleSet.deltas must be a bool tensor")

    # ----- sizes ------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.slots.shape[0])

    @property
    def branch_width(self) -> int:
        return int(self.slots.shape[1])

    @property
    def n_samples(self) -> int:
        return self.patterns.n_samples

    @property
    def n_linear(self) -> int:
        """Tuples with δ = 1 (the single-pattern linear tuples)."""
        return int(self.deltas.all(dim=1).sum())

    @property
    def n_mixed(self) -> int:
        """Tuples with both signs (the ones where the second ReLU acts)."""
        return len(self) - self.n_linear

    def __repr__(self) -> str:
        return (
            f"TupleSet(T={len(self)} [{self.n_linear} linear, {self.n_mixed} mixed], "
            f"P1={len(self.patterns)}, m1={self.branch_width}, n={self.n_samples}, "
            f"regularization={self.regularization!r}, drawn={self.n_drawn}, "
            f"source={self.source!r})"
        )

    def keys(self) -> np.ndarray:
        """One opaque key per tuple (slot codes and packed δ), for deduplication."""
        return _tuple_keys(self.slots.numpy(), self.signs.numpy(), self.deltas.numpy())

    # ----- construction -----------------------------------------------------------------
    @classmethod
    def from_branches(
        cls,
        patches: torch.Tensor,
        filters: torch.Tensor,
        weights: torch.Tensor,
        *,
        regularization: str = "path",
        base: TupleSet | None = None,
        source: str = "branches",
    ) -> TupleSet:
        """Canonical tuples of explicit branches, merged into ``base`` when given.

        Args:
            patches: (n, K, h) training patches (sum or avg pooling: the patterns are the same).
            filters: (B, m1, h) first-layer filters u_l of each branch.
            weights: (B, m1) second-layer weights w1_l (only their signs and the branch
                pre-activation Σ_l w1_l a(u_l) matter).
        """
        _check_regularization(regularization)
        n, K, h = patches.shape
        filt = torch.as_tensor(filters, dtype=patches.dtype)
        w1 = torch.as_tensor(weights, dtype=patches.dtype)
        if filt.ndim != 3 or filt.shape[2] != h or w1.shape != filt.shape[:2]:
            raise ValueError(
                f"filters must have shape (B, m1, {h}) and weights (B, m1); got "
                f"{tuple(filt.shape)} and {tuple(w1.shape)}"
            )
        B, m1, _ = filt.shape
        if base is not None:
            if base.branch_width != m1 or base.patterns.masks.shape[1:] != (n, K):
                raise ValueError("base TupleSet was built for another branch width or data")
            if base.regularization != regularization:
                raise ValueError("base TupleSet has another regularization")
        registry = _PatternRegistry(patches, base.patterns if base is not None else None)
        ids = np.empty((B, m1), dtype=np.int64)
        deltas = np.empty((B, n), dtype=bool)
        chunk = max(1, _CHUNK_ENTRIES // max(1, n * K * m1))
        for start in range(0, B, chunk):
            f = filt[start : start + chunk]
            b = f.shape[0]
            flat = f.reshape(b * m1, h)
            ids[start : start + b] = registry.add(flat).reshape(b, m1)
            act = branch_activations(patches, flat).reshape(n, b, m1)
            pre = (act * w1[start : start + b][None]).sum(dim=2)  # (n, b)
            deltas[start : start + b] = (pre >= 0).T.numpy()
        signs = np.where(w1.numpy() >= 0, 1, -1).astype(np.int8)
        patterns = registry.pattern_set(source=source, n_drawn=B * m1)
        slots, sgn, dlt, counts = _canonicalize(ids, signs, deltas, len(patterns), regularization)
        counts["drawn"] = B
        new = cls(
            patterns=patterns,
            slots=torch.as_tensor(slots),
            signs=torch.as_tensor(sgn),
            deltas=torch.as_tensor(dlt),
            regularization=regularization,
            n_drawn=B,
            source=source,
            counts=counts,
        )
        if base is None:
            return new
        return base.merged(new)

    def merged(self, other: TupleSet) -> TupleSet:
        """Union with a set built on the same data whose pattern list extends this one's.

        This set's tuples stay first, in order (solutions on it embed as a prefix)."""
        P = len(self.patterns)
        if len(other.patterns) < P or not torch.equal(
            other.patterns.masks[:P], self.patterns.masks
        ):
            raise ValueError(
                "merged: the other TupleSet's patterns must extend this set's patterns"
            )
        slots = np.concatenate([self.slots.numpy(), other.slots.numpy()])
        signs = np.concatenate([self.signs.numpy(), other.signs.numpy()])
        deltas = np.concatenate([self.deltas.numpy(), other.deltas.numpy()])
        T0 = len(self)
        slots, signs, deltas, _ = _dedupe(slots, signs, deltas, keep_first=T0)
        slots, signs, deltas = _add_linear(slots, signs, deltas, len(other.patterns))
        if self.regularization == "path":
            slots, signs, deltas, _ = _merge_path(slots, signs, deltas, protect=T0)
        counts = {k: self.counts.get(k, 0) + other.counts.get(k, 0) for k in _ADDITIVE_COUNTS}
        counts["distinct"] = int(slots.shape[0])
        added = int(slots.shape[0]) - T0
        return TupleSet(
            patterns=other.patterns,
            slots=torch.as_tensor(slots),
            signs=torch.as_tensor(signs),
            deltas=torch.as_tensor(deltas),
            regularization=self.regularization,
            n_drawn=self.n_drawn + other.n_drawn,
            source=self.source if added == 0 else f"{self.source}+{other.source}",
            complete=self.complete or other.complete,
            counts=counts,
            history=[*self.history, f"merged {added} new tuples of {len(other)}"],
        )

    def subset(self, index: torch.Tensor | list[int]) -> TupleSet:
        """The tuples at ``index`` (same pattern list)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return TupleSet(
            patterns=self.patterns,
            slots=self.slots[idx],
            signs=self.signs[idx],
            deltas=self.deltas[idx],
            regularization=self.regularization,
            n_drawn=self.n_drawn,
            source=self.source,
            counts=dict(self.counts),
            history=[*self.history, f"subset of {len(idx)}"],
        )


_ADDITIVE_COUNTS = ("drawn", "zero", "all_negative", "inactive", "linear", "merged", "duplicates")


class _PatternRegistry:
    """Maps joint masks to pattern indices, extending an existing PatternSet (order kept)."""

    def __init__(self, patches: torch.Tensor, base: PatternSet | None) -> None:
        self.patches = patches
        self.index: dict[bytes, int] = {}
        self.masks: list[torch.Tensor] = []
        self.filters: list[torch.Tensor] = []
        self.base = base
        if base is not None:
            packed = np.packbits(base.masks.reshape(len(base), -1).numpy(), axis=1)
            for i, key in enumerate(_void_rows(packed)):
                self.index[key.tobytes()] = i

    def add(self, filters: torch.Tensor) -> np.ndarray:
        """Pattern index of every filter (B, h); −1 for the all-zero pattern."""
        masks = joint_masks(self.patches, filters)  # (B, n, K)
        flat = masks.reshape(masks.shape[0], -1)
        zero = ~flat.any(dim=1).numpy()
        packed = np.packbits(flat.numpy(), axis=1)
        rows = _void_rows(packed)
        uniq, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
        ids_u = np.empty(len(uniq), dtype=np.int64)
        offset = len(self.base) if self.base is not None else 0
        for u, (key, f) in enumerate(zip(uniq, first, strict=True)):
            k = key.tobytes()
            idx = self.index.get(k)
            if idx is None:
                if zero[f]:
                    idx = -1
                else:
                    idx = offset + len(self.masks)
                    self.masks.append(masks[f])
                    self.filters.append(filters[f])
                self.index[k] = idx
            ids_u[u] = idx
        return ids_u[inverse.reshape(-1)]

    def pattern_set(self, *, source: str, n_drawn: int) -> PatternSet:
        n, K, h = self.patches.shape
        new_masks = (
            torch.stack(self.masks) if self.masks else torch.zeros((0, n, K), dtype=torch.bool)
        )
        new_filters = (
            torch.stack(self.filters)
            if self.filters
            else torch.zeros((0, h), dtype=self.patches.dtype)
        )
        if self.base is None:
            return PatternSet(masks=new_masks, filters=new_filters, n_drawn=n_drawn, source=source)
        return PatternSet(
            masks=torch.cat([self.base.masks, new_masks]),
            filters=torch.cat([self.base.filters, new_filters.to(self.base.filters.dtype)]),
            n_drawn=self.base.n_drawn + n_drawn,
            source=self.base.source if not self.masks else f"{self.base.source}+{source}",
            history=[*self.base.history, f"added {len(self.masks)} patterns"],
        )


# ----- canonicalization ------------------------------------------------------------------


def _tuple_keys(slots: np.ndarray, signs: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    codes = (slots.astype(np.int64) * 2 + (signs > 0)).astype("<i8")
    code_bytes = np.ascontiguousarray(codes).view(np.uint8).reshape(len(codes), 8 * slots.shape[1])
    raw = np.concatenate([code_bytes, np.packbits(deltas, axis=1)], axis=1)
    return _void_rows(raw)


def _sort_slots(slots: np.ndarray, signs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes = slots.astype(np.int64) * 2 + (signs > 0)
    order = np.argsort(codes, axis=1, kind="stable")
    return np.take_along_axis(slots, order, 1), np.take_along_axis(signs, order, 1)


def _dedupe(
    slots: np.ndarray, signs: np.ndarray, deltas: np.ndarray, keep_first: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Distinct tuples, first occurrences in their original order (the first ``keep_first``
    rows are assumed distinct and stay in front)."""
    keys = _tuple_keys(slots, signs, deltas)
    _, first = np.unique(keys, return_index=True)
    first = np.sort(first)
    dup = len(keys) - len(first)
    return slots[first], signs[first], deltas[first], dup


def _linear_tuples(pattern_ids: np.ndarray, m1: int, n: int) -> tuple[np.ndarray, ...]:
    k = len(pattern_ids)
    return (
        np.repeat(pattern_ids[:, None], m1, axis=1).astype(np.int64),
        np.ones((k, m1), dtype=np.int8),
        np.ones((k, n), dtype=bool),
    )


def _add_linear(
    slots: np.ndarray, signs: np.ndarray, deltas: np.ndarray, n_patterns: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Append the linear tuple (+a, …, +a; δ = 1) of every pattern that lacks one."""
    m1, n = slots.shape[1], deltas.shape[1]
    linear = deltas.all(axis=1)
    have = np.zeros(n_patterns, dtype=bool)
    have[slots[linear, 0]] = True
    missing = np.flatnonzero(~have)
    if len(missing) == 0:
        return slots, signs, deltas
    ls, lg, ld = _linear_tuples(missing, m1, n)
    return (
        np.concatenate([slots, ls]),
        np.concatenate([signs, lg]),
        np.concatenate([deltas, ld]),
    )


def _merge_path(
    slots: np.ndarray, signs: np.ndarray, deltas: np.ndarray, protect: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Path regularization: drop tuples with repeated slots dominated by a tuple with the same δ
    whose distinct slots strictly contain theirs. Linear tuples (δ = 1) and the first
    ``protect`` rows (an existing set whose order solutions rely on) are kept."""
    m1 = slots.shape[1]
    if m1 < 3:
        return slots, signs, deltas, 0
    codes = slots.astype(np.int64) * 2 + (signs > 0)
    has_dup = (np.diff(np.sort(codes, axis=1), axis=1) == 0).any(axis=1) & ~deltas.all(axis=1)
    if not has_dup.any():
        return slots, signs, deltas, 0
    dkeys = _void_rows(np.packbits(deltas, axis=1))
    covered: set[tuple[bytes, tuple[int, ...]]] = set()
    for t in np.flatnonzero(~has_dup):
        distinct = sorted(set(codes[t].tolist()))
        for r in range(1, len(distinct)):
            for sub in itertools.combinations(distinct, r):
                covered.add((dkeys[t].tobytes(), sub))
    keep = np.ones(len(slots), dtype=bool)
    for t in np.flatnonzero(has_dup):
        if t < protect:
            continue
        if (dkeys[t].tobytes(), tuple(sorted(set(codes[t].tolist())))) in covered:
            keep[t] = False
    return slots[keep], signs[keep], deltas[keep], int((~keep).sum())


def _canonicalize(
    ids: np.ndarray, signs: np.ndarray, deltas: np.ndarray, n_patterns: int, regularization: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Apply the module's reductions to raw branches (ids −1 = all-zero pattern)."""
    counts: dict[str, int] = {}
    zero_slot = ids < 0
    any_active = ~zero_slot.all(axis=1)
    counts["zero"] = int((~any_active).sum())
    ids, signs, deltas, zero_slot = (
        ids[any_active],
        signs[any_active],
        deltas[any_active],
        zero_slot[any_active],
    )
    first = np.argmax(~zero_slot, axis=1)
    rows = np.arange(len(ids))
    ids = np.where(zero_slot, ids[rows, first][:, None], ids)
    signs = np.where(zero_slot, signs[rows, first][:, None], signs)
    all_neg = (signs < 0).all(axis=1)
    counts["all_negative"] = int(all_neg.sum())
    inactive = ~deltas.any(axis=1) & ~all_neg
    counts["inactive"] = int(inactive.sum())
    linear = deltas.all(axis=1) & ~all_neg
    counts["linear"] = int(linear.sum())
    mixed = ~(all_neg | inactive | linear)
    slots, sgn = _sort_slots(ids[mixed], signs[mixed])
    dlt = deltas[mixed]
    slots, sgn, dlt, dup = _dedupe(slots, sgn, dlt)
    counts["duplicates"] = dup
    merged = 0
    if regularization == "path":
        slots, sgn, dlt, merged = _merge_path(slots, sgn, dlt)
    counts["merged"] = merged
    counts["mixed"] = int(slots.shape[0])
    slots, sgn, dlt = _add_linear(slots, sgn, dlt, n_patterns)
    counts["distinct"] = int(slots.shape[0])
    return slots, sgn, dlt, counts


# ----- sampling --------------------------------------------------------------------------


def sample_branches(
    patches: torch.Tensor,
    n_branches: int,
    *,
    branch_width: int = 2,
    seed: int = 0,
    kind: str = "gaussian",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random branches: filters (B, m1, h) and second-layer weights (B, m1).

    ``kind="gaussian"``: u_l ~ N(0, I_h); ``"patches"``: u_l = a random training patch minus the
    mean patch plus 10 % noise (data-driven hyperplanes). Weights w1 ~ N(0, I_m1), with the
    filter scales folded in so that both signs and all relative sizes occur.
    """
    if not isinstance(n_branches, int) or isinstance(n_branches, bool) or n_branches < 1:
        raise ValueError(f"n_branches must be a positive integer; got {n_branches!r}")
    if not isinstance(branch_width, int) or isinstance(branch_width, bool) or branch_width < 1:
        raise ValueError(f"branch_width must be a positive integer; got {branch_width!r}")
    gen = torch.Generator().manual_seed(int(seed))
    n, K, h = patches.shape
    B, m1 = n_branches, branch_width
    gauss = torch.randn((B, m1, h), generator=gen, dtype=patches.dtype)
    if kind == "gaussian":
        filters = gauss
    elif kind == "patches":
        flat = patches.reshape(n * K, h)
        pick = torch.randint(0, n * K, (B, m1), generator=gen)
        centred = flat[pick] - flat.mean(dim=0)
        scale = centred.norm(dim=-1, keepdim=True).clamp_min(1e-12) / np.sqrt(h)
        filters = centred + 0.1 * scale * gauss
    else:
        raise ValueError(f"kind must be 'gaussian' or 'patches'; got {kind!r}")
    weights = torch.randn((B, m1), generator=gen, dtype=patches.dtype)
    return filters, weights


def sample_tuples(
    patches: torch.Tensor,
    n_branches: int,
    *,
    branch_width: int = 2,
    regularization: str = "path",
    seed: int = 0,
    kind: str = "gaussian",
) -> TupleSet:
    """Sample ``n_branches`` random branches and keep their distinct canonical tuples."""
    filters, weights = sample_branches(
        patches, n_branches, branch_width=branch_width, seed=seed, kind=kind
    )
    return TupleSet.from_branches(
        patches, filters, weights, regularization=regularization, source=kind
    )


# ----- exact enumeration (h = 2, m1 = 2) -----------------------------------------------


def _wedges(M: np.ndarray, tol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Cells of a central line arrangement in R²: masks (P, N) and extreme rays (P, 2, 2).

    Rows of M are the line normals. Needs at least two non-parallel rows (pointed cells).
    """
    norms = np.linalg.norm(M, axis=1)
    rows = M[norms > tol * max(1.0, float(norms.max(initial=0.0)))]
    angles = np.mod(np.arctan2(rows[:, 0], -rows[:, 1]), np.pi)  # line directions, mod π
    angles = np.sort(angles)
    keep = np.r_[True, np.diff(angles) > 1e-12]
    angles = angles[keep]
    if len(angles) < 2:
        raise NotImplementedError(
            "exact tuple enumeration needs patches of rank 2 (at least two non-parallel patch "
            "directions); sample the tuples instead"
        )
    rays = np.concatenate([angles, angles + np.pi])  # sorted, 2L directions
    nxt = np.roll(rays, -1)
    nxt[-1] += 2 * np.pi
    mid = (rays + nxt) / 2
    bis = np.stack([np.cos(mid), np.sin(mid)], axis=1)
    masks = (bis @ M.T) >= 0
    R = np.stack(
        [np.stack([np.cos(rays), np.sin(rays)], 1), np.stack([np.cos(nxt), np.sin(nxt)], 1)],
        axis=2,
    )  # (P, 2, 2): columns are the two extreme rays
    return masks, R


def enumerate_tuples(
    patches: torch.Tensor,
    *,
    regularization: str = "path",
    max_cells: int = 100_000,
) -> TupleSet:
    """All tuples of a width-2 branch for filter size h = 2, exactly (no sampling).

    First-layer cells are the wedges of the line arrangement of the patch rows (each with its two
    extreme rays R_a). A mixed branch (+a, −b) is ``Q λ`` with ``Q = [A_a R_a | −A_b R_b]`` and
    λ ∈ R⁴₊, so its second-layer patterns are the cells of the arrangement of Q's rows inside the
    open orthant: the cells of ``[Q; I₄]`` (:func:`convexcnn.enumeration.enumerate_cells`) whose
    last four bits are 1. Closures of these cells cover the closed cone, so the set is complete.
    Cost: P1² small enumerations (P1 ≤ 2nK).
    """
    from .enumeration import enumerate_cells

    _check_regularization(regularization)
    n, K, h = patches.shape
    if h != 2:
        raise NotImplementedError(
            f"exact tuple enumeration is implemented for filter size h = 2 only (got h = {h}); "
            "use sample_tuples"
        )
    M = patches.reshape(n * K, h).numpy()
    masks, R = _wedges(M)
    nonzero = masks.any(axis=1)
    masks, R = masks[nonzero], R[nonzero]
    P = len(masks)
    mask_t = torch.as_tensor(masks.reshape(P, n, K))
    bis = R.sum(axis=2)
    patterns = PatternSet(
        masks=mask_t,
        filters=torch.as_tensor(
            bis / np.linalg.norm(bis, axis=1, keepdims=True), dtype=patches.dtype
        ),
        n_drawn=0,
        source="enumerated",
    )
    A = np.einsum("ptk,tkh->pth", masks.reshape(P, n, K).astype(float), patches.numpy())
    AR = np.einsum("pth,phr->ptr", A, R)  # (P, n, 2): A_a times each extreme ray
    eye = np.eye(4)
    slots_l, signs_l, deltas_l = [], [], []
    for a in range(P):
        for b in range(P):
            Q = np.concatenate([AR[a], -AR[b]], axis=1)
            cells = enumerate_cells(np.concatenate([Q, eye]), max_cells=max_cells)
            inside = cells[:, n:].all(axis=1)
            d = cells[inside, :n]
            d = d[d.any(axis=1) & ~d.all(axis=1)]
            if len(d) == 0:
                continue
            slots_l.append(np.tile([a, b], (len(d), 1)))
            signs_l.append(np.tile(np.array([1, -1], dtype=np.int8), (len(d), 1)))
            deltas_l.append(d)
    if slots_l:
        slots, sgn = _sort_slots(np.concatenate(slots_l), np.concatenate(signs_l))
        dlt = np.concatenate(deltas_l)
        slots, sgn, dlt, _ = _dedupe(slots, sgn, dlt)
    else:
        slots = np.zeros((0, 2), dtype=np.int64)
        sgn = np.zeros((0, 2), dtype=np.int8)
        dlt = np.zeros((0, n), dtype=bool)
    mixed = int(slots.shape[0])
    slots, sgn, dlt = _add_linear(slots, sgn, dlt, P)
    counts = {"mixed": mixed, "linear": P, "distinct": int(slots.shape[0])}
    return TupleSet(
        patterns=patterns,
        slots=torch.as_tensor(slots),
        signs=torch.as_tensor(sgn),
        deltas=torch.as_tensor(dlt),
        regularization=regularization,
        n_drawn=0,
        source="enumerated",
        complete=True,
        counts=counts,
    )
