"""Fast two-layer operators and cone projections against plain reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convexcnn.cone_projection import DenseBlockOperators
from convexcnn.losses import SquaredLoss
from convexcnn.memory import MemoryLimitError, check_fits, two_layer_estimate
from convexcnn.operators import TwoLayerOperators
from convexcnn.patches import PatchSpec, as_signal_batch, extract_patches
from convexcnn.patterns import sample_patch_patterns
from convexcnn.problems.two_layer import TwoLayerReLU
from convexcnn.solvers.cones import project_onto_cone

DT = torch.float64


def make_problem(
    shape: tuple[int, ...],
    kernel: int,
    filters: int,
    *,
    c: int = 1,
    pooling: str = "sum",
    gated: bool = False,
    seed: int = 0,
) -> TwoLayerReLU:
    """A two-layer program on random data of ``shape`` (n, L) or (n, H, W)."""
    rng = np.random.default_rng(seed)
    X = torch.as_tensor(rng.standard_normal(shape), dtype=DT)
    batch, resolved = as_signal_batch(X, PatchSpec(kernel))
    patches = extract_patches(batch, resolved)
    patterns = sample_patch_patterns(patches, filters, seed=seed)
    Y = torch.as_tensor(rng.standard_normal((shape[0], c)), dtype=DT)
    return TwoLayerReLU(
        patches,
        patterns,
        Y,
        0.1,
        SquaredLoss(),
        pooling=pooling,
        spec=resolved,
        in_channels=batch.shape[1],
        inputs=batch,
        gated=gated,
    )


CASES = [
    ((9, 7), 3, 20, 1, "sum"),
    ((6, 5, 6), 2, 15, 3, "avg"),
    ((5, 4, 4), 3, 10, 2, "sum"),
]


@pytest.mark.parametrize(("shape", "kernel", "filters", "c", "pooling"), CASES)
@pytest.mark.parametrize("precompute", [True, False])
def test_fast_operators_equal_reference(
    shape: tuple[int, ...], kernel: int, filters: int, c: int, pooling: str, precompute: bool
) -> None:
    problem = make_problem(shape, kernel, filters, c=c, pooling=pooling)
    problem._operators = TwoLayerOperators(  # force the code path under test
        problem.patches, problem.masks, n_outputs=c, precompute=precompute, chunk_bytes=2048
    )
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(problem.variable_shape, generator=gen, dtype=DT)
    W[:, :, ::3] = 0  # some zero blocks (sparse prediction path)
    R = torch.randn((problem.n, c), generator=gen, dtype=DT)
    torch.testing.assert_close(problem.predict(W), problem._predict_reference(W))
    torch.testing.assert_close(problem.predict_adjoint(R), problem._predict_adjoint_reference(R))
    torch.testing.assert_close(problem.constraint(W), problem._constraint_reference(W))
    L = torch.randn(problem._constraint_reference(W).shape, generator=gen, dtype=DT)
    torch.testing.assert_close(
        problem.constraint_adjoint(L), problem._constraint_adjoint_reference(L)
    )
    torch.testing.assert_close(
        problem.operators.masked_patches(), problem._masked_patches_reference()
    )
    # adjoint identities
    assert float((problem.predict(W) * R).sum()) == pytest.approx(
        float((W * problem.predict_adjoint(R)).sum()), rel=1e-12
    )


def test_sparse_prediction_path_matches_dense() -> None:
    problem = make_problem((12, 9), 3, 40)
    ops = problem.operators
    gen = torch.Generator().manual_seed(2)
    V = torch.zeros((1, problem.P, problem.h), dtype=DT)
    V[0, :3] = torch.randn((3, problem.h), generator=gen, dtype=DT)  # < half active: gather
    dense = torch.einsum("pth,jph->tj", problem._masked_patches_reference(), V)
    torch.testing.assert_close(ops.predict(V), dense)


def test_block_maps_and_penalty_match_dense_formulas() -> None:
    problem = make_problem((7, 6), 2, 12, c=2)
    ops = problem.operators
    gen = torch.Generator().manual_seed(3)
    W = torch.randn(problem.variable_shape, generator=gen, dtype=DT)
    Wb = W.reshape(-1, problem.h)
    blocks = torch.arange(Wb.shape[0])
    # A_bᵀ rows: predict of one block equals its map applied
    maps = ops.block_maps(blocks)  # (B, h, n)
    F = torch.zeros((problem.n, problem.c), dtype=DT)
    for b, j in zip(blocks.tolist(), ops.block_outputs(blocks).tolist(), strict=True):
        F[:, j] += maps[b].T @ Wb[b]
    torch.testing.assert_close(F, problem.predict(W))
    # augmented-Lagrangian penalty and multiplier step against dense formulas
    g = problem._constraint_reference(W).reshape(Wb.shape[0], -1)
    lam = torch.rand(g.shape, generator=gen, dtype=DT)
    rho = 0.7
    z = (lam - rho * g).clamp_min(0)
    value, grad = ops.penalty(blocks, Wb, lam, rho)
    assert value == pytest.approx(float((z**2 - lam**2).sum()) / (2 * rho), rel=1e-12)
    expected = -problem._constraint_adjoint_reference(
        z.reshape(problem._constraint_reference(W).shape)
    )
    torch.testing.assert_close(grad, expected.reshape(-1, problem.h))
    lam2 = lam.clone()
    _, viol, comp = ops.update(blocks, Wb, lam2, rho)
    torch.testing.assert_close(lam2, z)
    assert viol == pytest.approx(float((-g).clamp_min(0).max()))
    assert comp == pytest.approx(float((z * g).sum()))


def _dense_cone(ops: TwoLayerOperators, block: int) -> np.ndarray:
    basis = torch.eye(ops.h, dtype=DT)
    return ops.apply(torch.full((ops.h,), block), basis).T.numpy()


def test_projection_matches_nnls_reference() -> None:
    problem = make_problem((10, 8, 8), 3, 60, seed=4)
    ops = problem.operators
    gen = torch.Generator().manual_seed(5)
    blocks = torch.randint(0, 2 * problem.P, (40,), generator=gen)
    W = problem.patterns.filters[blocks % problem.P] + 0.5 * torch.randn(
        (40, problem.h), generator=gen, dtype=DT
    )
    res = ops.project(blocks, W)
    assert not bool(res.failed.any())
    for b in range(40):
        G = _dense_cone(ops, int(blocks[b]))
        z_ref, _, _ = project_onto_cone(G, W[b].numpy())
        assert np.linalg.norm(res.Z[b].numpy() - z_ref) <= 1e-9 * max(1.0, np.linalg.norm(z_ref))
        assert (G @ res.Z[b].numpy()).min() >= -1e-9 * np.linalg.norm(W[b].numpy())
    # KKT: α ≥ 0 on the active rows
    assert bool((res.alpha[res.valid] > 0).all())
    # warm start from the active sets gives the same projections
    again = ops.project(blocks, W, res.rows, res.valid, anchor=res.Z)
    torch.testing.assert_close(again.Z, res.Z, atol=1e-10, rtol=1e-9)


def test_projection_threshold_is_an_upper_bound() -> None:
    problem = make_problem((10, 8, 8), 3, 60, seed=6)
    ops = problem.operators
    gen = torch.Generator().manual_seed(7)
    blocks = torch.arange(30)
    W = torch.randn((30, problem.h), generator=gen, dtype=DT)
    exact = ops.project(blocks, W)
    tau = float(exact.Z.norm(dim=1).median())
    early = ops.project(blocks, W, threshold=tau)
    # stopped blocks: their true projection is below the threshold
    assert bool(early.below.any())
    assert bool((exact.Z.norm(dim=1)[early.below] <= tau * (1 + 1e-9)).all())
    # the others are exact projections
    rest = ~early.below
    torch.testing.assert_close(early.Z[rest], exact.Z[rest], atol=1e-10, rtol=1e-9)


def test_dense_adapter_matches_fast_operators() -> None:
    problem = make_problem((6, 7), 2, 10, c=2, seed=8)
    fast = problem.operators
    dense = DenseBlockOperators(problem)
    blocks = torch.arange(2 * problem.c * problem.P)
    maps = dense.block_maps(blocks)  # (B, h, n·c)
    own = fast.block_maps(blocks)  # (B, h, n) for the block's output
    outs = fast.block_outputs(blocks)
    for b in range(blocks.numel()):
        torch.testing.assert_close(
            maps[b].reshape(problem.h, problem.n, problem.c)[:, :, outs[b]], own[b]
        )
    gen = torch.Generator().manual_seed(9)
    W = torch.randn((blocks.numel(), problem.h), generator=gen, dtype=DT)
    torch.testing.assert_close(dense.apply(blocks, W), fast.apply(blocks, W))
    torch.testing.assert_close(dense.project(blocks, W).Z, fast.project(blocks, W).Z)


def test_memory_estimate_and_recompute_path() -> None:
    est = two_layer_estimate(1000, 36, 9, 2000, 1, dtype=torch.float64)
    assert est.items["A_i (precomputed)"] == 2000 * 1000 * 9 * 8
    assert est.items["masks"] == 2000 * 1000 * 36
    with pytest.raises(MemoryLimitError, match=r"fewer patterns.*float32.*chunk size.*stride"):
        check_fits(est, limit=1000)
    problem = make_problem((9, 7), 3, 20)
    small = two_layer_estimate(9, 5, 3, problem.P, 1, precompute=False)
    # a limit between the lean and the precomputing estimate: A_i is recomputed per pass
    lean = TwoLayerOperators(
        problem.patches,
        problem.masks,
        memory_limit=small.total + 1,
        chunk_bytes=small.items["chunk buffers"] // 4,
    )
    assert not lean.precomputed
    R = torch.randn((problem.n, 1), dtype=DT)
    torch.testing.assert_close(lean.predict_adjoint(R), problem.operators.predict_adjoint(R))
    V = torch.randn((1, problem.P, problem.h), dtype=DT)
    torch.testing.assert_close(lean.predict(V), problem.operators.predict(V))
    with pytest.raises(MemoryLimitError):
        TwoLayerOperators(problem.patches, problem.masks, memory_limit=10)
