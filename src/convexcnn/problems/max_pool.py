"""Two-layer ReLU CNN with max pooling (SPEC §4), global or over local windows + a sum.

Network: ``f(X) = Σ_j w_j Σ_ω max_{k∈ω} (X_k u_j)_+`` (global pooling: one window of all K
patches). Patterns are :class:`~convexcnn.max_patterns.MaxPatternSet` winner arrays
``a_i ∈ {−1, 0, …, K−1}^{n×Ω}`` (−1 = inactive).

Variable ``W`` (c, 2, P, h): ``W[j, 0, i] = c_i``, ``W[j, 1, i] = c'_i`` for output j. With
``B_i = Σ_ω Σ_k E_i^{k,ω} X_k`` (row t = sum over active windows of the winning patch; (n, h)):

    F[:, j] = Σ_i B_i (W[j,0,i] − W[j,1,i])                                   (n, c)
    𝒢(W)[j, s, i, t, ω, m] ≥ 0,  with k = ω's m-th patch, a = a_i[t, ω]:        (c, 2, P, n, Ω, S)
        active, k = a:   X_a w            (winner ≥ 0)
        active, k ≠ a:   (X_a − X_k) w    (winner ≥ every other patch of its window)
        inactive:        −X_k w           (every patch of the window ≤ 0)
    ρ(W) = Σ_{j,s,i} ‖W[j, s, i]‖₂                                              group ℓ2

Patches of an active window other than the winner are *not* forced ≤ 0. On the cone of pattern
i, ``Σ_ω max_{k∈ω}(X_k u)_+ = B_i u`` exactly, and every filter lies in the cone of its own
pattern, so the program (with all patterns) equals the network's training problem; recovery
(SPEC §2.3) gives filters c/√‖c‖ and output weights ±√‖c‖ whose network reproduces the
objective.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..losses import Loss
from ..max_patterns import (
    MaxPatternSet,
    enumerate_max_patch_patterns,
    global_window,
    sample_max_patch_patterns,
)
from ..networks import PooledCNN
from ..patches import PatchSpec, ResolvedSpec, as_signal_batch, extract_patches
from .base import ConvexProblem, RecoveredNetwork
from .local_pool import pool_windows, resolve_pool_geometry
from .registry import FitContext
from .two_layer import branches_from_blocks, group_soft_threshold, network_objective

__all__ = ["MaxPoolReLU", "build", "max_patterns", "max_pool_windows"]


class MaxPoolReLU(ConvexProblem):
    """SPEC §4 program over a fixed :class:`MaxPatternSet` (module docstring for the maps).

    Args:
        patches: (n, K, h) training patches.
        patterns: P winner patterns on these patches; ``patterns.windows`` (Ω, S) are the
            pooling windows.
        targets: (n, c). beta: β > 0. loss: a :class:`~convexcnn.losses.Loss`.
        spec, in_channels, inputs: geometry and data for the recovered torch network.
        pool_size, pool_stride: local windows on the conv output grid (None: global max);
            must describe ``patterns.windows``.
    """

    def __init__(
        self,
        patches: torch.Tensor,
        patterns: MaxPatternSet,
        targets: torch.Tensor,
        beta: float,
        loss: Loss,
        *,
        spec: ResolvedSpec,
        in_channels: int,
        inputs: torch.Tensor,
        pool_size: tuple[int, ...] | None = None,
        pool_stride: tuple[int, ...] | None = None,
    ) -> None:
        n, K, h = patches.shape
        if patterns.n_samples != n or patterns.filter_size != h:
            raise ValueError(
                f"patterns were built for (n, h) = ({patterns.n_samples}, "
                f"{patterns.filter_size}) but X gives ({n}, {h}); build the MaxPatternSet from "
                "the same X, PatchSpec and pooling windows you fit"
            )
        if int(patterns.windows.max()) >= K:
            raise ValueError("patterns.windows refer to patches beyond the K of this X")
        self.patches = patches
        self.patterns = patterns
        device = patches.device
        self.windows = patterns.windows.to(device)
        self.targets = targets
        self.beta = float(beta)
        self.loss = loss
        self.spec = spec
        self.in_channels = in_channels
        self.inputs = inputs
        self.pool_size = pool_size
        self.pool_stride = pool_stride
        self.n, self.K, self.h = n, K, h
        self.c = targets.shape[1]
        self.P = len(patterns)
        self.S = int(self.windows.shape[1])
        dtype = patches.dtype
        winners = patterns.winners.to(device)  # (P, n, Ω)
        self._active = (winners >= 0).to(dtype)  # α: weight of the winner term
        self._winner_index = winners.clamp_min(0)
        is_winner = self.windows[None, None] == winners[..., None]  # (P, n, Ω, S)
        self._winner_slot = is_winner.to(torch.uint8).argmax(dim=-1, keepdim=True)  # (P,n,Ω,1)
        self._active_col = self._active.unsqueeze(-1)
        self._B: torch.Tensor | None = None
        self._stacked = patches.reshape(n * K, h)  # M (nK, h)
        self._stacked_t = self._stacked.T.contiguous()
        identity = torch.arange(K, device=device)
        self._global = self.windows.shape[0] == 1 and torch.equal(self.windows[0], identity)

    # ----- operators ------------------------------------------------------------------
    @property
    def variable_shape(self) -> tuple[int, ...]:
        return (self.c, 2, self.P, self.h)

    @property
    def winner_counts(self) -> torch.Tensor:
        """E (P, n, K): number of active windows patch k wins for sample t under pattern i."""
        E = torch.zeros(
            (self.P, self.n, self.K), dtype=self.patches.dtype, device=self.patches.device
        )
        return E.scatter_add_(2, self._winner_index.reshape(self.P, self.n, -1), self._active)

    @property
    def pooled_patches(self) -> torch.Tensor:
        """B_i for every pattern, (P, n, h) (computed once)."""
        if self._B is None:
            self._B = torch.einsum("ptk,tkh->pth", self.winner_counts, self.patches)
        return self._B

    def predict(self, W: torch.Tensor) -> torch.Tensor:
        return torch.einsum("pth,jph->tj", self.pooled_patches, W[:, 0] - W[:, 1])

    def predict_adjoint(self, R: torch.Tensor) -> torch.Tensor:
        g = torch.einsum("pth,tj->jph", self.pooled_patches, R)
        return torch.stack([g, -g], dim=1)

    @property
    def has_constraints(self) -> bool:
        return True

    @property
    def patterns_complete(self) -> bool:
        return bool(self.patterns.complete)

    def patch_values(self, W: torch.Tensor) -> torch.Tensor:
        """X_k w for every block and (sample, patch): one GEMM, (c, 2, P, n, K)."""
        V = W.reshape(-1, self.h) @ self._stacked_t
        return V.reshape(*W.shape[:3], self.n, self.K)

    def constraint(self, W: torch.Tensor) -> torch.Tensor:
        """Rows α·X_a w − X_k w, and X_a w at the winner's own slot (α = 1[active])."""
        V = self.patch_values(W)  # (c, 2, P, n, K)
        members = V.unsqueeze(4) if self._global else V[..., self.windows]  # (c,2,P,n,Ω,S)
        slot = self._winner_slot.expand(*V.shape[:3], -1, -1, -1)  # (c, 2, P, n, Ω, 1)
        winner = self._active_col * torch.gather(members, 5, slot)
        out = winner - members
        return out.scatter_add_(5, slot, winner)

    def constraint_adjoint(self, L: torch.Tensor) -> torch.Tensor:
        lead = L.shape[:3]
        slot = self._winner_slot.expand(*lead, -1, -1, -1)
        winner = self._active_col * (L.sum(-1, keepdim=True) + torch.gather(L, 5, slot))
        per_member = L.neg().scatter_add_(5, slot, winner)  # (c, 2, P, n, Ω, S)
        if self._global:
            coef = per_member.reshape(*lead, self.n, self.K)
        else:
            coef = torch.zeros((*lead, self.n, self.K), dtype=L.dtype, device=L.device)
            member_index = self.windows.reshape(-1).expand(*lead, self.n, -1)
            coef.scatter_add_(4, member_index, per_member.flatten(-2))
        out = coef.reshape(-1, self.n * self.K) @ self._stacked
        return out.reshape(*lead, self.h)

    # ----- blocks and pattern growth (certificate / growth hooks) -------------------------
    def block_dual_norms(self, G: torch.Tensor) -> torch.Tensor:
        """‖G[j, s, i]‖₂ per block, shape (c, 2, P)."""
        return G.norm(dim=-1)

    def block_constraint_matrix(self, index: tuple[int, ...]) -> torch.Tensor:
        """G_i of block (j, s, i), shape (n·Ω·S, h), rows in :meth:`constraint` order."""
        return torch.as_tensor(self.cone_matrices(index[2]), dtype=self.patches.dtype)[0]

    def with_patterns(self, patterns: MaxPatternSet) -> MaxPoolReLU:
        """The same program (data, loss, β, windows) on another pattern set."""
        return MaxPoolReLU(
            self.patches,
            patterns,
            self.targets,
            self.beta,
            self.loss,
            spec=self.spec,
            in_channels=self.in_channels,
            inputs=self.inputs,
            pool_size=self.pool_size,
            pool_stride=self.pool_stride,
        )

    def grown(self, filters: torch.Tensor) -> MaxPoolReLU:
        """This program plus the new non-trivial winner patterns of ``filters`` (m, h)."""
        new = MaxPatternSet.from_patch_filters(self.patches, filters, self.windows, source="grown")
        return self.with_patterns(self.patterns.merged(new))

    def embed_solution(self, W: torch.Tensor, source: ConvexProblem) -> torch.Tensor:
        """Zero-pad a solution of ``source`` whose P₀ patterns are our first P₀ ones."""
        P0 = W.shape[2]
        if W.shape[:2] != (self.c, 2) or P0 > self.P or W.shape[3] != self.h:
            raise ValueError(f"cannot embed W of shape {tuple(W.shape)} into {self.variable_shape}")
        theirs = getattr(getattr(source, "patterns", None), "winners", None)
        if theirs is None or not torch.equal(theirs, self.patterns.winners[:P0]):
            raise ValueError("the source program's patterns are not a prefix of this program's")
        out = torch.zeros(self.variable_shape, dtype=W.dtype, device=W.device)
        out[:, :, :P0] = W
        return out

    # ----- regularizer ----------------------------------------------------------------
    def regularizer(self, W: torch.Tensor) -> torch.Tensor:
        return self.beta * W.norm(dim=-1).sum()

    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        return group_soft_threshold(W, step * self.beta)

    def dual_norm(self, G: torch.Tensor) -> torch.Tensor:
        return G.norm(dim=-1).max()

    # ----- recovery -------------------------------------------------------------------
    def recover(self, W: torch.Tensor) -> RecoveredNetwork:
        """Blocks → branches (SPEC §2.3) of Conv → ReLU → max pool (global or windows + Σ) →
        Linear; the objective is computed by running that network."""
        filters, out = branches_from_blocks(W)
        net = PooledCNN(
            self.in_channels,
            filters.shape[0],
            self.spec,
            pooling="max",
            pool_size=self.pool_size,
            pool_stride=self.pool_stride,
            n_outputs=self.c,
        ).to(device=W.device, dtype=W.dtype)
        net.set_weights(filters, out)
        value = network_objective(net, self.inputs, self.targets, self.loss, self.beta)
        info = {"pool_size": self.pool_size, "pool_stride": self.pool_stride}
        return RecoveredNetwork(net, value, int((out != 0).any(dim=0).sum()), info=info)

    # ----- exact-solver hooks --------------------------------------------------------
    def cvxpy_size(self) -> dict[str, int]:
        blocks = self.c * 2 * self.P
        rows = blocks * self.n * self.windows.shape[0] * self.S
        return {
            "variables": blocks * self.h,
            "constraint_rows": rows,
            "nonzeros": rows * self.h + blocks * self.n * self.h,
        }

    def cone_matrices(self, pattern: int | None = None) -> np.ndarray:
        """G_i as dense rows (P, n·Ω·S, h) in the row order of :meth:`constraint` (only
        pattern ``pattern`` when given: (1, n·Ω·S, h))."""
        sel = slice(None) if pattern is None else slice(pattern, pattern + 1)
        X = self.patches.detach().cpu().numpy()
        t = np.arange(self.n)[None, :, None]
        active = self._active[sel].cpu().numpy()[..., None]
        winner = active * X[t, self._winner_index[sel].cpu().numpy()]  # (P, n, Ω, h)
        G = winner[:, :, :, None, :] - X[:, self.windows.cpu().numpy()][None]  # (P, n, Ω, S, h)
        P_i, t_i, o_i = np.indices(winner.shape[:3])
        G[P_i, t_i, o_i, self._winner_slot[sel][..., 0].cpu().numpy()] += winner
        return G.reshape(G.shape[0], -1, self.h)

    def cvxpy_program(self, w: Any) -> tuple[Any, Any, list[Any]]:
        import cvxpy as cp
        import scipy.sparse as sp

        c, P, h, n = self.c, self.P, self.h, self.n
        B = self.pooled_patches.detach().cpu().numpy()  # (P, n, h)
        # prediction rows (t, j): Σ_i B_i[t]·(w[j,0,i] − w[j,1,i])
        t_idx, i_idx, q_idx = np.meshgrid(np.arange(n), np.arange(P), np.arange(h), indexing="ij")
        rows, cols, vals = [], [], []
        for j in range(c):
            for s, sign in ((0, 1.0), (1, -1.0)):
                rows.append((t_idx * c + j).ravel())
                cols.append(((((j * 2 + s) * P) + i_idx) * h + q_idx).ravel())
                vals.append(sign * np.transpose(B, (1, 0, 2)).ravel())
        A = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(n * c, c * 2 * P * h),
        )
        prediction = cp.reshape(A @ w, (n, c), order="C")
        reg = self.beta * cp.sum(cp.norm(cp.reshape(w, (c * 2 * P, h), order="C"), 2, axis=1))
        G = self.cone_matrices()  # (P, R, h)
        R = G.shape[1]
        blocks = c * 2 * P
        b = np.arange(blocks)[:, None, None]
        r = np.arange(R)[None, :, None]
        q = np.arange(h)[None, None, :]
        data = np.tile(G, (c * 2, 1, 1))
        cone = sp.csr_matrix(
            (
                data.ravel(),
                (
                    np.broadcast_to(b * R + r, data.shape).ravel(),
                    np.broadcast_to(b * h + q, data.shape).ravel(),
                ),
            ),
            shape=(blocks * R, blocks * h),
        )
        cone.eliminate_zeros()
        return prediction, reg, [cone @ w >= 0]


def max_pool_windows(
    X: object,
    spec: PatchSpec,
    pool_size: int | tuple[int, ...] | None = None,
    pool_stride: int | tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Pooling windows (Ω, S) of the conv output grid of X under ``spec`` (global: (1, K))."""
    from ..data import as_float_tensor

    batch, resolved = as_signal_batch(as_float_tensor(X, name="X"), spec)
    grid = resolved.output_shape(tuple(batch.shape[2:]))
    size, stride = resolve_pool_geometry({"pool_size": pool_size, "pool_stride": pool_stride}, grid)
    if size is None or stride is None:
        return global_window(int(np.prod(grid)))
    return pool_windows(grid, size, stride)


def max_patterns(
    X: object,
    spec: PatchSpec,
    n_filters: int | None = None,
    *,
    pool_size: int | tuple[int, ...] | None = None,
    pool_stride: int | tuple[int, ...] | None = None,
    seed: int = 0,
    kind: str = "gaussian",
) -> MaxPatternSet:
    """Max-pooling patterns of X (any layout :func:`convexcnn.fit` accepts) for ``spec`` and
    the given windows: ``n_filters`` sampled generator filters, or — with ``n_filters=None`` —
    every pattern, by exact enumeration (small filter sizes only)."""
    from ..data import as_float_tensor

    batch, resolved = as_signal_batch(as_float_tensor(X, name="X"), spec)
    patches = extract_patches(batch, resolved)
    windows = max_pool_windows(X, spec, pool_size, pool_stride)
    if n_filters is None:
        return enumerate_max_patch_patterns(patches, windows)
    return sample_max_patch_patterns(patches, windows, n_filters, seed=seed, kind=kind)


def resolve_max_patterns(context: FitContext, windows: torch.Tensor) -> MaxPatternSet:
    """The fit's ``patterns`` argument as a MaxPatternSet on the training patches/windows."""
    from ..fit import DEFAULT_PATTERNS

    patterns = context.patterns
    if patterns is None or (isinstance(patterns, int) and not isinstance(patterns, bool)):
        count = DEFAULT_PATTERNS if patterns is None else patterns
        result = sample_max_patch_patterns(
            context.patches, windows, count, seed=context.seed, kind=context.pattern_kind
        )
    elif isinstance(patterns, MaxPatternSet):
        if not torch.equal(patterns.windows, windows):
            raise ValueError(
                "patterns (a MaxPatternSet) were built for other pooling windows; build them "
                "with convexcnn.problems.max_pool.max_patterns(X, spec, ..., pool_size=..., "
                "pool_stride=...) using the same pool_size/pool_stride as fit"
            )
        result = patterns
    else:
        raise ValueError(
            "patterns must be None, a number of generator filters, or a MaxPatternSet for "
            f"pooling='max' (see convexcnn.problems.max_pool.max_patterns); got "
            f"{type(patterns).__name__}"
        )
    if len(result) == 0:
        raise ValueError("the max-pooling pattern set is empty (every filter was inactive)")
    return result


def build(
    context: FitContext,
    options: dict[str, Any],
    *,
    pool_size: tuple[int, ...] | None = None,
    pool_stride: tuple[int, ...] | None = None,
) -> MaxPoolReLU:
    """Builder for ``fit(architecture="two_layer", pooling="max"[, pool_size, pool_stride])``."""
    if options.get("gated"):
        raise ValueError(
            "gated=True is implemented for sum/avg pooling only; drop gated for pooling='max'"
        )
    grid = context.resolved.output_shape(tuple(context.batch.shape[2:]))
    if pool_size is None or pool_stride is None:
        windows = global_window(int(np.prod(grid)))
    else:
        windows = pool_windows(grid, pool_size, pool_stride)
    return MaxPoolReLU(
        context.patches,
        resolve_max_patterns(context, windows),
        context.targets,
        context.beta,
        context.loss,
        spec=context.resolved,
        in_channels=context.batch.shape[1],
        inputs=context.batch,
        pool_size=pool_size,
        pool_stride=pool_stride,
    )
