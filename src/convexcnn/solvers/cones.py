"""The exact prox of the cone-constrained group norm, and cone projections/repair.

For a closed convex cone K and the gauge ‖·‖, the prox of τ‖·‖ + ι_K is the group soft
threshold of the projection (write z = r·u with u ∈ K, ‖u‖ = 1; ⟨u, w⟩ is maximized by
u = Π_K(w)/‖Π_K(w)‖):

    prox_{τ‖·‖ + ι_K}(w) = Π_K(w) · (1 − τ/‖Π_K(w)‖)_+ .

With K_b = {z : G_b z ≥ 0} and Π_K(w) = w + G_bᵀα (α ≥ 0), the prox step of FISTA at y with
step 1/L also yields multipliers λ_b = L·α_b and the normal-cone term μ_b = G_bᵀλ_b =
L(Π_K(w_b) − w_b), w = y − ∇f(y)/L. Then ‖(𝒜ᵀV + μ)_b‖ ≤ β + L‖x⁺_b − y_b‖ with V = −∇ℓ(𝒜y):
a dual point for the Lagrangian bound of :mod:`convexcnn.solvers.duality`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..cone_projection import ConeProjector, DenseBlockOperators, active_slots, group_l2_blocks
from ..problems.base import ConvexProblem

__all__ = [
    "ConeProx",
    "GroupProx",
    "block_matrix",
    "block_operators",
    "project_onto_cone",
    "supports_cone_prox",
]


def block_operators(problem: ConvexProblem, *, group_l2: bool = True) -> Any:
    """Per-block maps and cone projections of a (group-ℓ2) program, or None.

    The problem's own fast operators when they provide them (``problem.operators``, e.g. the
    two-layer program), else :class:`~convexcnn.cone_projection.DenseBlockOperators` built from
    the protocol (``predict_adjoint``, ``block_constraint_matrix``) — with ``group_l2`` only
    when the regularizer is checked to be group ℓ2 over the last axis of W; None otherwise.
    """
    ops = getattr(problem, "operators", None)
    if isinstance(ops, ConeProjector) and hasattr(ops, "block_maps"):
        return ops
    if group_l2 and not group_l2_blocks(problem):
        return None
    try:
        return DenseBlockOperators(problem)
    except NotImplementedError:
        return None


def supports_cone_prox(problem: ConvexProblem) -> bool:
    """True for constrained group-ℓ2 programs with per-block cones (see block_operators)."""
    return problem.has_constraints and block_operators(problem) is not None


def block_matrix(ops: Any, block: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """G_b as a dense (rows, size) matrix, column q = G_b e_q (``ops.apply`` per block, or
    one block holding all of W for the dense fallback)."""
    basis = torch.eye(size, dtype=like.dtype, device=like.device)
    idx = torch.full((1,), block, dtype=torch.long, device=like.device)
    return torch.cat([ops.apply(idx, basis[q : q + 1]) for q in range(size)]).T


def project_onto_cone(
    G: np.ndarray, w: np.ndarray, *, max_rounds: int = 50
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Euclidean projection of w onto {z : G z ≥ 0} (reference / fallback, scipy NNLS).

    z = w + G_Rᵀα with α ≥ 0 minimizing ‖G_Rᵀα + w‖ over the rows R violated so far, grown
    until none is. Returns (z, rows R, α).
    """
    from scipy.optimize import nnls

    rows = np.flatnonzero(G @ w < 0)
    z, alpha = w.copy(), np.zeros(0)
    for _ in range(max_rounds):
        if rows.size == 0:
            return z, rows, alpha
        GR = G[rows]
        alpha, _ = nnls(GR.T, -w, maxiter=50 * max(10, rows.size))
        z = w + GR.T @ alpha
        new = np.setdiff1d(np.flatnonzero(G @ z < 0), rows)
        if new.size == 0:
            break
        rows = np.union1d(rows, new)
    return z, rows, alpha


class GroupProx:
    """prox of step·β·Σ_b ‖w_b‖ (blocks = rows of W.view(-1, h)), with its Jacobian.

    After a call: ``kept`` (blocks with a nonzero result), ``kept_Z`` (their input rows),
    ``step``; ``mu`` is None (no cone), ``violation`` 0.
    """

    def __init__(self, problem: ConvexProblem) -> None:
        self.problem = problem
        shape = tuple(problem.variable_shape)
        self.shape, self.size = shape, shape[-1]
        self.n_blocks = int(np.prod(shape[:-1]))
        self.step = 1.0
        self.violation = 0.0
        self.mu: torch.Tensor | None = None
        dev = problem.targets.device
        self.kept = torch.zeros((0,), dtype=torch.long, device=dev)
        self.kept_Z = torch.zeros((0, self.size), dtype=problem.targets.dtype, device=dev)

    def __call__(self, W: torch.Tensor, step: float) -> torch.Tensor:
        Wb = W.reshape(-1, self.size)
        tau = step * self.problem.beta
        norms = Wb.norm(dim=1)
        self.step = step
        self.kept = (norms > tau).nonzero().flatten()
        self.kept_Z = Wb[self.kept]
        scale = (1 - tau / norms.clamp_min(1e-300)).clamp_min(0)
        return (Wb * scale[:, None]).view(self.shape)

    def _face_projectors(self) -> torch.Tensor:
        eye = torch.eye(self.size, dtype=self.kept_Z.dtype, device=self.kept_Z.device)
        return eye.expand(self.kept.numel(), self.size, self.size)

    def jacobian(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(blocks, J (B, h, h)): the Jacobian of the last prox on its nonzero blocks,
        J = (1 − τ/‖z‖)·P_S + τ zzᵀ/‖z‖³ (P_S: projector onto the active face, I without
        cones; symmetric because P_S z = z)."""
        Z = self.kept_Z
        tau = self.step * self.problem.beta
        norms = Z.norm(dim=1).clamp_min(1e-300)
        PS = self._face_projectors()
        J = (1 - tau / norms)[:, None, None] * PS
        J = J + (tau / norms**3)[:, None, None] * Z[:, :, None] * Z[:, None, :]
        return self.kept, J


class ConeProx(GroupProx):
    """prox of step·β·Σ_b ‖w_b‖ + Σ_b ι_{K_b}(w_b) over W (…, h), blocks = rows of W.view(-1, h).

    Keeps each block's active rows between calls (warm start). After a call, ``mu`` holds
    L(Π_K(w) − w) (variable-shaped, L = 1/step), ``violation`` the largest (−G_b x_b)_+ of
    the result, ``kept``/``kept_Z`` the nonzero blocks and their projections Π_K(w_b).
    """

    def __init__(self, problem: ConvexProblem, ops: Any = None) -> None:
        super().__init__(problem)
        self.ops: Any = block_operators(problem) if ops is None else ops
        dev = problem.targets.device
        slots = active_slots(self.size)  # active-row slots per block (as ops.project)
        self.rows = torch.zeros((self.n_blocks, slots), dtype=torch.long, device=dev)
        self.valid = torch.zeros((self.n_blocks, slots), dtype=torch.bool, device=dev)
        self.alpha = torch.zeros((self.n_blocks, slots), dtype=problem.targets.dtype, device=dev)
        self.anchor = torch.zeros(
            (self.n_blocks, self.size), dtype=problem.targets.dtype, device=dev
        )
        self.fallbacks = 0

    def __call__(self, W: torch.Tensor, step: float) -> torch.Tensor:
        beta = self.problem.beta
        Wb = W.reshape(-1, self.size)
        out = torch.zeros_like(Wb)
        mu = torch.zeros_like(Wb)
        self.alpha.zero_()
        self.step = step
        cand = (Wb.norm(dim=1) > step * beta).nonzero().flatten()
        self.violation = 0.0
        self.kept = cand[:0]
        self.kept_Z = Wb[:0]
        if cand.numel():
            w = Wb[cand]
            tau = step * beta
            res = self.ops.project(
                cand,
                w,
                self.rows[cand],
                self.valid[cand],
                anchor=self.anchor[cand],
                threshold=tau if step > 0 else None,
            )
            Z, alpha, lowest = res.Z, res.alpha, res.lowest
            if bool(res.failed.any()):
                Z, alpha, lowest = Z.clone(), alpha.clone(), lowest.clone()
                for j in res.failed.nonzero().flatten().tolist():
                    self._fallback(int(cand[j]), w[j], Z, alpha, lowest, res.rows, res.valid, j)
            self.rows[cand], self.valid[cand], self.alpha[cand] = res.rows, res.valid, alpha
            exact = ~res.below
            self.anchor[cand[exact]] = Z[exact]
            mu[cand] = (Z - w) / step if step > 0 else 0.0
            norms = Z.norm(dim=1, keepdim=True)
            scale = (1 - tau / norms.clamp_min(1e-300)).clamp_min(0)
            scale[res.below] = 0.0
            out[cand] = Z * scale
            kept = scale[:, 0] > 0
            self.kept, self.kept_Z = cand[kept], Z[kept]
            if bool(kept.any()):
                self.violation = max(0.0, float(-(lowest[kept] * scale[kept, 0]).min()))
        self.mu = mu.view(self.shape)
        return out.view(self.shape)

    def _face_projectors(self) -> torch.Tensor:
        """P_S = I − G_Sᵀ(G_S G_Sᵀ)⁺G_S on the kept blocks' active rows."""
        blocks = self.kept
        G = self.ops._active_rows(blocks, self.rows[blocks], self.valid[blocks])
        dtype = G.dtype
        G = G.to(torch.float64)  # small systems in float64 (as the projection)
        fv = self.valid[blocks].to(torch.float64)
        Q = G @ G.transpose(1, 2)
        scale = Q.diagonal(dim1=1, dim2=2).amax(dim=1).clamp_min(1e-300)
        eye_c = torch.eye(G.shape[1], dtype=torch.float64, device=G.device)
        Q = Q + eye_c * ((1 - fv) + 1e-13)[:, None, :] * scale[:, None, None]
        X = torch.linalg.lstsq(Q, G).solution  # (B, cap, h)
        eye = torch.eye(self.size, dtype=torch.float64, device=G.device)
        return (eye - G.transpose(1, 2) @ X).to(dtype)

    def _fallback(
        self,
        block: int,
        w: torch.Tensor,
        Z: torch.Tensor,
        alpha: torch.Tensor,
        lowest: torch.Tensor,
        rows: torch.Tensor,
        valid: torch.Tensor,
        j: int,
    ) -> None:
        """Exact projection of one block by scipy NNLS (rare: degenerate active sets)."""
        self.fallbacks += 1
        G = block_matrix(self.ops, block, self.size, w)
        z, R, a = project_onto_cone(G.cpu().numpy(), w.cpu().numpy())
        Z[j] = torch.as_tensor(z, dtype=w.dtype, device=w.device)
        lowest[j] = float((G.cpu().numpy() @ z).min()) if G.shape[0] else 0.0
        top = np.argsort(-a)[: rows.shape[1]] if a.size else np.zeros(0, dtype=np.int64)
        valid[j] = False
        alpha[j] = 0
        for slot, k in enumerate(top.tolist()):
            if a[k] > 0:
                rows[j, slot], valid[j, slot], alpha[j, slot] = int(R[k]), True, float(a[k])

    def multipliers(self, rows_per_block: int, row_shape: tuple[int, ...]) -> torch.Tensor:
        """λ = α/step of the last call as a sparse COO tensor (*block axes, *row_shape)."""
        lam = self.alpha / self.step
        keep = self.valid & (lam > 0)
        b, slot = keep.nonzero(as_tuple=True)
        r = self.rows[b, slot]
        lead = self.shape[:-1]
        idx = []
        rest = b
        for dim in reversed(lead):
            idx.append(rest % dim)
            rest = rest // dim
        idx = idx[::-1]
        rest = r
        tail = []
        for dim in reversed(row_shape):
            tail.append(rest % dim)
            rest = rest // dim
        indices = (
            torch.stack(idx + tail[::-1])
            if b.numel()
            else torch.zeros((len(lead) + len(row_shape), 0), dtype=torch.long, device=lam.device)
        )
        return torch.sparse_coo_tensor(
            indices, lam[b, slot], (*lead, *row_shape), check_invariants=False
        ).coalesce()
