"""Local pooling windows followed by a sum over windows (SPEC §4, last paragraph).

The conv output grid (K_1[, K_2] positions, flattened row-major into K patches) is cut into
windows of ``pool_size`` positions every ``pool_stride`` positions per axis (no padding, floor
mode — the windows of ``torch.nn.functional.max_pool{1,2}d``). The network is

    f(X) = Σ_j w_j Σ_ω pool_ω((X_k u_j)_+ : k ∈ ω),   pool ∈ {max, avg, sum}.

* **avg / sum windows are sum pooling with patch weights.** With S = |ω| and
  ``count_k`` = number of windows containing patch k,
  ``Σ_ω (1/S) Σ_{k∈ω} (X_k u)_+ = Σ_k (count_k/S)·(X_k u)_+ = Σ_k (X̃_k u)_+`` with
  ``X̃_k = (count_k/S)·X_k`` (``count_k`` for sum windows), because (·)_+ is positively
  homogeneous. So the exact program is SPEC §3 on the weighted patches X̃; the patterns
  1[X̃_k u ≥ 0] equal 1[X_k u ≥ 0] wherever count_k > 0 (patches in no window contribute 0 to the
  prediction and a trivial 0 ≥ 0 row to the cone). :class:`WindowedSumReLU`.
* **max windows** apply the §4 construction per (sample, window): one winner-or-inactive per
  pair, all sharing one filter; see :mod:`convexcnn.problems.max_pool`.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from ..losses import Loss
from ..networks import PooledCNN
from ..patches import ResolvedSpec
from ..patterns import PatternSet
from .base import ConvexProblem, RecoveredNetwork
from .registry import FitContext
from .two_layer import TwoLayerReLU, branches_from_blocks, network_objective, resolve_patterns

__all__ = [
    "WindowedSumReLU",
    "branches_from_blocks",
    "build_pooled",
    "pool_windows",
    "resolve_pool_geometry",
    "window_counts",
]


def _positive_ints(value: Any, dims: int, name: str) -> tuple[int, ...]:
    values = (value,) * dims if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        values = tuple(values)
    except TypeError:
        values = ()
    if len(values) != dims or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values
    ):
        raise ValueError(
            f"{name} must be a positive integer or a tuple of {dims} positive integers "
            f"(one per spatial axis of the conv output); got {value!r}"
        )
    return tuple(int(v) for v in values)


def resolve_pool_geometry(
    options: dict[str, Any], grid: tuple[int, ...]
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """Validated (pool_size, pool_stride) per axis of the conv output ``grid``; (None, None)
    for global pooling. pool_stride defaults to pool_size (non-overlapping windows)."""
    size, stride = options.get("pool_size"), options.get("pool_stride")
    if size is None:
        if stride is not None:
            raise ValueError("pool_stride needs pool_size (the local pooling window); pass both")
        return None, None
    dims = len(grid)
    pool_size = _positive_ints(size, dims, "pool_size")
    pool_stride = pool_size if stride is None else _positive_ints(stride, dims, "pool_stride")
    for axis, (s, g) in enumerate(zip(pool_size, grid, strict=True)):
        if s > g:
            raise ValueError(
                f"pool_size {pool_size} is larger than the conv output grid {grid} along axis "
                f"{axis}; use pool_size ≤ {g} there (or no pool_size for global pooling)"
            )
    return pool_size, pool_stride


def pool_windows(
    grid: tuple[int, ...], pool_size: tuple[int, ...], pool_stride: tuple[int, ...]
) -> torch.Tensor:
    """Flattened patch indices of each pooling window, long (Ω, S), rows ascending.

    Window o along an axis covers positions o·stride … o·stride + size − 1 for
    o = 0 … ⌊(grid − size)/stride⌋ (torch's pooling windows). Positions flatten row-major.
    """
    per_axis = [
        [list(range(o * st, o * st + s)) for o in range((g - s) // st + 1)]
        for g, s, st in zip(grid, pool_size, pool_stride, strict=True)
    ]
    strides = [1] * len(grid)
    for axis in range(len(grid) - 2, -1, -1):
        strides[axis] = strides[axis + 1] * grid[axis + 1]
    windows = []
    for combo in itertools.product(*per_axis):
        members = [
            sum(p * st for p, st in zip(point, strides, strict=True))
            for point in itertools.product(*combo)
        ]
        windows.append(sorted(members))
    return torch.as_tensor(windows, dtype=torch.long)


def window_counts(windows: torch.Tensor, n_positions: int) -> torch.Tensor:
    """count_k: how many windows contain patch k, long (K,)."""
    return torch.bincount(windows.reshape(-1), minlength=n_positions)


class WindowedSumReLU(TwoLayerReLU):
    """Local avg/sum windows + sum over windows: SPEC §3 on weighted patches (module docstring).

    Everything but recovery is :class:`TwoLayerReLU` with ``pooling="sum"`` on
    ``X̃_k = weight_k·X_k``; recovery builds the windowed :class:`~convexcnn.networks.PooledCNN`.
    """

    def __init__(
        self,
        patches: torch.Tensor,
        patterns: PatternSet,
        targets: torch.Tensor,
        beta: float,
        loss: Loss,
        *,
        window_pooling: str,
        pool_size: tuple[int, ...],
        pool_stride: tuple[int, ...],
        grid: tuple[int, ...],
        spec: ResolvedSpec,
        in_channels: int,
        inputs: torch.Tensor,
        gated: bool = False,
    ) -> None:
        if window_pooling not in ("avg", "sum"):
            raise ValueError(f"window_pooling must be 'avg' or 'sum'; got {window_pooling!r}")
        windows = pool_windows(grid, pool_size, pool_stride)
        weights = window_counts(windows, patches.shape[1]).to(patches.dtype)
        if window_pooling == "avg":
            weights = weights / windows.shape[1]
        super().__init__(
            patches * weights[None, :, None],
            patterns,
            targets,
            beta,
            loss,
            pooling="sum",
            spec=spec,
            in_channels=in_channels,
            inputs=inputs,
            gated=gated,
        )
        self.window_pooling = window_pooling
        self.pool_size = pool_size
        self.pool_stride = pool_stride
        self.windows = windows
        self.patch_weights = weights
        self.unweighted_patches = patches
        self.grid = grid

    def with_patterns(self, patterns: PatternSet) -> WindowedSumReLU:
        """The same windowed program on another pattern set."""
        return WindowedSumReLU(
            self.unweighted_patches,
            patterns,
            self.targets,
            self.beta,
            self.loss,
            window_pooling=self.window_pooling,
            pool_size=self.pool_size,
            pool_stride=self.pool_stride,
            grid=self.grid,
            spec=self.spec,
            in_channels=self.in_channels,
            inputs=self.inputs,
            gated=self.gated,
        )

    def recover(self, W: torch.Tensor) -> RecoveredNetwork:
        """Blocks → branches (SPEC §2.3) of Conv → ReLU → local avg/sum windows → Σ → Linear."""
        filters, out = branches_from_blocks(W)
        net = PooledCNN(
            self.in_channels,
            filters.shape[0],
            self.spec,
            pooling=self.window_pooling,
            pool_size=self.pool_size,
            pool_stride=self.pool_stride,
            n_outputs=self.c,
        ).to(device=W.device, dtype=W.dtype)
        net.set_weights(filters, out)
        value = network_objective(net, self.inputs, self.targets, self.loss, self.beta)
        info: dict[str, Any] = {"pool_size": self.pool_size, "pool_stride": self.pool_stride}
        if self.gated:
            info["gated"] = True
        return RecoveredNetwork(net, value, int(filters.shape[0]), info=info)


def build_pooled(context: FitContext, options: dict[str, Any]) -> ConvexProblem:
    """Builder for ``two_layer`` with pooling="max" or with ``pool_size`` (local windows)."""
    grid = context.resolved.output_shape(tuple(context.batch.shape[2:]))
    pool_size, pool_stride = resolve_pool_geometry(options, grid)
    if context.pooling == "max":
        from . import max_pool

        return max_pool.build(context, options, pool_size=pool_size, pool_stride=pool_stride)
    assert pool_size is not None and pool_stride is not None  # global sum/avg: two_layer.build
    return WindowedSumReLU(
        context.patches,
        resolve_patterns(context),
        context.targets,
        context.beta,
        context.loss,
        window_pooling=context.pooling,
        pool_size=pool_size,
        pool_stride=pool_stride,
        grid=grid,
        spec=context.resolved,
        in_channels=context.batch.shape[1],
        inputs=context.batch,
        gated=bool(options.get("gated", False)),
    )
