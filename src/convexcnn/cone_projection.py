"""Batched Euclidean projections onto polyhedral cones K_b = {z : G_b z ≥ 0} (one per block).

Used by the exact prox of the cone-constrained group norm (:mod:`convexcnn.solvers.cones`).
:class:`ConeProjector` holds the algorithm (a batched Lawson–Hanson dual active-set method with
warm starts and row screening); subclasses supply the rows:

* :class:`~convexcnn.operators.TwoLayerOperators` — fast chunked hooks from patches and masks;
* :class:`DenseBlockOperators` — any group-ℓ2 program from the protocol hooks
  (``predict_adjoint`` on unit vectors, ``block_constraint_matrix``), for small programs.

Hooks: ``_row_values(blocks, Z)`` (B, rows) = G_b z_b; ``_rows_of(blocks, rows)`` (B, R, size);
``_anchor_points(blocks)`` known points of the cones (or None); ``row_norm_max()``;
``n_rows``; ``dtype``/``device``. ``min_rows`` and ``_screen`` have generic defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .memory import DEFAULT_CHUNK_BYTES, MemoryEstimate, check_fits

__all__ = [
    "ConeProjection",
    "ConeProjector",
    "DenseBlockOperators",
    "active_slots",
    "group_l2_blocks",
]

#: Screened candidate rows per block before falling back to checking every row.
ROW_CAP = 2048
#: Extra active-row slots beyond h (dependent rows of degenerate data).
EXTRA_SLOTS = 4


def active_slots(size: int) -> int:
    """Active-row slots per block in the projection: size + EXTRA_SLOTS."""
    return size + EXTRA_SLOTS


@dataclass
class ConeProjection:
    """Batched projections z_b = Π_{K_b}(w_b) = w_b + G_Sᵀα_b (S: active rows).

    ``Z`` (B, h); ``rows``/``valid`` (B, h+4) the active rows; ``alpha`` (B, h+4) their
    multipliers (≥ 0); ``failed`` (B,) blocks not finished; ``lowest`` (B,) min_r (G_b z_b)_r;
    ``below`` (B,) blocks stopped early because ‖Π_K(w_b)‖ ≤ ‖z_b‖ ≤ threshold (z_b is then
    an upper-bound witness w + G_Sᵀα with α ≥ 0, not the projection).
    """

    Z: torch.Tensor
    rows: torch.Tensor
    valid: torch.Tensor
    alpha: torch.Tensor
    failed: torch.Tensor
    lowest: torch.Tensor
    below: torch.Tensor


class ConeProjector:
    """The projection algorithm; subclasses provide the rows (module docstring)."""

    dtype: torch.dtype
    device: torch.device
    n_rows: int
    chunk_bytes: int = DEFAULT_CHUNK_BYTES

    # ----- hooks -----------------------------------------------------------------------
    def _row_values(self, blocks: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _rows_of(self, blocks: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _anchor_points(self, blocks: torch.Tensor) -> torch.Tensor | None:
        return None

    def row_norm_max(self) -> float:
        raise NotImplementedError

    def _row_norms(self, blocks: torch.Tensor) -> torch.Tensor:
        """‖G_b[r]‖ for every row, (B, rows)."""
        raise NotImplementedError

    def _block_chunk(self) -> int:
        item = torch.empty((), dtype=self.dtype).element_size()
        return max(1, self.chunk_bytes // max(1, self.n_rows * item))

    # ----- generic defaults -------------------------------------------------------------
    def min_rows(self, blocks: torch.Tensor, Wb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Smallest entry of G_b w_b and its row, per block: ((B,), (B,) long)."""
        vals = Wb.new_empty((Wb.shape[0],))
        rows = torch.empty((Wb.shape[0],), dtype=torch.long, device=Wb.device)
        step = self._block_chunk()
        for b0 in range(0, Wb.shape[0], step):
            sl = slice(b0, b0 + step)
            vals[sl], rows[sl] = self._row_values(blocks[sl], Wb[sl]).min(dim=1)
        return vals, rows

    def max_violation(self, blocks: torch.Tensor, Wb: torch.Tensor) -> float:
        """max over the blocks' rows of (−G_b w_b)_+ (0 for no blocks)."""
        if Wb.shape[0] == 0:
            return 0.0
        vals, _ = self.min_rows(blocks, Wb)
        return max(0.0, float(-vals.min()))

    def _screen(
        self, blocks: torch.Tensor, Wb: torch.Tensor, radius: torch.Tensor, row_cap: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows that can be violated within ``radius`` of w_b: (G_b w_b)_r < ‖G_b[r]‖·radius_b
        (zero rows never); at most ``row_cap`` per block, else ``overflow``.

        Returns (rows (B, cap) long, valid (B, cap), overflow (B,) bool).
        """
        B = Wb.shape[0]
        cap = min(row_cap, self.n_rows)
        cand = torch.zeros((B, cap), dtype=torch.long, device=Wb.device)
        ok = torch.zeros((B, cap), dtype=torch.bool, device=Wb.device)
        over = torch.zeros((B,), dtype=torch.bool, device=Wb.device)
        step = self._block_chunk()
        for b0 in range(0, B, step):
            sl = slice(b0, b0 + step)
            norms = self._row_norms(blocks[sl])
            C = (self._row_values(blocks[sl], Wb[sl]) < norms * radius[sl, None]) & (norms > 0)
            _fill_candidates(C, cap, b0, cand, ok, over)
        return cand, ok, over

    # ----- the algorithm -----------------------------------------------------------------
    def _active_rows(
        self, blocks: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """G_S: the blocks' active rows (B, cap, h), zero where not valid."""
        return self._rows_of(blocks, rows) * valid[..., None].to(self.dtype)

    @staticmethod
    def _normal_equations(G: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(G Gᵀ (B, cap, cap), G w (B, cap)) in float64: computed once per active-row set,
        then masked by each least-squares solve (the rows' validity changes, G does not)."""
        G64 = G.to(torch.float64)
        return G64 @ G64.transpose(1, 2), (G64 @ w.to(torch.float64)[..., None])[..., 0]

    def _solve_ls(
        self, normal: tuple[torch.Tensor, torch.Tensor], valid: torch.Tensor
    ) -> torch.Tensor:
        """s = argmin ‖w + G_Sᵀs‖ over the valid rows S (0 elsewhere), (B, cap), from
        ``normal`` = (G Gᵀ, G w); the small systems are solved in float64 whatever the working
        dtype (float32 would leave active rows violated at ~1e-4)."""
        GG, Gw = normal
        B, cap = valid.shape
        width = int(valid.sum(dim=1).max()) if B else 0
        if width == 0:
            return torch.zeros((B, cap), dtype=self.dtype, device=valid.device)
        # compact every block's valid slots to the front: systems of the largest active-set
        # size instead of cap (measured: half the slots or fewer are valid on most calls)
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)[:, :width]
        fv = valid.gather(1, order).to(torch.float64)
        Q = GG.gather(1, order[:, :, None].expand(B, width, cap))
        Q = Q.gather(2, order[:, None, :].expand(B, width, width))
        Q = Q * (fv[:, :, None] * fv[:, None, :])
        scale = Q.diagonal(dim1=1, dim2=2).amax(dim=1).clamp_min(1e-300)
        eye = torch.eye(width, dtype=torch.float64, device=self.device)
        Q = Q + eye * ((1 - fv) + 1e-13)[:, None, :] * scale[:, None, None]
        rhs = -(Gw.gather(1, order) * fv)[..., None]
        L, info = torch.linalg.cholesky_ex(Q)
        if bool((info == 0).all()):
            sol = torch.cholesky_solve(rhs, L)[..., 0] * fv
        else:
            sol = torch.linalg.lstsq(Q, rhs).solution[..., 0] * fv
        out = torch.zeros((B, cap), dtype=torch.float64, device=valid.device)
        return out.scatter_(1, order, sol).to(self.dtype)

    def _prune_positive(
        self, G: torch.Tensor, w: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A warm start for Lawson–Hanson: least squares on the valid rows, dropping the most
        negative coefficient until all are > 0. Returns (α ≥ 0, valid)."""
        valid = valid.clone()
        alpha = w.new_zeros(valid.shape)
        normal = self._normal_equations(G, w)
        for _ in range(G.shape[1] + 1):
            alpha = self._solve_ls(normal, valid)
            bad = valid & (alpha <= 0)
            has = bad.any(dim=1)
            if not bool(has.any()):
                break
            worst = torch.where(bad, alpha, torch.zeros_like(alpha)).argmin(dim=1)
            idx = has.nonzero().flatten()
            valid[idx, worst[idx]] = False
        return alpha * valid.to(self.dtype), valid

    def _lawson_hanson_inner(
        self, G: torch.Tensor, w: torch.Tensor, alpha: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lawson–Hanson inner loop: from feasible α ≥ 0 (support ⊆ valid), move toward the
        least-squares solution on the valid rows, dropping rows that hit zero."""
        valid = valid.clone()
        normal = self._normal_equations(G, w)
        for _ in range(G.shape[1] + 1):
            s = self._solve_ls(normal, valid)
            bad = valid & (s <= 0)
            has = bad.any(dim=1)
            if not bool(has.any()):
                return s, valid
            ratio = torch.where(bad, alpha / (alpha - s).clamp_min(1e-300), torch.inf)
            t = ratio.amin(dim=1).clamp(0, 1)
            t = torch.where(has, t, torch.ones_like(t))
            alpha = alpha + t[:, None] * (s - alpha)
            drop = valid & has[:, None] & ((alpha <= 0) | (bad & (ratio <= t[:, None])))
            valid = valid & ~drop
            alpha = alpha * valid.to(self.dtype)
        return alpha, valid

    def project(
        self,
        blocks: torch.Tensor,
        Wb: torch.Tensor,
        rows: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        anchor: torch.Tensor | None = None,
        *,
        threshold: torch.Tensor | float | None = None,
        max_steps: int | None = None,
        row_cap: int = ROW_CAP,
    ) -> ConeProjection:
        """Euclidean projections z_b = Π_{K_b}(w_b) onto K_b = {z : G_b z ≥ 0}, batched.

        Dual active set (Lawson–Hanson on min_{α≥0} ‖w + G_Sᵀα‖): z = w + G_Sᵀα with α > 0
        the least-squares solution on the active rows S (so G_S z = 0), adding the most
        violated row until min G_b z ≥ −tol; the KKT conditions (α ≥ 0, G_S z = 0, G z ≥ −tol)
        hold at exit, so z is the projection up to roundoff. With ``threshold`` τ, a block
        stops as soon as ‖z‖ ≤ τ: every iterate z = w + G_Sᵀα (α ≥ 0) has ‖z‖ ≥ ‖Π_K(w)‖
        (Moreau: ‖Π_K(w)‖ = min_{α≥0} ‖w + Gᵀα‖), so then ‖Π_K(w)‖ ≤ τ (``below``).
        ``rows``/``valid`` (B, h)
        warm-start S. Screening: with any feasible ``anchor`` z₀ ∈ K_b (default 0),
        ‖Π(w) − w‖ ≤ ‖w − z₀‖ =: r, so only rows with (G_b w)_r < ‖x_r‖·r can be violated at
        the projection; the steps check those rows only (``row_cap`` per block, else all).

        Active sets have h + 4 slots (rows of degenerate data can be dependent).
        Returns a :class:`ConeProjection`; ``failed`` marks blocks not finished within
        ``max_steps`` steps (the caller projects those another way).
        """
        B, h = Wb.shape
        cap = active_slots(h)  # > h: degenerate data can have dependent active rows
        dev = Wb.device
        if rows is None or valid is None:
            rows = torch.zeros((B, cap), dtype=torch.long, device=dev)
            valid = torch.zeros((B, cap), dtype=torch.bool, device=dev)
        else:
            rows, valid = rows.clone(), valid.clone()
        alpha = Wb.new_zeros((B, cap))
        Z = Wb.clone()
        failed = torch.zeros((B,), dtype=torch.bool, device=dev)
        below = torch.zeros((B,), dtype=torch.bool, device=dev)
        thr = Wb.new_full((B,), -1.0)
        if threshold is not None:
            thr = torch.as_tensor(threshold, dtype=Wb.dtype, device=dev).expand(B).clone()
        # feasibility tolerance relative to ‖w‖·max‖row‖: 1e-11 (float64), 1e-6 (float32)
        tol = (
            (1e-11 if self.dtype == torch.float64 else 1e-6) * Wb.norm(dim=1) * self.row_norm_max()
        )
        lowest = Wb.new_zeros((B,))
        if rows.shape[1] < cap:  # warm-start sets from callers that keep h slots
            pad = cap - rows.shape[1]
            rows = torch.cat([rows, rows.new_zeros((B, pad))], dim=1)
            valid = torch.cat([valid, valid.new_zeros((B, pad))], dim=1)
        # warm start: positive least squares on the previous active rows; its iterate already
        # settles most blocks whose projection falls below the threshold
        todo = torch.arange(B, device=dev)
        if bool(valid.any()):
            warm = valid.any(dim=1).nonzero().flatten()
            G = self._active_rows(blocks[warm], rows[warm], valid[warm])
            a, v = self._prune_positive(G, Wb[warm], valid[warm])
            alpha[warm], valid[warm] = a, v
            Z[warm] = Wb[warm] + (G.transpose(1, 2) @ a[..., None])[..., 0]
            small = Z[warm].norm(dim=1) <= thr[warm]
            below[warm[small]] = True
            todo = (~below).nonzero().flatten()
        # screening radius from known points of the cone (rays through the anchors)
        sub = Wb[todo]
        wnorm = sub.norm(dim=1)
        radius = wnorm
        anchors = [] if anchor is None else [anchor[todo]]
        known = self._anchor_points(blocks[todo])
        if known is not None:
            anchors.append(known)
        for a_pts in anchors:
            # t·a ∈ K for t ≥ 0: the closest such point bounds dist(w, K); the margin covers
            # the anchor's own roundoff-level violation
            a2 = (a_pts * a_pts).sum(dim=1)
            t = ((sub * a_pts).sum(dim=1) / a2.clamp_min(1e-300)).clamp_min(0)
            dist = (sub - t[:, None] * a_pts).norm(dim=1)
            radius = torch.minimum(radius, dist + 1e-9 * wnorm)
        width = min(row_cap, self.n_rows)
        cand = torch.zeros((B, width), dtype=torch.long, device=dev)
        cand_ok = torch.zeros((B, width), dtype=torch.bool, device=dev)
        overflow = torch.zeros((B,), dtype=torch.bool, device=dev)
        if todo.numel():
            c_t, ok_t, over_t = self._screen(blocks[todo], sub, radius * (1 + 1e-9), row_cap)
            cand[todo], cand_ok[todo], overflow[todo] = c_t, ok_t, over_t
        used = max(1, int(cand_ok.sum(dim=1).max())) if B else 1
        cand, cand_ok = cand[:, :used], cand_ok[:, :used]  # checks gather only used columns
        steps = max_steps if max_steps is not None else 4 * cap
        for _ in range(steps):
            if todo.numel() == 0:
                break
            bt, w = blocks[todo], Wb[todo]
            G = self._active_rows(bt, rows[todo], valid[todo])
            a, v = self._lawson_hanson_inner(G, w, alpha[todo], valid[todo])
            z = w + (G.transpose(1, 2) @ a[..., None])[..., 0]
            Z[todo], valid[todo], alpha[todo] = z, v, a
            small = z.norm(dim=1) <= thr[todo]
            if bool(small.any()):
                below[todo[small]] = True
                keep = ~small
                todo, z, bt, v = todo[keep], z[keep], bt[keep], v[keep]
                if todo.numel() == 0:
                    break
            gmin_t, j = self._check(bt, z, cand[todo], cand_ok[todo], overflow[todo])
            lowest[todo] = gmin_t
            go = gmin_t < -tol[todo]
            if not bool(go.any()):
                todo = todo[:0]
                break
            todo, j, v = todo[go], j[go], v[go]
            full = v.all(dim=1)
            failed[todo[full]] = True
            todo, j, v = todo[~full], j[~full], v[~full]
            slot = (~v).to(torch.int8).argmax(dim=1)
            rows[todo, slot] = j
            valid[todo, slot] = True
            alpha[todo, slot] = 0
        failed[todo] = True
        return ConeProjection(Z, rows, valid, alpha, failed, lowest, below)

    def _check(
        self,
        blocks: torch.Tensor,
        Z: torch.Tensor,
        cand: torch.Tensor,
        cand_ok: torch.Tensor,
        overflow: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """min_r (G_b z_b)_r and its row: over the screened rows, or all rows on overflow."""
        gmin = Z.new_empty((Z.shape[0],))
        arg = torch.empty((Z.shape[0],), dtype=torch.long, device=Z.device)
        small = (~overflow).nonzero().flatten()
        if small.numel():
            Gc = self._rows_of(blocks[small], cand[small])  # (b, cap, h)
            g = (Gc @ Z[small, :, None])[..., 0]
            g = g.masked_fill(~cand_ok[small], torch.inf)
            vals, k = g.min(dim=1)
            gmin[small] = torch.where(torch.isinf(vals), torch.zeros_like(vals), vals)
            arg[small] = cand[small].gather(1, k[:, None])[:, 0]
        big = overflow.nonzero().flatten()
        if big.numel():
            gmin[big], arg[big] = self.min_rows(blocks[big], Z[big])
        return gmin, arg


def _fill_candidates(
    C: torch.Tensor,
    cap: int,
    b0: int,
    cand: torch.Tensor,
    ok: torch.Tensor,
    over: torch.Tensor,
) -> None:
    """Write the True columns of each row of C (b, rows) into cand/ok[b0 + row, :count]
    (first ``cap``); rows with more than ``cap`` set ``over``."""
    counts = C.sum(dim=1)
    big = counts > cap
    over[b0 : b0 + C.shape[0]] = big
    fit = (~big).nonzero().flatten()
    if fit.numel() == 0:
        return
    counts = counts[fit]
    r, col = C[fit].nonzero(as_tuple=True)
    start = torch.cumsum(counts, 0) - counts
    pos = torch.arange(r.numel(), device=C.device) - start[r]
    cand[b0 + fit[r], pos] = col
    ok[b0 + fit[r], pos] = True


def group_l2_blocks(problem: Any) -> bool:
    """True when the problem's regularizer is β·Σ_b ‖W_b‖₂ over the last axis of W, checked
    numerically on a random W (regularizer value and prox)."""
    gen = torch.Generator().manual_seed(0)
    like = problem.targets
    W = torch.randn(tuple(problem.variable_shape), generator=gen, dtype=like.dtype).to(like.device)
    beta = float(problem.beta)
    try:
        value = float(problem.regularizer(W))
        prox = problem.prox(W, 0.5)
    except (NotImplementedError, TypeError, RuntimeError):
        return False
    norms = W.norm(dim=-1, keepdim=True)
    expected = W * (1 - 0.5 * beta / norms).clamp_min(0)
    return math.isclose(value, beta * float(norms.sum()), rel_tol=1e-9) and bool(
        torch.allclose(prox, expected, rtol=1e-9, atol=1e-12)
    )


class DenseBlockOperators(ConeProjector):
    """Block maps and block cones of any group-ℓ2 program, from the protocol.

    Blocks are W[b] = W.reshape(-1, size)[b] (last axis = one group). The maps are read off
    ``predict_adjoint`` on the n·c unit vectors of the prediction space (``block_maps``:
    (B, size, n·c) with A_bᵀ e_k); the cones from ``block_constraint_matrix(index)`` (all
    materialized: n_blocks·rows·size floats — meant for small programs; the memory estimate
    runs first).
    """

    def __init__(self, problem: Any, *, memory_limit: int | None = None) -> None:
        shape = tuple(problem.variable_shape)
        self.problem = problem
        self.size = int(shape[-1])
        self.lead = shape[:-1]
        self.n_blocks = int(np.prod(self.lead))
        Y = problem.targets
        self.dtype, self.device = Y.dtype, Y.device
        self.nc = int(Y.numel())
        item = torch.empty((), dtype=self.dtype).element_size()
        rows = 0
        if problem.has_constraints:
            first = problem.block_constraint_matrix(
                tuple(int(i) for i in np.unravel_index(0, self.lead))
            )
            rows = int(first.shape[0])
        self.n_rows = rows
        estimate = MemoryEstimate(
            {
                "block maps": self.n_blocks * self.size * self.nc * item,
                "cone matrices": self.n_blocks * rows * self.size * item,
            },
            context=f"dense block operators of {type(problem).__name__} ({self.n_blocks} blocks)",
        )
        check_fits(estimate, limit=memory_limit, device=self.device)
        E = torch.eye(self.nc, dtype=self.dtype, device=self.device).reshape(self.nc, *Y.shape)
        maps = torch.stack(
            [problem.predict_adjoint(E[k]).reshape(-1, self.size) for k in range(self.nc)]
        )
        self.maps = maps.permute(1, 2, 0).contiguous()  # (n_blocks, size, nc)
        self.G: torch.Tensor | None = None
        if rows:
            mats = [
                problem.block_constraint_matrix(
                    tuple(int(i) for i in np.unravel_index(b, self.lead))
                )
                for b in range(self.n_blocks)
            ]
            self.G = torch.stack([m.to(dtype=self.dtype, device=self.device) for m in mats])
            self._norms = self.G.norm(dim=2)
            self._check_rows(problem)

    def _check_rows(self, problem: Any) -> None:
        """The block rows must reproduce ``problem.constraint`` (random W); programs whose
        constraint blocks are not the rows of W.view(-1, size) raise NotImplementedError."""
        assert self.G is not None
        gen = torch.Generator().manual_seed(0)
        shape = tuple(problem.variable_shape)
        W = torch.randn(shape, generator=gen, dtype=self.dtype).to(self.device)
        expected = problem.constraint(W)
        ok = expected is not None and expected.numel() == self.n_blocks * self.n_rows
        if ok:
            rows = torch.einsum("brs,bs->br", self.G, W.reshape(-1, self.size))
            ok = bool(torch.allclose(rows.reshape(-1), expected.reshape(-1), rtol=1e-9, atol=1e-9))
        if not ok:
            raise NotImplementedError(
                f"{type(problem).__name__}: constraint blocks are not the rows of "
                f"W.view(-1, {self.size})"
            )

    def block_maps(self, blocks: torch.Tensor) -> torch.Tensor:
        """A_bᵀ of the blocks over the flattened prediction space: (B, size, n·c)."""
        return self.maps.index_select(0, blocks)

    def _row_values(self, blocks: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        assert self.G is not None
        return torch.einsum("brs,bs->br", self.G.index_select(0, blocks), Z)

    def _rows_of(self, blocks: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        assert self.G is not None
        return self.G[blocks[:, None], rows]

    def _row_norms(self, blocks: torch.Tensor) -> torch.Tensor:
        return self._norms.index_select(0, blocks)

    def row_norm_max(self) -> float:
        return float(self._norms.max()) if self.G is not None and self._norms.numel() else 0.0

    def apply(self, blocks: torch.Tensor, Wb: torch.Tensor) -> torch.Tensor:
        """G_b w_b for every row, (B, rows)."""
        return self._row_values(blocks, Wb)
