"""Activation-pattern sets for the two-layer ReLU CNN (SPEC §3, §10).

A filter u ∈ R^h induces the joint pattern ``d(u) = 1[M u ≥ 0]`` over every (sample, patch)
pair, stored as a (n, K) bool mask. A :class:`PatternSet` holds P distinct non-zero masks, one
generator filter per mask (a filter that realizes it), and bookkeeping about how it was built.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from .patches import PatchSpec, patches_of

__all__ = ["PatternSet", "joint_masks", "sample_patch_patterns", "sample_patterns"]

_FILTER_CHUNK_BYTES = 64 * 2**20


def joint_masks(patches: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Masks 1[X_k u ≥ 0] of filters (P, h) on patches (n, K, h) → bool (P, n, K)."""
    n, K, h = patches.shape
    flat = patches.reshape(n * K, h)
    return (filters.to(flat.dtype) @ flat.T >= 0).reshape(-1, n, K)


@dataclass
class PatternSet:
    """P distinct, non-zero joint patterns on the training patches.

    Attributes:
        masks: bool (P, n, K); ``masks[i, t, k] = 1[X_k u_i ≥ 0]`` for sample t, patch k.
        filters: (P, h) generator filters, ``filters[i]`` realizes ``masks[i]``.
        n_drawn: filters tried to obtain this set (before deduplication).
        source: how the set was built ("gaussian", "patches", "filters", "enumerated", ...).
        complete: True when the set holds every pattern of the data (:meth:`enumerate`); a
            certificate over a complete set is a proof of global optimality (SPEC §2.4).
    """

    masks: torch.Tensor
    filters: torch.Tensor
    n_drawn: int
    source: str = "filters"
    history: list[str] = field(default_factory=list)
    complete: bool = False

    def __post_init__(self) -> None:
        if self.masks.dtype != torch.bool or self.masks.ndim != 3:
            raise ValueError("PatternSet.masks must be a bool tensor of shape (P, n, K)")
        if self.filters.ndim != 2 or self.filters.shape[0] != self.masks.shape[0]:
            raise ValueError("PatternSet.filters must have shape (P, h) with one row per mask")

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.masks.shape[1])

    @property
    def n_positions(self) -> int:
        return int(self.masks.shape[2])

    @property
    def filter_size(self) -> int:
        return int(self.filters.shape[1])

    @property
    def n_distinct(self) -> int:
        """Distinct non-zero patterns (= len)."""
        return len(self)

    def __repr__(self) -> str:
        return (
            f"PatternSet(P={len(self)}, n={self.n_samples}, K={self.n_positions}, "
            f"h={self.filter_size}, drawn={self.n_drawn}, source={self.source!r})"
        )

    @classmethod
    def from_filters(
        cls, X: object, spec: PatchSpec, filters: torch.Tensor | np.ndarray, **kwargs: object
    ) -> PatternSet:
        """Patterns of explicit generator filters (P, h) — or Conv weights (P, C, *kernel), e.g.
        an SGD-trained network's first layer — on data X (any layout :func:`fit` accepts)."""
        return cls.from_patch_filters(patches_of(X, spec), filters, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_patch_filters(
        cls,
        patches: torch.Tensor,
        filters: torch.Tensor | np.ndarray,
        *,
        source: str = "filters",
        n_drawn: int | None = None,
    ) -> PatternSet:
        """Deduplicated patterns of the given generator filters (P, h) on patches (n, K, h).

        ``patches`` comes from :func:`convexcnn.patches.patches_of`.
        """
        filt = torch.as_tensor(filters, dtype=patches.dtype)
        if filt.ndim == 4 or filt.ndim == 3:  # Conv weights (m, C, f[, f]) → (m, h)
            filt = filt.reshape(filt.shape[0], -1)
        h = patches.shape[2]
        if filt.ndim != 2 or filt.shape[1] != h:
            raise ValueError(
                f"filters must have shape (P, {h}) (or Conv weights (P, C, *kernel) with "
                f"C·Πkernel = {h}); got {tuple(filt.shape)}"
            )
        if not torch.isfinite(filt).all():
            raise ValueError("filters contain NaN or Inf")
        kept_masks: list[torch.Tensor] = []
        kept_filters: list[torch.Tensor] = []
        seen: set[bytes] = set()
        n, K, _ = patches.shape
        chunk = max(1, _FILTER_CHUNK_BYTES // max(1, n * K))
        for start in range(0, filt.shape[0], chunk):
            block = filt[start : start + chunk]
            masks = joint_masks(patches, block)
            packed = np.packbits(masks.reshape(masks.shape[0], -1).numpy(), axis=1)
            nonzero = masks.reshape(masks.shape[0], -1).any(dim=1).numpy()
            for i in range(masks.shape[0]):
                if not nonzero[i]:
                    continue
                key = packed[i].tobytes()
                if key in seen:
                    continue
                seen.add(key)
                kept_masks.append(masks[i])
                kept_filters.append(block[i])
        if not kept_masks:
            masks_t = torch.zeros((0, n, K), dtype=torch.bool)
            filters_t = torch.zeros((0, h), dtype=patches.dtype)
        else:
            masks_t = torch.stack(kept_masks)
            filters_t = torch.stack(kept_filters)
        drawn = int(filt.shape[0]) if n_drawn is None else n_drawn
        return cls(masks=masks_t, filters=filters_t, n_drawn=drawn, source=source)

    def merged(self, other: PatternSet) -> PatternSet:
        """Union of two pattern sets on the same data (this set's order first, then new ones)."""
        if other.masks.shape[1:] != self.masks.shape[1:]:
            raise ValueError("cannot merge PatternSets built on different data")
        seen = {np.packbits(m.reshape(-1).numpy()).tobytes() for m in self.masks}
        extra = [
            i
            for i, m in enumerate(other.masks)
            if np.packbits(m.reshape(-1).numpy()).tobytes() not in seen
        ]
        idx = torch.as_tensor(extra, dtype=torch.long)
        return PatternSet(
            masks=torch.cat([self.masks, other.masks[idx]]),
            filters=torch.cat([self.filters, other.filters[idx].to(self.filters.dtype)]),
            n_drawn=self.n_drawn + other.n_drawn,
            source=self.source if not extra else f"{self.source}+{other.source}",
            history=[*self.history, f"merged {len(extra)} new of {len(other)}"],
            complete=self.complete or other.complete,
        )

    def subset(self, index: Iterable[int] | torch.Tensor) -> PatternSet:
        """The patterns at ``index`` (in that order)."""
        idx = torch.as_tensor(list(index) if not isinstance(index, torch.Tensor) else index)
        idx = idx.to(torch.long)
        return PatternSet(
            masks=self.masks[idx],
            filters=self.filters[idx],
            n_drawn=self.n_drawn,
            source=self.source,
            history=list(self.history),
        )

    @classmethod
    def enumerate(
        cls, X: object, spec: PatchSpec, *, max_patterns: int = 100_000, seed: int = 0
    ) -> PatternSet:
        """Every distinct non-zero joint pattern of data X (any layout :func:`fit` accepts),
        by exact enumeration of the cells of the arrangement of the nK patch rows in R^h
        (polynomial for fixed rank; :mod:`convexcnn.pattern_enumeration`). Refuses with
        ValueError when the arrangement can have more than ``max_patterns`` cells."""
        return cls.enumerate_patches(patches_of(X, spec), max_patterns=max_patterns, seed=seed)

    @classmethod
    def enumerate_patches(
        cls, patches: torch.Tensor, *, max_patterns: int = 100_000, seed: int = 0
    ) -> PatternSet:
        """:meth:`enumerate` on patches (n, K, h) from :func:`convexcnn.patches.patches_of`."""
        from .pattern_enumeration import enumerate_patch_patterns

        masks, filters, dropped = enumerate_patch_patterns(
            patches, max_patterns=max_patterns, seed=seed
        )
        note = [f"enumerated; {dropped} numerically degenerate cells dropped"] if dropped else []
        return cls(
            masks=masks,
            filters=filters,
            n_drawn=len(masks) + dropped,
            source="enumerated",
            history=note,
            complete=dropped == 0,
        )


def sample_patterns(
    X: object, spec: PatchSpec, n_filters: int, *, seed: int = 0, kind: str = "gaussian"
) -> PatternSet:
    """Sample ``n_filters`` generator filters on data X (any layout :func:`fit` accepts) with
    patch geometry ``spec``; keep their distinct non-zero joint patterns. See
    :func:`sample_patch_patterns`."""
    return sample_patch_patterns(patches_of(X, spec), n_filters, seed=seed, kind=kind)


def sample_patch_patterns(
    patches: torch.Tensor,
    n_filters: int,
    *,
    seed: int = 0,
    kind: str = "gaussian",
) -> PatternSet:
    """Sample ``n_filters`` generator filters, keep their distinct non-zero joint patterns.

    Args:
        patches: (n, K, h) training patches.
        n_filters: generator filters to draw (the result has P ≤ n_filters patterns).
        seed: random seed (a ``torch.Generator`` is seeded with it; global state is untouched).
        kind: "gaussian" (u ~ N(0, I_h)) or "patches" (u = a random training patch minus the
            mean patch, plus 10 % Gaussian noise: data-driven hyperplanes through the data).
    """
    filters = draw_generator_filters(patches, n_filters, seed=seed, kind=kind)
    return PatternSet.from_patch_filters(patches, filters, source=kind)


def draw_generator_filters(
    patches: torch.Tensor, n_filters: int, *, seed: int = 0, kind: str = "gaussian"
) -> torch.Tensor:
    """``n_filters`` generator filters (n_filters, h) of the given ``kind`` (see
    :func:`sample_patch_patterns`) for patches (n, K, h); seeded, no global state."""
    if not isinstance(n_filters, int) or isinstance(n_filters, bool) or n_filters < 1:
        raise ValueError(f"patterns (number of generator filters) must be ≥ 1; got {n_filters!r}")
    gen = torch.Generator().manual_seed(int(seed))
    n, K, h = patches.shape
    gauss = torch.randn((n_filters, h), generator=gen, dtype=patches.dtype)
    if kind == "gaussian":
        return gauss
    if kind == "patches":
        flat = patches.reshape(n * K, h)
        pick = torch.randint(0, n * K, (n_filters,), generator=gen)
        centred = flat[pick] - flat.mean(dim=0)
        scale = centred.norm(dim=1, keepdim=True).clamp_min(1e-12) / np.sqrt(h)
        return centred + 0.1 * scale * gauss
    raise ValueError(f"kind must be 'gaussian' or 'patches'; got {kind!r}")
