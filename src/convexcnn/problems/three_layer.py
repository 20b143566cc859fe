"""Three-layer CNN with two ReLU layers, "branch-owned filters" (SPEC §8) — exact over its tuples.

Network: ``f(X) = Σ_j w2_j (Σ_l w1_jl a(u_jl))_+`` with ``a(u) = Σ_k (X_k u)_+`` (avg pooling:
X_k/K), objective ``ℓ(f(X); Y) + (β/2)Σ_j(‖w1_j‖² + w2_j²)`` with ``‖U_j‖_F ≤ 1`` ("path") or
``‖u_jl‖ ≤ 1`` ("unit").

Variable ``W`` of shape (c, 2, T, m1, h): ``W[j, 0, τ] = c_τ`` and ``W[j, 1, τ] = c'_τ`` (m1 slots
of h weights) for output j and tuple τ = (s, i, δ) of a :class:`~convexcnn.tuples.TupleSet`. With
``S_τl = s_l A_{i_l}`` (n, h), ``A_i = Σ_k D_i^k X_k``, ``B_τ c = Σ_l S_τl c_l``:

    F[:, j] = Σ_τ diag(δ_τ) B_τ (W[j,0,τ] − W[j,1,τ])                          (n, c)
    𝒢(W)[j, s, τ] = [ G_{i_l} W[j,s,τ,l]  for l = 1..m1 ;  (2δ_τ − 1) ⊙ B_τ W[j,s,τ] ]  ≥ 0
                    shape (m1·r + n) per block

where ``G_i`` (r, h) are the rows of the cone ``K_i = {u : (2d_i − 1) ⊙ M u ≥ 0}`` after exact
reductions (:class:`ConeRows`: zero and parallel rows merged; facets only for h = 2).
    ρ(block) = Σ_l ‖c_l‖₂ ("path")  or  ‖c‖_F ("unit")

Each nonzero block is one branch (recovery in :meth:`ThreeLayerReLU.recover`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..losses import Loss
from ..networks import BaselineResult, ThreeLayerCNN, train_network
from ..patches import ResolvedSpec
from ..patterns import PatternSet
from ..tuples import REGULARIZATIONS, TupleSet, enumerate_tuples, sample_tuples
from .base import ConvexProblem, RecoveredNetwork
from .registry import FitContext
from .two_layer import group_soft_threshold, network_objective

__all__ = [
    "DEFAULT_BRANCHES",
    "BranchSearch",
    "ConeRows",
    "ThreeLayerReLU",
    "build",
    "default_branches",
    "search_branches",
    "train_baseline",
]

#: Random branches sampled when ``fit(..., architecture="three_layer", patterns=None)``, capped
#: so that the exact program has at most DEFAULT_ROW_BUDGET cone rows (:func:`default_branches`).
DEFAULT_BRANCHES = 2000
DEFAULT_ROW_BUDGET = 300_000
MIN_DEFAULT_BRANCHES = 10
#: Blocks with ρ ≤ this fraction of the largest block are treated as zero by recovery.
ZERO_BLOCK_RTOL = 1e-10
#: Entries of one gathered (t, m1, n, h) slot-map chunk.
_CHUNK_ENTRIES = 1 << 22


def distinct_rows(M: np.ndarray, tol: float = 1e-12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of M (N, h) up to a signed positive scale, zero rows dropped.

    Returns (unit rows (N', h) with a canonical sign, index of a representative row of M for
    each, flip: True where that representative is the negative of the unit row)."""
    h = M.shape[1]
    norms = np.linalg.norm(M, axis=1)
    nonzero = np.flatnonzero(norms > tol * max(float(norms.max(initial=0.0)), 1e-300))
    unit = M[nonzero] / norms[nonzero, None]
    big = np.abs(unit) > 0.5 / math.sqrt(h)
    first = np.argmax(big, axis=1)
    flip = unit[np.arange(len(unit)), first] < 0
    canon = np.where(flip[:, None], -unit, unit)
    keys = np.round(canon * 1e9).astype(np.int64)
    _, rep = np.unique(keys, axis=0, return_index=True)
    return canon[rep], nonzero[rep], flip[rep]


def default_branches(patches: torch.Tensor, branch_width: int, n_outputs: int) -> int:
    """Random branches to sample when ``patterns=None``: DEFAULT_BRANCHES, fewer when the
    exact program would exceed DEFAULT_ROW_BUDGET cone rows (≈ (m1 + ½)·B tuples of
    2·c·(m1·r + n) rows, r = cone rows per filter slot), at least MIN_DEFAULT_BRANCHES."""
    n, K, h = patches.shape
    r = 2 if h == 2 else len(distinct_rows(patches.reshape(n * K, h).double().numpy())[1])
    per_branch = (branch_width + 0.5) * 2 * n_outputs * (branch_width * r + n)
    budget = int(DEFAULT_ROW_BUDGET // per_branch)
    return int(min(DEFAULT_BRANCHES, max(MIN_DEFAULT_BRANCHES, budget)))


@dataclass
class ConeRows:
    """Rows describing the first-layer cones ``K_i = {u : (2d_i − 1) ⊙ M u ≥ 0}`` (SPEC §3).

    Zero rows of M are dropped and rows equal up to a (signed) scale are merged, which leaves every
    cone unchanged. For h = 2 each cone (a wedge) is further reduced to its two facets: the
    extreme rows of the pointed dual cone cone{(2d_i − 1)_r m_r}. Pattern i's rows are
    ``sign[i, q] · matrix[index[i, q]]`` (``index`` None: every row of ``matrix``; sign 0 pads).
    """

    matrix: torch.Tensor  # (N', h) distinct unit rows
    sign: torch.Tensor  # (P1, r) ±1, 0 = padding
    index: torch.Tensor | None  # (P1, r) long, or None
    reduction: str

    @property
    def rows(self) -> int:
        return int(self.sign.shape[1])

    @classmethod
    def build(cls, masks: torch.Tensor, M: torch.Tensor, tol: float = 1e-12) -> ConeRows:
        """From pattern masks (P1, n, K) and the stacked patches M (nK, h)."""
        P1 = masks.shape[0]
        Mn = M.detach().cpu().double().numpy()
        h = Mn.shape[1]
        matrix, rows, flip = distinct_rows(Mn, tol)
        bits = masks.reshape(P1, -1).numpy()[:, rows]  # (P1, N')
        sign = (2.0 * bits - 1.0) * np.where(flip, -1.0, 1.0)[None, :]
        dtype = M.dtype
        if h == 2 and len(rows) >= 2:
            G = sign[:, :, None] * matrix[None]  # (P1, N', 2)
            mid = G.sum(axis=1)
            mid /= np.linalg.norm(mid, axis=1, keepdims=True).clip(1e-300)
            cross = mid[:, None, 0] * G[:, :, 1] - mid[:, None, 1] * G[:, :, 0]
            dot = (mid[:, None, :] * G).sum(axis=2)
            ang = np.arctan2(cross, dot)
            idx = np.stack([ang.argmin(axis=1), ang.argmax(axis=1)], axis=1)
            sgn = np.take_along_axis(sign, idx, axis=1)
            return cls(
                torch.as_tensor(matrix, dtype=dtype),
                torch.as_tensor(sgn, dtype=dtype),
                torch.as_tensor(idx, dtype=torch.long),
                "facets",
            )
        return cls(
            torch.as_tensor(matrix, dtype=dtype), torch.as_tensor(sign, dtype=dtype), None, "rows"
        )

    def matrices(self, slots: torch.Tensor) -> torch.Tensor:
        """Signed cone rows of the given slots (any shape s) → (*s, r, h)."""
        if self.index is None:
            return self.sign[slots][..., None] * self.matrix
        return self.sign[slots][..., None] * self.matrix[self.index[slots]]

    def apply(self, slots: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """Rows times W: slots (t, m1), W (c, 2, t, m1, h) → (c, 2, t, m1, r)."""
        if self.index is None:
            return torch.einsum("rh,jstlh->jstlr", self.matrix, W) * self.sign[slots]
        return torch.einsum("tlrh,jstlh->jstlr", self.matrices(slots), W)

    def adjoint(self, slots: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
        """Transpose of :meth:`apply`: L (c, 2, t, m1, r) → (c, 2, t, m1, h)."""
        if self.index is None:
            return torch.einsum("jstlr,rh->jstlh", L * self.sign[slots], self.matrix)
        return torch.einsum("jstlr,tlrh->jstlh", L, self.matrices(slots))


class ThreeLayerReLU(ConvexProblem):
    """SPEC §8 program over a fixed :class:`~convexcnn.tuples.TupleSet`.

    Args:
        patches: (n, K, h) training patches (unscaled; pooling="avg" divides by K here).
        tuples: the tuple set (its first-layer patterns must be built on these patches).
        targets: (n, c). beta: β > 0. loss: a Loss.
        pooling: "sum" or "avg". regularization: "path" or "unit" (default: the tuples').
        spec, in_channels, inputs: geometry and data, for the recovered torch network.
        prune: recover from :meth:`prune`'s basic solution (≤ n·c branches, same objective).
    """

    def __init__(
        self,
        patches: torch.Tensor,
        tuples: TupleSet,
        targets: torch.Tensor,
        beta: float,
        loss: Loss,
        *,
        pooling: str = "sum",
        regularization: str | None = None,
        spec: ResolvedSpec,
        in_channels: int,
        inputs: torch.Tensor,
        prune: bool = True,
    ) -> None:
        n, K, h = patches.shape
        pats = tuples.patterns
        if pats.masks.shape[1:] != (n, K) or pats.filter_size != h:
            raise ValueError(
                f"tuples were built for data with (n, K, h) = ({pats.n_samples}, "
                f"{pats.n_positions}, {pats.filter_size}) but X gives ({n}, {K}, {h}); "
                "build the TupleSet from the same X and PatchSpec you fit"
            )
        if pooling not in ("sum", "avg"):
            raise ValueError(f"pooling must be 'sum' or 'avg' for three_layer; got {pooling!r}")
        reg = tuples.regularization if regularization is None else regularization
        if reg not in REGULARIZATIONS:
            raise ValueError(f"regularization must be one of {list(REGULARIZATIONS)}; got {reg!r}")
        if len(tuples) == 0:
            raise ValueError("the tuple set is empty; sample more branches")
        self.raw_patches = patches
        self.patches = patches / K if pooling == "avg" else patches
        self.tuples = tuples
        self.patterns = tuples  # the program's blocks are indexed by tuples
        self.targets = targets
        self.beta = float(beta)
        self.loss = loss
        self.pooling = pooling
        self.regularization = reg
        self.spec = spec
        self.in_channels = in_channels
        self.inputs = inputs
        self.prune_on_recover = bool(prune)
        self.n, self.K, self.h = n, K, h
        self.c = targets.shape[1]
        self.T = len(tuples)
        self.m1 = tuples.branch_width
        dtype = patches.dtype
        self.M = self.patches.reshape(n * K, h)
        masks = pats.masks.to(dtype)
        self.A = torch.einsum("ptk,tkh->pth", masks, self.patches)  # (P1, n, h)
        self.cone = ConeRows.build(pats.masks, self.M)
        self.slots = tuples.slots
        self.slot_signs = tuples.signs.to(dtype)  # (T, m1)
        self.deltas = tuples.deltas.to(dtype)  # (T, n)
        self.delta_signs = self.deltas * 2 - 1
        width = max(h * max(n, self.cone.rows if self.cone.index is not None else 1), n * K)
        self._chunk = max(1, _CHUNK_ENTRIES // max(1, self.m1 * width))

    # ----- helpers ----------------------------------------------------------------------
    def _chunks(self) -> Iterator[slice]:
        for start in range(0, self.T, self._chunk):
            yield slice(start, min(start + self._chunk, self.T))

    def slot_maps(self, idx: slice | torch.Tensor) -> torch.Tensor:
        """S_τl = s_l A_{i_l} for the tuples ``idx``, shape (t, m1, n, h)."""
        return self.A[self.slots[idx]] * self.slot_signs[idx][:, :, None, None]

    # ----- operators --------------------------------------------------------------------
    @property
    def variable_shape(self) -> tuple[int, ...]:
        return (self.c, 2, self.T, self.m1, self.h)

    def predict(self, W: torch.Tensor) -> torch.Tensor:
        V = W[:, 0] - W[:, 1]  # (c, T, m1, h)
        F = torch.zeros((self.n, self.c), dtype=W.dtype, device=W.device)
        for ch in self._chunks():
            pre = torch.einsum("tlnh,jtlh->jtn", self.slot_maps(ch), V[:, ch])
            F += torch.einsum("jtn,tn->nj", pre, self.deltas[ch])
        return F

    def predict_adjoint(self, R: torch.Tensor) -> torch.Tensor:
        g = torch.empty((self.c, self.T, self.m1, self.h), dtype=R.dtype, device=R.device)
        for ch in self._chunks():
            DR = torch.einsum("tn,nj->jtn", self.deltas[ch], R)
            g[:, ch] = torch.einsum("jtn,tlnh->jtlh", DR, self.slot_maps(ch))
        return torch.stack([g, -g], dim=1)

    @property
    def has_constraints(self) -> bool:
        return True

    @property
    def rows_per_block(self) -> int:
        """Cone rows of one block: m1·r first-layer rows (r = ``cone.rows``) + n."""
        return self.m1 * self.cone.rows + self.n

    def constraint(self, W: torch.Tensor) -> torch.Tensor:
        c, m1, r = self.c, self.m1, self.cone.rows
        out = torch.empty((c, 2, self.T, self.rows_per_block), dtype=W.dtype, device=W.device)
        for ch in self._chunks():
            Wc = W[:, :, ch]  # (c, 2, t, m1, h)
            first = self.cone.apply(self.slots[ch], Wc)  # (c, 2, t, m1, r)
            out[:, :, ch, : m1 * r] = first.reshape(c, 2, -1, m1 * r)
            second = torch.einsum("tlnh,jstlh->jstn", self.slot_maps(ch), Wc)
            out[:, :, ch, m1 * r :] = second * self.delta_signs[ch]
        return out

    def constraint_adjoint(self, L: torch.Tensor) -> torch.Tensor:
        c, m1, r = self.c, self.m1, self.cone.rows
        out = torch.empty((c, 2, self.T, m1, self.h), dtype=L.dtype, device=L.device)
        for ch in self._chunks():
            L1 = L[:, :, ch, : m1 * r].reshape(c, 2, -1, m1, r)
            L2 = L[:, :, ch, m1 * r :] * self.delta_signs[ch]
            out[:, :, ch] = self.cone.adjoint(self.slots[ch], L1) + torch.einsum(
                "jstn,tlnh->jstlh", L2, self.slot_maps(ch)
            )
        return out

    # ----- regularizer ------------------------------------------------------------------
    def block_norms(self, W: torch.Tensor) -> torch.Tensor:
        """ρ per block, shape (c, 2, T)."""
        if self.regularization == "path":
            return W.norm(dim=-1).sum(dim=-1)
        return W.flatten(-2).norm(dim=-1)

    def regularizer(self, W: torch.Tensor) -> torch.Tensor:
        return self.beta * self.block_norms(W).sum()

    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        if self.regularization == "path":
            return group_soft_threshold(W, step * self.beta)
        flat = group_soft_threshold(W.flatten(-2), step * self.beta)
        return flat.reshape(W.shape)

    def block_dual_norms(self, G: torch.Tensor) -> torch.Tensor:
        """ρ° per block (c, 2, T): max_l ‖g_l‖ ("path") or ‖g‖_F ("unit")."""
        if self.regularization == "path":
            return G.norm(dim=-1).amax(dim=-1)
        return G.flatten(-2).norm(dim=-1)

    def dual_norm(self, G: torch.Tensor) -> torch.Tensor:
        return self.block_dual_norms(G).max()

    def block_constraint_matrix(self, index: tuple[int, ...]) -> torch.Tensor:
        """G_b (m1·r + n, m1·h) of block (j, s, τ), rows as in :meth:`constraint` (the same for
        every j, s). ρ° is Euclidean for "unit" (NNLS polish exact), max_l ‖·‖ for "path"
        (the NNLS point then gives a valid upper bound)."""
        tau = int(index[2])
        m1, r, h = self.m1, self.cone.rows, self.h
        G = torch.zeros((self.rows_per_block, m1 * h), dtype=self.M.dtype)
        rows = self.cone.matrices(self.slots[tau : tau + 1])[0]  # (m1, r, h)
        for l in range(m1):
            G[l * r : (l + 1) * r, l * h : (l + 1) * h] = rows[l]
        S = self.slot_maps(torch.tensor([tau]))[0]  # (m1, n, h)
        G[m1 * r :] = self.delta_signs[tau][:, None] * S.permute(1, 0, 2).reshape(self.n, m1 * h)
        return G

    @property
    def patterns_complete(self) -> bool:
        return bool(self.tuples.complete)

    # ----- growth hooks -----------------------------------------------------------------
    def with_patterns(self, patterns: Any) -> ThreeLayerReLU:
        """The same program on another TupleSet."""
        if not isinstance(patterns, TupleSet):
            raise ValueError(f"patterns must be a TupleSet; got {type(patterns).__name__}")
        return ThreeLayerReLU(
            self.raw_patches,
            patterns,
            self.targets,
            self.beta,
            self.loss,
            pooling=self.pooling,
            regularization=self.regularization,
            spec=self.spec,
            in_channels=self.in_channels,
            inputs=self.inputs,
            prune=self.prune_on_recover,
        )

    def grown(self, branches: torch.Tensor) -> ThreeLayerReLU:
        """The program with the tuples of the given signed branches added (column generation).

        ``branches`` (B, m1, h + 1): filters c_l in ``[..., :h]``, signs s_l in ``[..., h]``
        (as :meth:`BranchSearch.violating` returns them); the tuple of a branch is that of
        ``(Σ_l s_l a(c_l))_+``."""
        h = self.h
        if branches.ndim != 3 or branches.shape[1:] != (self.m1, h + 1):
            raise ValueError(
                f"branches must have shape (B, {self.m1}, {h + 1}) (filters and a sign column); "
                f"got {tuple(branches.shape)}"
            )
        b = branches.to(self.raw_patches.dtype)
        grown = TupleSet.from_branches(
            self.raw_patches,
            b[:, :, :h],
            torch.where(b[:, :, h] >= 0, 1.0, -1.0).to(b.dtype),
            regularization=self.tuples.regularization,
            base=self.tuples,
            source="search",
        )
        return self.with_patterns(grown)

    def embed_solution(self, W: torch.Tensor, source: ConvexProblem) -> torch.Tensor:
        """A solution of ``source`` (whose tuples are a prefix of ours) as our variable."""
        out = self.zeros().to(W)
        out[:, :, : W.shape[2]] = W
        return out

    def search_violations(
        self, V: torch.Tensor, *, starts: int = 1024, steps: int = 200, seed: int = 0
    ) -> BranchSearch:
        return search_branches(self, V, starts=starts, steps=steps, seed=seed)

    # ----- recovery ---------------------------------------------------------------------
    def prune(self, W: torch.Tensor) -> torch.Tensor:
        """A basic solution with ≤ n·c nonzero blocks, the same predictions and penalty ≤.

        Scales λ_b ≥ 0 of the nonzero blocks solve the LP ``min Σ_b ρ_b λ_b`` s.t.
        ``Σ_b λ_b F_b = F`` (F_b: block b's prediction, F = Σ_b F_b), solved in μ_b = ρ_b λ_b
        (unit-ρ columns, well scaled); λ = 1 is feasible and a vertex (HiGHS dual simplex) has
        at most n·c nonzeros (Carathéodory). Scaling keeps every block in its cone, but a block
        that is in it only to relative accuracy > 1e-9 (interior-point noise) would carry its
        violation along when scaled up: such blocks are first dropped (λ_b = 0), and if that
        costs objective, capped instead (λ_b ≤ 1, which cannot enlarge a violation). Returns W
        unchanged when neither LP keeps the objective within 1e-9 (relative).
        """
        from scipy.optimize import linprog

        norms = self.block_norms(W)
        cutoff = ZERO_BLOCK_RTOL * float(norms.max()) if norms.numel() else 0.0
        if int((norms > cutoff).sum()) <= self.n * self.c:
            return W.clone()
        violation = (-self.constraint(W).amin(dim=-1)).clamp_min(0)
        keep = (norms > cutoff).nonzero(as_tuple=False)
        b = int(keep.shape[0])
        j, s, tau = keep[:, 0], keep[:, 1], keep[:, 2]
        C = W[j, s, tau]  # (b, m1, h)
        pre = torch.einsum("blnh,blh->bn", self.slot_maps(tau), C)
        sigma = 1.0 - 2.0 * s.to(W.dtype)
        Fb = torch.zeros((self.n, self.c, b), dtype=W.dtype)
        Fb[:, j, torch.arange(b)] = (sigma[:, None] * self.deltas[tau] * pre).T
        rho = norms[j, s, tau]
        A_eq = (Fb.reshape(self.n * self.c, b) / rho).numpy()  # unit-ρ branch outputs
        noisy = (violation[j, s, tau] > 1e-9 * rho).numpy()
        before = self.objective(W)
        for cap in (0.0, 1.0):  # μ_b = ρ_b λ_b ≤ cap·ρ_b for the noisy blocks
            mu0 = np.where(noisy, cap * rho.numpy(), rho.numpy())  # feasible start: λ ∈ {0, 1}
            res = linprog(
                np.ones(b),
                A_eq=A_eq,
                b_eq=A_eq @ mu0,
                bounds=np.stack([np.zeros(b), np.where(noisy, cap * rho.numpy(), np.inf)], 1),
                method="highs-ds",
                options={
                    "primal_feasibility_tolerance": 1e-10,
                    "dual_feasibility_tolerance": 1e-10,
                },
            )
            if res.status != 0:
                continue
            lam = (torch.as_tensor(res.x, dtype=W.dtype) / rho).clamp_min(0)
            out = torch.zeros_like(W)
            out[j, s, tau] = lam[:, None, None] * C
            if self.objective(out) <= before + 1e-9 * max(1.0, abs(before)):
                return out
        return W.clone()

    def recover(self, W: torch.Tensor) -> RecoveredNetwork:
        """Each nonzero block c of tuple (s, i, δ), t = ρ(c), σ = ±1 for c/c′ → one branch:
        path: u_l = c_l/√(t‖c_l‖), w1_l = s_l√‖c_l‖; unit: u_l = c_l/‖c_l‖, w1_l = s_l‖c_l‖/√t;
        w2 = σ√t. A zero slot gets u_l = 0, w1_l = 0 (a unit filter would break ‖U_j‖_F ≤ 1).
        With ``prune`` (default) W is first replaced by :meth:`prune`'s basic solution."""
        before = self.block_norms(W)
        blocks_before = (
            int((before > ZERO_BLOCK_RTOL * float(before.max())).sum()) if W.numel() else 0
        )
        if self.prune_on_recover:
            W = self.prune(W)
        norms = self.block_norms(W)  # (c, 2, T)
        cutoff = ZERO_BLOCK_RTOL * float(norms.max()) if norms.numel() else 0.0
        keep = (norms > cutoff).nonzero(as_tuple=False)
        if keep.shape[0] == 0:  # all-zero W: one zero branch (torch has no zero-width layers)
            keep = torch.zeros((1, 3), dtype=torch.long, device=W.device)
        m = int(keep.shape[0])
        j, s, tau = keep[:, 0], keep[:, 1], keep[:, 2]
        C = W[j, s, tau]  # (m, m1, h)
        t = norms[j, s, tau]  # (m,)
        slot = C.norm(dim=-1)  # (m, m1)
        live = slot > ZERO_BLOCK_RTOL * t[:, None]
        safe = torch.where(live, slot, torch.ones_like(slot))
        signs = self.slot_signs[tau]
        if self.regularization == "path":
            U = C / (t[:, None] * safe).sqrt()[:, :, None]
            w1 = signs * slot.sqrt()
        else:
            U = C / safe[:, :, None]
            w1 = signs * slot / t.sqrt()[:, None]
        U = torch.where(live[:, :, None], U, torch.zeros_like(U))
        w1 = torch.where(live, w1, torch.zeros_like(w1))
        sigma = 1.0 - 2.0 * s.to(W.dtype)
        w2 = torch.zeros((self.c, m), dtype=W.dtype)
        mask = torch.zeros((self.c, m), dtype=W.dtype)
        w2[j, torch.arange(m)] = sigma * t.sqrt()
        mask[j, torch.arange(m)] = 1.0
        net = ThreeLayerCNN(
            self.in_channels,
            m,
            self.m1,
            self.spec,
            pooling=self.pooling,
            regularization=self.regularization,
            n_outputs=self.c,
        ).to(W.dtype)
        net.set_weights(U, w1, w2, mask)
        value = network_objective(net, self.inputs, self.targets, self.loss, self.beta)
        with torch.no_grad():
            mixed = int(((w1 > 0).any(dim=1) & (w1 < 0).any(dim=1)).sum())
            info = {
                "mixed_branches": mixed,
                "max_constraint_norm": float(net.constraint_norms().max()) if m else 0.0,
                "weight_penalty": float(net.weight_penalty(self.beta)),
                "path_penalty": float(net.path_penalty(self.beta)),
                "nonzero_blocks": blocks_before,
            }
        return RecoveredNetwork(net, value, m, info=info)

    # ----- exact-solver hooks -----------------------------------------------------------
    def cvxpy_size(self) -> dict[str, int]:
        blocks = self.c * 2 * self.T
        return {
            "variables": blocks * self.m1 * self.h,
            "constraint_rows": blocks * self.rows_per_block,
            "nonzeros": blocks * self.m1 * self.h * (self.cone.rows + 2 * self.n),
        }

    def cvxpy_program(self, w: Any) -> tuple[Any, Any, list[Any]]:
        """Sparse (scipy) matrices built with vectorized index arithmetic; the constraint rows
        are in the order of :meth:`constraint` (so solver duals are its multipliers)."""
        import cvxpy as cp
        import scipy.sparse as sp

        c, T, m1, h, n = self.c, self.T, self.m1, self.h, self.n
        R = self.rows_per_block
        dim = c * 2 * T * m1 * h
        S = torch.cat([self.slot_maps(ch) for ch in self._chunks()]).numpy()  # (T, m1, n, h)
        D = self.deltas.numpy()
        # prediction: row i·c + j; column ((j·2 + s)·T + τ)·m1·h + l·h + q
        pred_rows, pred_cols, pred_vals = [], [], []
        DS = D[:, None, :, None] * S  # (T, m1, n, h)
        tl = np.arange(T * m1 * h).reshape(T, m1, 1, h)
        rows_i = np.arange(n).reshape(1, 1, n, 1)
        for j in range(c):
            for s, sign in ((0, 1.0), (1, -1.0)):
                base = (j * 2 + s) * T * m1 * h
                pred_rows.append(np.broadcast_to(rows_i * c + j, DS.shape).ravel())
                pred_cols.append(np.broadcast_to(base + tl, DS.shape).ravel())
                pred_vals.append(sign * DS.ravel())
        Pm = sp.csr_matrix(
            (np.concatenate(pred_vals), (np.concatenate(pred_rows), np.concatenate(pred_cols))),
            shape=(n * c, dim),
        )
        Pm.eliminate_zeros()
        prediction = cp.reshape(Pm @ w, (n, c), order="C")
        # first-layer cone rows: block b = (j·2+s)·T + τ, row b·R + l·r + q', col (b·m1+l)·h + q
        r = self.cone.rows
        vals1 = self.cone.matrices(self.slots).numpy()  # (T, m1, r, h)
        r_loc = (np.arange(m1)[:, None] * r + np.arange(r)[None, :]).reshape(1, m1, r, 1)
        c_loc = (np.arange(m1)[:, None] * h).reshape(1, m1, 1, 1) + np.arange(h).reshape(1, 1, 1, h)
        tau = np.arange(T).reshape(T, 1, 1, 1)
        # second-layer rows: row b·R + m1·r + i, col (b·m1 + l)·h + q
        vals2 = self.delta_signs.numpy()[:, :, None, None] * S.transpose(0, 2, 1, 3)  # (T,n,m1,h)
        r2 = m1 * r + np.arange(n).reshape(1, n, 1, 1)
        c2 = (np.arange(m1) * h).reshape(1, 1, m1, 1) + np.arange(h).reshape(1, 1, 1, h)
        rows, cols, vals = [], [], []
        for b0 in range(c * 2):
            blk = b0 * T + tau
            rows.append(np.broadcast_to(blk * R + r_loc, vals1.shape).ravel())
            cols.append(np.broadcast_to(blk * m1 * h + c_loc, vals1.shape).ravel())
            vals.append(vals1.ravel())
            rows.append(np.broadcast_to(blk * R + r2, vals2.shape).ravel())
            cols.append(np.broadcast_to(blk * m1 * h + c2, vals2.shape).ravel())
            vals.append(vals2.ravel())
        G = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(c * 2 * T * R, dim),
        )
        if self.regularization == "path":
            reg = self.beta * cp.sum(cp.norm(cp.reshape(w, (dim // h, h), order="C"), 2, axis=1))
        else:
            blocks = cp.reshape(w, (dim // (m1 * h), m1 * h), order="C")
            reg = self.beta * cp.sum(cp.norm(blocks, 2, axis=1))
        return prediction, reg, [G @ w >= 0]


# ----- violating-branch search (certificate) ---------------------------------------------


@dataclass
class BranchSearch:
    """Result of the search ``max_{ρ(c)≤1} |V[:, j]ᵀ (Σ_l s_l a(c_l))_+|`` over branches.

    Attributes:
        values: (c,) best value per output.
        candidates: (k, m1, h) effective filters c_l (ρ = 1) of distinct-tuple local maxima,
            values descending; candidate_signs (k, m1); candidate_values (k,);
            candidate_outputs (k,); candidate_sigma (k,) = ±1 (sign of the output weight).
        n_starts: starting branches (each ascended for both signs of every output).
    """

    values: torch.Tensor
    candidates: torch.Tensor
    candidate_signs: torch.Tensor
    candidate_values: torch.Tensor
    candidate_outputs: torch.Tensor
    candidate_sigma: torch.Tensor
    n_starts: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def best_value(self) -> float:
        return float(self.values.max()) if self.values.numel() else 0.0

    def violating(self, beta: float, tol: float = 1e-6) -> torch.Tensor:
        """Candidate branches with value > β(1 + tol), best first, as *signed branches*
        (k', m1, h + 1): ``[..., :h]`` the filters c_l, ``[..., h]`` the signs s_l
        (the format :meth:`ThreeLayerReLU.grown` takes)."""
        keep = self.candidate_values > beta * (1 + tol)
        return torch.cat([self.candidates[keep], self.candidate_signs[keep][:, :, None]], dim=2)


def _normalize(C: torch.Tensor, regularization: str) -> torch.Tensor:
    """C / ρ(C) per branch, C of shape (S, m1, h)."""
    if regularization == "path":
        rho = C.norm(dim=-1).sum(dim=-1)
    else:
        rho = C.flatten(1).norm(dim=-1)
    return C / rho.clamp_min(1e-300)[:, None, None]


def _branch_value(
    M: torch.Tensor, n: int, C: torch.Tensor, signs: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """value = wᵀ(Σ_l s_l a(c_l))_+ for branches C (S, m1, h); also M-products and δ."""
    S, m1, h = C.shape
    Z = (C.reshape(S * m1, h) @ M.T).reshape(S, m1, n, -1)  # (S, m1, n, K)
    a = Z.clamp_min(0).sum(dim=-1)  # (S, m1, n)
    pre = (signs[:, :, None] * a).sum(dim=1)  # (S, n)
    delta = pre > 0
    return (pre.clamp_min(0) * w).sum(dim=1), Z, delta


def _ascend_branches(
    M: torch.Tensor,
    n: int,
    C: torch.Tensor,
    signs: torch.Tensor,
    w: torch.Tensor,
    steps: int,
    regularization: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized-gradient ascent of wᵀ(Σ_l s_l a(c_l))_+ on {ρ(c) = 1}; rows of w carry σ.

    Gradient in slot l: s_l Σ_{t,k} w_t δ_t 1[X_tk c_l > 0] X_tk. Returns the best value per
    start and its branch. Steps decay geometrically 0.5 → 1e-5."""
    S, m1, h = C.shape
    best_val = torch.full((S,), -math.inf, dtype=C.dtype)
    best_C = C.clone()
    for t in range(steps + 1):
        val, Z, delta = _branch_value(M, n, C, signs, w)
        better = val > best_val
        best_val = torch.where(better, val, best_val)
        best_C = torch.where(better[:, None, None], C, best_C)
        if t == steps:
            break
        coef = (delta * w)[:, None, :, None] * signs[:, :, None, None]  # (S, m1, n, 1)
        active = (Z > 0).to(C.dtype) * coef  # (S, m1, n, K)
        G = (active.reshape(S * m1, -1) @ M).reshape(S, m1, h)
        gnorm = G.flatten(1).norm(dim=1).clamp_min(1e-300)[:, None, None]
        eta = 0.5 * (2e-5) ** (t / max(1, steps - 1))
        C = _normalize(C + eta * G / gnorm, regularization)
    return best_val, best_C


def _starting_branches(
    problem: ThreeLayerReLU, starts: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Starting branches (S, m1, h) and signs (S, m1): a third built from the filters of the
    tuple set's own tuples (with their signs), a third from data patches, a third Gaussian."""
    m1, h = problem.m1, problem.h
    M = problem.M
    dtype = M.dtype
    n_tuple = starts // 3
    n_patch = starts // 3
    n_gauss = starts - n_tuple - n_patch
    pick = torch.randint(0, problem.T, (n_tuple,), generator=gen)
    gens = problem.tuples.patterns.filters.to(dtype)[problem.slots[pick]]  # (n_tuple, m1, h)
    gens = gens / gens.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    scale = torch.rand((n_tuple, m1, 1), generator=gen, dtype=dtype) + 0.1
    C1 = gens * scale + 0.05 * torch.randn((n_tuple, m1, h), generator=gen, dtype=dtype)
    s1 = problem.slot_signs[pick]
    rows = M[torch.randint(0, M.shape[0], (n_patch, m1), generator=gen)]
    C2 = rows + 0.1 * rows.norm(dim=-1, keepdim=True) / math.sqrt(h) * torch.randn(
        (n_patch, m1, h), generator=gen, dtype=dtype
    )
    C3 = torch.randn((n_gauss, m1, h), generator=gen, dtype=dtype)
    s_rand = torch.where(torch.rand((n_patch + n_gauss, m1), generator=gen) < 0.5, 1.0, -1.0).to(
        dtype
    )
    s_rand[:, 0] = 1.0  # all-negative branches are zero
    C = torch.cat([C1, C2, C3])
    signs = torch.cat([s1, s_rand])
    return _normalize(C, problem.regularization), signs


def search_branches(
    problem: ThreeLayerReLU,
    V: torch.Tensor,
    *,
    starts: int = 1024,
    steps: int = 200,
    seed: int = 0,
    max_candidates: int = 64,
) -> BranchSearch:
    """Maximize ``|V[:, j]ᵀ (Σ_l s_l a(c_l))_+|`` over branches with ρ(c) ≤ 1 (SPEC §8
    certificate), by normalized-gradient ascent from ``starts`` starting branches for both signs
    of every output. Heuristic (local): values are attained by real branches, so they are lower
    bounds of the true maximum; a value > β proves the program is not globally optimal."""
    if starts < 1 or steps < 0:
        raise ValueError(f"starts must be ≥ 1 and steps ≥ 0; got starts={starts}, steps={steps}")
    gen = torch.Generator().manual_seed(int(seed))
    C0, s0 = _starting_branches(problem, starts, gen)
    S = C0.shape[0]
    n, M = problem.n, problem.M
    chunk = max(1, (1 << 23) // max(1, problem.m1 * M.shape[0]))
    vals, Cs, sgn, outs, sig = [], [], [], [], []
    for j in range(problem.c):
        v = V[:, j].to(M.dtype)
        for sigma in (1.0, -1.0):
            for a in range(0, S, chunk):
                C, s = C0[a : a + chunk], s0[a : a + chunk]
                w = (sigma * v).expand(C.shape[0], n)
                val, best = _ascend_branches(M, n, C, s, w, steps, problem.regularization)
                vals.append(val)
                Cs.append(best)
                sgn.append(s)
                outs.append(torch.full((val.shape[0],), j, dtype=torch.long))
                sig.append(torch.full((val.shape[0],), sigma, dtype=M.dtype))
    val_all, C_all, s_all = torch.cat(vals), torch.cat(Cs), torch.cat(sgn)
    out_all, sig_all = torch.cat(outs), torch.cat(sig)
    values = torch.zeros(problem.c, dtype=M.dtype)
    for j in range(problem.c):
        sel = out_all == j
        values[j] = val_all[sel].max().clamp_min(0)
    order = torch.argsort(val_all, descending=True)
    seen: set[bytes] = set()
    keep: list[int] = []
    masks = (torch.einsum("rh,slh->slr", M, C_all[order[: 8 * max_candidates]]) >= 0).numpy()
    for pos in range(masks.shape[0]):
        key = np.packbits(masks[pos]).tobytes() + s_all[order[pos]].numpy().tobytes()
        key += bytes([int(out_all[order[pos]]), int(sig_all[order[pos]] > 0)])
        if key in seen:
            continue
        seen.add(key)
        keep.append(int(order[pos]))
        if len(keep) >= max_candidates:
            break
    idx = torch.as_tensor(keep, dtype=torch.long)
    return BranchSearch(
        values=values,
        candidates=C_all[idx],
        candidate_signs=s_all[idx],
        candidate_values=val_all[idx],
        candidate_outputs=out_all[idx],
        candidate_sigma=sig_all[idx],
        n_starts=S,
    )


# ----- baseline ----------------------------------------------------------------------------


def train_baseline(
    problem: ThreeLayerReLU,
    *,
    width: int | None = None,
    restarts: int = 12,
    optimizer: str = "adam",
    lr: float = 1e-2,
    epochs: int = 2000,
    seed: int = 0,
    batch_size: int | None = None,
) -> list[BaselineResult]:
    """The same three-layer network trained by Adam/SGD on the same objective
    (ℓ + (β/2)(‖w1‖² + ‖w2‖²), filters projected onto ‖U_j‖_F ≤ 1 or ‖u_jl‖ ≤ 1 after every
    step), from ``restarts`` seeded random inits (seed, seed+1, …). Default width 2(n+1)."""
    m = 2 * (problem.n + 1) if width is None else int(width)
    if m < 1:
        raise ValueError(f"width must be a positive integer; got {width!r}")
    results = []
    for r in range(restarts):
        gen = torch.Generator().manual_seed(seed + r)
        net = ThreeLayerCNN(
            problem.in_channels,
            m,
            problem.m1,
            problem.spec,
            pooling=problem.pooling,
            regularization=problem.regularization,
            n_outputs=problem.c,
        ).to(problem.targets.dtype)
        dtype = problem.targets.dtype
        with torch.no_grad():
            for p in net.parameters():
                fan_in = p[0].numel() if p.ndim > 1 else 1
                p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype) / math.sqrt(fan_in))
            if problem.c > 1:  # block-structured outputs: branch j feeds output j mod c
                mask = torch.zeros_like(net.output_mask)
                mask[torch.arange(m) % problem.c, torch.arange(m)] = 1.0
                net.output_mask.copy_(mask)
        net.project()
        results.append(
            train_network(
                net,
                problem.inputs,
                problem.targets,
                loss=problem.loss,
                beta=problem.beta,
                optimizer=optimizer,
                lr=lr,
                epochs=epochs,
                batch_size=batch_size,
                seed=seed + r,
                project=lambda module: module.project(),  # type: ignore[operator]
            )
        )
    return results


# ----- fit() builder -----------------------------------------------------------------------


def build(context: FitContext, options: dict[str, Any]) -> ThreeLayerReLU:
    """Builder for ``fit(architecture="three_layer")``.

    ``patterns``: None (sample :func:`default_branches` random branches: ≤ 2000, fewer for big
    data so the exact program stays ≤ 300k cone rows), an int (branches to sample),
    "enumerate" (all tuples; h = 2, branch_width = 2 only; fit passes it on as an enumerated
    PatternSet) or a TupleSet. Options:
    ``branch_width`` (m1, default 2), ``regularization`` ("path" default, or "unit"),
    ``prune`` (default True: export ≤ n·c branches, see :meth:`ThreeLayerReLU.prune`).
    """
    m1 = options.get("branch_width", 2)
    if not isinstance(m1, int) or isinstance(m1, bool) or m1 < 1:
        raise ValueError(f"branch_width must be a positive integer; got {m1!r}")
    reg = options.get("regularization", "path")
    if reg not in REGULARIZATIONS:
        raise ValueError(f"regularization must be one of {list(REGULARIZATIONS)}; got {reg!r}")
    patterns = context.patterns
    if patterns is None or (isinstance(patterns, int) and not isinstance(patterns, bool)):
        count = (
            default_branches(context.patches, m1, context.targets.shape[1])
            if patterns is None
            else patterns
        )
        tuples = sample_tuples(
            context.patches,
            count,
            branch_width=m1,
            regularization=reg,
            seed=context.seed,
            kind=context.pattern_kind,
        )
    elif (isinstance(patterns, str) and patterns == "enumerate") or (
        isinstance(patterns, PatternSet) and patterns.source == "enumerated"
    ):  # fit(patterns="enumerate") arrives as the enumerated first-layer PatternSet
        if m1 != 2:
            raise ValueError("patterns='enumerate' needs branch_width=2 (exact enumeration)")
        tuples = enumerate_tuples(context.patches, regularization=reg)
    elif isinstance(patterns, TupleSet):
        tuples = patterns
        if tuples.branch_width != m1 and "branch_width" in options:
            raise ValueError(
                f"branch_width={m1} contradicts the TupleSet's width {tuples.branch_width}"
            )
        if tuples.regularization != reg and "regularization" in options:
            raise ValueError(
                f"regularization={reg!r} contradicts the TupleSet's {tuples.regularization!r}"
            )
        reg = tuples.regularization
    else:
        raise ValueError(
            "patterns must be None, a number of random branches, 'enumerate' or a TupleSet for "
            f"architecture='three_layer'; got {type(patterns).__name__}"
        )
    return ThreeLayerReLU(
        context.patches,
        tuples,
        context.targets,
        context.beta,
        context.loss,
        pooling=context.pooling,
        regularization=reg,
        spec=context.resolved,
        in_channels=context.batch.shape[1],
        inputs=context.batch,
        prune=bool(options.get("prune", True)),
    )
