"""Tests for the three-layer branch tuples (convexcnn.tuples, SPEC §8)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from _instances import reference_instance
from convexcnn.patches import PatchSpec, patches_of
from convexcnn.tuples import (
    TupleSet,
    branch_activations,
    enumerate_tuples,
    sample_branches,
    sample_tuples,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _patches(n: int, d: int, seed: int, h: int = 2) -> torch.Tensor:
    X, _ = reference_instance(n, d, seed)
    return patches_of(X, PatchSpec(h))


def _masked(patches: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """A_i = Σ_k D_i^k X_k from masks (P, n, K), by an explicit loop (reference)."""
    P, n, K = masks.shape
    A = torch.zeros((P, n, patches.shape[2]), dtype=patches.dtype)
    for i in range(P):
        for t in range(n):
            for k in range(K):
                if masks[i, t, k]:
                    A[i, t] += patches[t, k]
    return A


def _mask_keys(ts: TupleSet) -> set[bytes]:
    """Tuples as data-level keys (sorted signed slot masks + δ), independent of indexing."""
    keys = set()
    masks = ts.patterns.masks.reshape(len(ts.patterns), -1).numpy()
    for slots, signs, delta in zip(
        ts.slots.numpy(), ts.signs.numpy(), ts.deltas.numpy(), strict=True
    ):
        parts = sorted(
            np.packbits(masks[i]).tobytes() + bytes([int(s > 0)])
            for i, s in zip(slots, signs, strict=True)
        )
        keys.add(b"|".join(parts) + b"#" + np.packbits(delta).tobytes())
    return keys


def test_sampling_is_fast_and_counts_add_up() -> None:
    patches = _patches(8, 4, 1)
    start = time.perf_counter()
    ts = sample_tuples(patches, 100_000, seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0  # typically ~0.5 s
    c = ts.counts
    raw_mixed = c["mixed"] + c["duplicates"] + c["merged"]
    assert c["drawn"] == 100_000
    assert c["zero"] + c["all_negative"] + c["inactive"] + c["linear"] + raw_mixed == 100_000
    assert c["distinct"] == len(ts) == ts.n_linear + ts.n_mixed
    assert ts.n_linear == len(ts.patterns)  # one linear tuple per first-layer pattern
    assert len(set(ts.keys().tolist())) == len(ts)  # deduplicated
    # about a quarter of random width-2 branches are all-negative (zero branches)
    assert 0.2 < c["all_negative"] / 100_000 < 0.3


def test_canonical_tuple_reproduces_its_branch() -> None:
    """For a random branch, the tuple's map and cones give back (Σ w1_l a(u_l))_+ exactly."""
    patches = _patches(8, 4, 1)
    n, K, h = patches.shape
    filters, weights = sample_branches(patches, 200, branch_width=2, seed=3)
    A_cache: dict[int, torch.Tensor] = {}
    checked = 0
    for b in range(200):
        ts = TupleSet.from_branches(patches, filters[b : b + 1], weights[b : b + 1])
        mixed = ~ts.deltas.all(dim=1)
        if not bool(mixed.any()):
            continue
        (tau,) = mixed.nonzero(as_tuple=True)[0].tolist()
        act = branch_activations(patches, filters[b])  # (n, m1)
        target = (act * weights[b]).sum(dim=1).clamp_min(0)
        A = _masked(patches, ts.patterns.masks)
        A_cache[b] = A
        # slots are sorted: find each filter's slot by its pattern
        pre = torch.zeros(n, dtype=patches.dtype)
        for l in range(2):
            u, w = filters[b, l], weights[b, l]
            mask = (patches.reshape(n * K, h) @ u >= 0).reshape(n, K)
            i = int(
                next(p for p in range(len(ts.patterns)) if torch.equal(ts.patterns.masks[p], mask))
            )
            slot = [
                q
                for q in range(2)
                if int(ts.slots[tau, q]) == i and int(ts.signs[tau, q]) == (1 if w >= 0 else -1)
            ]
            assert slot, "the branch's (pattern, sign) must be one of its tuple's slots"
            c = w.abs() * u  # effective filter
            pre += float(ts.signs[tau, slot[0]]) * (A[i] @ c)
            # first-layer cone: (2d − 1) ⊙ M c ≥ 0
            assert bool(
                (
                    (2 * mask.reshape(-1).double() - 1) * (patches.reshape(n * K, h) @ c) >= -1e-12
                ).all()
            )
        delta = ts.deltas[tau].double()
        assert torch.allclose(delta * pre, target, atol=1e-12)
        assert bool(((2 * delta - 1) * pre >= -1e-12).all())  # second-layer cone
        checked += 1
    assert checked > 20


def test_reductions() -> None:
    patches = _patches(6, 4, 0)
    gen = torch.Generator().manual_seed(0)
    u = torch.randn((1, 2, 2), generator=gen, dtype=torch.float64)
    # all-negative signs: dropped (only the patterns' linear tuples remain)
    ts = TupleSet.from_branches(patches, u, torch.tensor([[-1.0, -0.5]], dtype=torch.float64))
    assert ts.counts["all_negative"] == 1 and ts.n_mixed == 0 and ts.n_linear == len(ts.patterns)
    # all-positive signs: δ = 1 ⇒ linear tuples (+a, +a) of its patterns
    ts = TupleSet.from_branches(patches, u, torch.tensor([[1.0, 0.5]], dtype=torch.float64))
    assert ts.counts["linear"] == 1 and ts.n_mixed == 0
    assert bool((ts.slots[:, 0] == ts.slots[:, 1]).all()) and bool((ts.signs == 1).all())
    # permutation: swapping the filters of a branch gives the same tuple
    mixed_u = torch.randn((400, 2, 2), generator=gen, dtype=torch.float64)
    w = torch.tensor([[1.0, -1.0]], dtype=torch.float64).repeat(400, 1)
    a = TupleSet.from_branches(patches, mixed_u, w)
    b = TupleSet.from_branches(patches, mixed_u.flip(1), w.flip(1))
    assert _mask_keys(a) == _mask_keys(b) and a.n_mixed > 0
    # a filter with the all-zero pattern (a(u) = 0) is an absent slot
    X, _ = reference_instance(6, 4, 0)
    positive = patches_of(np.abs(X) + 0.1, PatchSpec(2))
    good = torch.tensor([1.0, 0.3], dtype=torch.float64)
    dead = torch.tensor([-1.0, -1.0], dtype=torch.float64)  # M·dead < 0 on every patch
    br = torch.stack([good, dead])[None]
    ts = TupleSet.from_branches(positive, br, torch.tensor([[1.0, -1.0]], dtype=torch.float64))
    assert ts.counts["linear"] == 1 and ts.n_mixed == 0  # (+good, dead) is the linear +good
    ts = TupleSet.from_branches(positive, br, torch.tensor([[-1.0, 1.0]], dtype=torch.float64))
    assert ts.counts["all_negative"] == 1  # (−good, dead) is a zero branch
    ts = TupleSet.from_branches(positive, torch.stack([dead, dead])[None], torch.ones((1, 2)))
    assert ts.counts["zero"] == 1 and len(ts) == 0


def test_path_merge_for_width_three() -> None:
    """(a, a, b) with repeated slots is dominated under "path" by (a, c, b) with the same δ."""
    patches = _patches(8, 4, 1)
    gen = torch.Generator().manual_seed(5)
    found = False
    for _ in range(200):
        u = torch.randn((1, 3, 2), generator=gen, dtype=torch.float64)
        u3 = torch.randn(2, generator=gen, dtype=torch.float64)
        w = torch.tensor([[1.0, 1.0, -1.0]], dtype=torch.float64)
        dup = u.clone()
        dup[0, 1] = 1.3 * dup[0, 0]  # same pattern, same sign as slot 0
        sup = u.clone()
        sup[0, 1] = u3
        both_f = torch.cat([dup, sup])
        both_w = torch.cat([w, w])
        path = TupleSet.from_branches(patches, both_f, both_w, regularization="path")
        unit = TupleSet.from_branches(patches, both_f, both_w, regularization="unit")
        if path.counts["merged"] == 1:
            found = True
            assert unit.counts["merged"] == 0 and unit.n_mixed == path.n_mixed + 1
            break
    assert found


def test_merge_and_extend_keeps_order() -> None:
    patches = _patches(8, 4, 1)
    first = sample_tuples(patches, 500, seed=0)
    f, w = sample_branches(patches, 2000, seed=1)
    grown = TupleSet.from_branches(patches, f, w, base=first)
    assert len(grown) > len(first)
    assert torch.equal(grown.slots[: len(first)], first.slots)
    assert torch.equal(grown.deltas[: len(first)], first.deltas)
    assert torch.equal(grown.patterns.masks[: len(first.patterns)], first.patterns.masks)
    assert _mask_keys(first) <= _mask_keys(grown)
    assert grown.n_drawn == 2500


def test_enumeration_contains_sampled_tuples() -> None:
    patches = _patches(4, 4, 2)
    enum = enumerate_tuples(patches)
    sampled = sample_tuples(patches, 20_000, seed=0)
    assert enum.complete and not sampled.complete
    assert _mask_keys(sampled) <= _mask_keys(enum)
    assert len(enum) >= len(sampled)
    # every enumerated mixed tuple is realizable on this (generic) data: sampling more finds more
    more = sample_tuples(patches, 200_000, seed=1)
    assert len(_mask_keys(more) & _mask_keys(enum)) >= len(_mask_keys(sampled))


def test_bad_inputs() -> None:
    patches = _patches(6, 4, 0)
    with pytest.raises(ValueError, match="regularization"):
        sample_tuples(patches, 10, regularization="frobenius")
    with pytest.raises(ValueError, match="n_branches"):
        sample_tuples(patches, 0)
    with pytest.raises(ValueError, match="kind"):
        sample_tuples(patches, 10, kind="uniform")
    with pytest.raises(ValueError, match="filters must have shape"):
        TupleSet.from_branches(patches, torch.zeros((3, 2, 5)), torch.zeros((3, 2)))
    with pytest.raises(NotImplementedError, match="h = 2"):
        enumerate_tuples(_patches(4, 5, 0, h=3))
