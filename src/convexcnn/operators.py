"""Hand-written, chunked linear maps of the two-layer program (SPEC §3), no autograd.

Notation: patches M ∈ R^{nK×h} (row (t, k) = X_k[t]), bool masks d_i ∈ {0,1}^{nK} for the P
patterns, ``A_i = Σ_k D_i^k X_k`` (n×h), ``G_i = (2 diag(d_i) − I) M`` (nK×h). The variable is
split into *blocks*: flat index ``b = (j·2 + s)·P + i`` of ``W[j, s, i]`` ∈ R^h (output j,
copy s ∈ {c, c′}, pattern i = b mod P).

* ``predict(V)``: ``F[:, j] = Σ_i A_i V[j, i]`` (n, c) for V (c, P, h) = W[:, 0] − W[:, 1];
  only patterns with a nonzero V are touched.
* ``predict_adjoint(R)``: ``G[j, i] = A_iᵀ R[:, j]`` (c, P, h).
* ``apply(blocks, Wb)`` / ``adjoint(blocks, L)``: ``G_{i(b)} Wb[b]`` (B, nK) and its adjoint.
* ``penalty`` / ``update``: the augmented-Lagrangian term of the cone constraints fused in one
  pass per chunk of blocks (see :meth:`TwoLayerOperators.penalty`).

``A_i`` is precomputed (P·n·h floats, stored transposed as (P, h, n)) when the memory estimate
allows, else recomputed from patches and masks chunk by chunk (2nKhP flops per pass).
"""

from __future__ import annotations

import torch

from .cone_projection import ConeProjector, _fill_candidates
from .memory import DEFAULT_CHUNK_BYTES, MemoryLimitError, check_fits, two_layer_estimate

__all__ = ["TwoLayerOperators"]

#: Gather the active patterns' A_i when fewer than this fraction of the patterns is active.
SPARSE_FRACTION = 0.5


class TwoLayerOperators(ConeProjector):
    """Fast operators of the two-layer program over fixed patches and masks.

    Args:
        patches: (n, K, h), already scaled (1/K for average pooling).
        masks: bool (P, n, K).
        n_outputs: c.
        precompute: store A_i (True), recompute per pass (False) or decide by the memory
            estimate (None).
        chunk_bytes: size of one work buffer.
        memory_limit: bytes the estimate may use (default: 60 % of the available memory).
        generators: (P, h) filters with G_i u_i ≥ 0 (the patterns' generator filters), used
            as known points of the cones when screening rows in :meth:`project`.
    """

    def __init__(
        self,
        patches: torch.Tensor,
        masks: torch.Tensor,
        *,
        n_outputs: int = 1,
        precompute: bool | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        memory_limit: int | None = None,
        generators: torch.Tensor | None = None,
    ) -> None:
        n, K, h = patches.shape
        P = int(masks.shape[0])
        self.n, self.K, self.h, self.P, self.c = n, K, h, P, int(n_outputs)
        self.n_rows = n * K
        self.dtype, self.device = patches.dtype, patches.device
        self.chunk_bytes = int(chunk_bytes)
        self.itemsize = patches.element_size()
        self.M = patches.reshape(n * K, h).contiguous()
        self.masks = masks.reshape(P, n * K)
        if masks.dtype != torch.bool:
            raise ValueError("masks must be a bool tensor (P, n, K)")
        kw = {"dtype": self.dtype, "chunk_bytes": self.chunk_bytes}
        if precompute is None:
            try:
                check_fits(
                    two_layer_estimate(n, K, h, P, self.c, precompute=True, **kw),  # type: ignore[arg-type]
                    limit=memory_limit,
                    device=self.device,
                )
                precompute = True
            except MemoryLimitError:
                precompute = False
        check_fits(
            two_layer_estimate(n, K, h, P, self.c, precompute=precompute, **kw),  # type: ignore[arg-type]
            limit=memory_limit,
            device=self.device,
        )
        self.generators = (
            None if generators is None else generators.to(dtype=self.dtype, device=self.device)
        )
        self.precomputed = bool(precompute)
        self.AT: torch.Tensor | None = self._build_AT() if self.precomputed else None

    # ----- A_i -------------------------------------------------------------------------
    def _build_AT(self) -> torch.Tensor:
        """A_iᵀ for every pattern, (P, h, n), built in chunks of patterns."""
        n, K, h, P = self.n, self.K, self.h, self.P
        X = self.M.view(n, K, h)
        AT = torch.empty((P, h, n), dtype=self.dtype, device=self.device)
        step = max(1, self.chunk_bytes // max(1, n * K * self.itemsize))
        for p0 in range(0, P, step):
            m = self.masks[p0 : p0 + step].view(-1, n, K).to(self.dtype)
            AT[p0 : p0 + step] = torch.einsum("ptk,tkh->pht", m, X)
        return AT

    def masked_patches(self) -> torch.Tensor:
        """A_i for every pattern, (P, n, h) (a view of the stored transpose when precomputed)."""
        if self.AT is not None:
            return self.AT.transpose(1, 2)
        return self._build_AT().transpose(1, 2)

    def block_maps(self, blocks: torch.Tensor) -> torch.Tensor:
        """Signed A_{i(b)}ᵀ of blocks b = (j·2 + s)·P + i: (B, h, n), sign + for s = 0."""
        patterns = blocks % self.P
        if self.AT is not None:
            maps = self.AT.index_select(0, patterns)
        else:
            m = self.masks.index_select(0, patterns).view(-1, self.n, self.K).to(self.dtype)
            maps = torch.einsum("ptk,tkh->pht", m, self.M.view(self.n, self.K, self.h))
        sign = 1 - 2 * ((blocks // self.P) % 2)
        return maps * sign.to(self.dtype)[:, None, None]

    def block_outputs(self, blocks: torch.Tensor) -> torch.Tensor:
        """Output index j of blocks b = (j·2 + s)·P + i."""
        return blocks // (2 * self.P)

    # ----- prediction ----------------------------------------------------------------
    def _sample_chunk(self, per_sample: int) -> int:
        return max(1, self.chunk_bytes // max(1, per_sample * self.itemsize))

    def predict(self, V: torch.Tensor) -> torch.Tensor:
        """F (n, c) with F[:, j] = Σ_i A_i V[j, i] for V (c, P, h)."""
        c, P, h = V.shape
        active = (V != 0).any(dim=2).any(dim=0).nonzero().flatten()
        if active.numel() == 0:
            return V.new_zeros((self.n, c))
        if self.AT is not None:
            if active.numel() > SPARSE_FRACTION * P:
                return (V.reshape(c, P * h) @ self.AT.view(P * h, self.n)).T
            Va = V.index_select(1, active).reshape(c, -1)
            return (Va @ self.AT.index_select(0, active).view(-1, self.n)).T
        return self._predict_from_patches(V.index_select(1, active), active)

    def _predict_from_patches(self, V: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
        c, Pa, h = V.shape
        n, K = self.n, self.K
        out = V.new_empty((n, c))
        masks = self.masks.index_select(0, patterns).view(Pa, n, K)
        step = self._sample_chunk(c * Pa * K)
        Vf = V.reshape(c * Pa, h)
        for t0 in range(0, n, step):
            t1 = min(n, t0 + step)
            Z = (Vf @ self.M[t0 * K : t1 * K].T).view(c, Pa, t1 - t0, K)
            Z = Z * masks[:, t0:t1]
            out[t0:t1] = Z.sum(dim=(1, 3)).T
        return out

    def predict_adjoint(self, R: torch.Tensor) -> torch.Tensor:
        """G (c, P, h) with G[j, i] = A_iᵀ R[:, j] for R (n, c)."""
        n, c = R.shape
        P, h, K = self.P, self.h, self.K
        if self.AT is not None:
            return (self.AT.view(P * h, n) @ R).T.reshape(c, P, h)
        out = R.new_zeros((c, P, h))
        masks = self.masks.view(P, n, K)
        step = self._sample_chunk(c * P * K)
        for t0 in range(0, n, step):
            t1 = min(n, t0 + step)
            S = masks[:, t0:t1].to(R.dtype)  # (P, T, K)
            Z = S[None] * R[t0:t1].T[:, None, :, None]  # (c, P, T, K)
            out += Z.reshape(c * P, -1).matmul(self.M[t0 * K : t1 * K]).view(c, P, h)
        return out

    # ----- cone constraints by blocks ------------------------------------------------
    def _signed(self, blocks: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        """(2 d_i − 1) ⊙ Z rowwise for the blocks' patterns."""
        m = self.masks.index_select(0, blocks % self.P)
        return _sign_by(m, Z)

    def apply(self, blocks: torch.Tensor, Wb: torch.Tensor) -> torch.Tensor:
        """𝒢 on blocks: (B, nK) rows G_{i(b)} Wb[b] for Wb (B, h)."""
        out = Wb.new_empty((Wb.shape[0], self.n * self.K))
        step = self._block_chunk()
        for b0 in range(0, Wb.shape[0], step):
            sl = slice(b0, b0 + step)
            out[sl] = self._signed(blocks[sl], Wb[sl] @ self.M.T)
        return out

    def adjoint(self, blocks: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
        """𝒢ᵀ on blocks: (B, h) rows G_{i(b)}ᵀ L[b] for L (B, nK)."""
        out = L.new_empty((L.shape[0], self.h))
        step = self._block_chunk()
        for b0 in range(0, L.shape[0], step):
            sl = slice(b0, b0 + step)
            out[sl] = self._signed(blocks[sl], L[sl]) @ self.M
        return out

    def penalty(
        self, blocks: torch.Tensor, Wb: torch.Tensor, lam: torch.Tensor | None, rho: float
    ) -> tuple[float, torch.Tensor]:
        """Augmented-Lagrangian term of the constraints G_b w_b ≥ 0 and its gradient.

        value = Σ_b (‖(λ_b − ρ G_b w_b)_+‖² − ‖λ_b‖²)/(2ρ),
        grad_b = −G_bᵀ (λ_b − ρ G_b w_b)_+       (B, h); λ None means 0.
        """
        grad = Wb.new_empty(Wb.shape)
        value = Wb.new_zeros(())
        step = self._block_chunk()
        for b0 in range(0, Wb.shape[0], step):
            sl = slice(b0, b0 + step)
            m = self.masks.index_select(0, blocks[sl] % self.P)
            Z = Wb[sl] @ self.M.T
            g = _sign_by(m, Z)
            if lam is None:
                z = g.mul_(-rho).clamp_min_(0)
                value += z.square().sum()
            else:
                lb = lam[sl]
                z = torch.addcmul(lb, g, g.new_full((), -rho)).clamp_min_(0)
                value += z.square().sum() - lb.square().sum()
            grad[sl] = _sign_by(m, z) @ self.M
        return float(value) / (2 * rho), grad.neg_()

    def update(
        self, blocks: torch.Tensor, Wb: torch.Tensor, lam: torch.Tensor, rho: float
    ) -> tuple[torch.Tensor, float, float]:
        """Multiplier step λ_b ← (λ_b − ρ G_b w_b)_+ in place (λ (B, nK)).

        Returns μ = 𝒢ᵀλ (B, h) of the new multipliers, the largest violation max(−G_b w_b)_+
        and the complementarity Σ ⟨λ_b, G_b w_b⟩ (new λ).
        """
        mu = Wb.new_empty(Wb.shape)
        viol = Wb.new_zeros(())
        comp = Wb.new_zeros(())
        step = self._block_chunk()
        for b0 in range(0, Wb.shape[0], step):
            sl = slice(b0, b0 + step)
            m = self.masks.index_select(0, blocks[sl] % self.P)
            Z = Wb[sl] @ self.M.T
            g = _sign_by(m, Z)
            if g.numel():
                viol = torch.maximum(viol, (-g).amax().clamp_min(0))
            lb = lam[sl]
            lb.addcmul_(g, g.new_full((), -rho)).clamp_min_(0)
            comp += (lb * g).sum()
            mu[sl] = _sign_by(m, lb) @ self.M
        return mu, float(viol), float(comp)

    def max_violation(self, blocks: torch.Tensor, Wb: torch.Tensor) -> float:
        """max over the blocks' rows of (−G_b w_b)_+ (0 for no blocks)."""
        viol = Wb.new_zeros(())
        step = self._block_chunk()
        for b0 in range(0, Wb.shape[0], step):
            sl = slice(b0, b0 + step)
            g = self._signed(blocks[sl], Wb[sl] @ self.M.T)
            viol = torch.maximum(viol, (-g).amax().clamp_min(0))
        return float(viol)

    # ----- hooks of the cone projector (cone_projection.ConeProjector) -----------------
    def min_rows(self, blocks: torch.Tensor, Wb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Smallest entry of G_b w_b and its row, per block: ((B,), (B,) long)."""
        vals = Wb.new_empty((Wb.shape[0],))
        rows = torch.empty((Wb.shape[0],), dtype=torch.long, device=Wb.device)
        step = self._block_chunk()
        for b0 in range(0, Wb.shape[0], step):
            sl = slice(b0, b0 + step)
            vals[sl], rows[sl] = self._signed(blocks[sl], Wb[sl] @ self.M.T).min(dim=1)
        return vals, rows

    def _screen(
        self, blocks: torch.Tensor, Wb: torch.Tensor, radius: torch.Tensor, row_cap: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows that can be violated at some point within ``radius`` of w_b:
        (G_b w_b)_r < ‖x_r‖·radius_b ⇔ |x̂_r·w_b| < radius_b or sign(x̂_r·w_b) ≠ mask
        (x̂_r = x_r/‖x_r‖; zero rows never). At most ``row_cap`` per block.

        Returns (rows (B, cap) long, valid (B, cap), overflow (B,) bool: more than ``row_cap``
        candidate rows — those blocks are checked against all rows).
        """
        B = Wb.shape[0]
        cap = min(row_cap, self.n * self.K)
        cand = torch.zeros((B, cap), dtype=torch.long, device=Wb.device)
        ok = torch.zeros((B, cap), dtype=torch.bool, device=Wb.device)
        over = torch.zeros((B,), dtype=torch.bool, device=Wb.device)
        unit, nonzero_row = self._unit_rows()
        step = self._block_chunk()
        for b0 in range(0, B, step):
            sl = slice(b0, b0 + step)
            Zh = Wb[sl] @ unit.T  # (b, nK) = x̂_r · w
            m = self.masks.index_select(0, blocks[sl] % self.P)
            C = (Zh.abs() < radius[sl, None]) | ((Zh >= 0) != m)
            C &= nonzero_row
            _fill_candidates(C, cap, b0, cand, ok, over)
        return cand, ok, over

    def _unit_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows x_r/‖x_r‖ (0 for zero rows), bool nonzero-row mask), cached."""
        cached = getattr(self, "_unit_cache", None)
        if cached is None:
            norms = self.M.norm(dim=1)
            nonzero = norms > 0
            unit = self.M / torch.where(nonzero, norms, torch.ones_like(norms))[:, None]
            cached = (unit, nonzero)
            self._unit_cache: tuple[torch.Tensor, torch.Tensor] | None = cached
        return cached

    def _rows_of(self, blocks: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Signed rows G_b[r] for r in ``rows`` (B, R) → (B, R, h)."""
        sign = self.masks[(blocks % self.P)[:, None], rows].to(self.dtype) * 2 - 1
        return self.M[rows] * sign[..., None]

    def _anchor_points(self, blocks: torch.Tensor) -> torch.Tensor | None:
        """The blocks' generator filters (points of their cones), or None."""
        if self.generators is None:
            return None
        return self.generators.index_select(0, blocks % self.P)

    def _row_values(self, blocks: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        """G_b z_b for every row, (B, nK)."""
        return self.apply(blocks, Z)

    def row_norm_max(self) -> float:
        """max_r ‖x_r‖ (cached)."""
        value = getattr(self, "_row_norm_max", None)
        if value is None:
            value = float(self.M.norm(dim=1).max()) if self.M.numel() else 0.0
            self._row_norm_max: float | None = value
        return value

    # ----- the full maps on W (c, 2, P, h) -----------------------------------------
    def constraint(self, W: torch.Tensor) -> torch.Tensor:
        """𝒢(W) of shape (c, 2, P, n, K)."""
        c, two, P, h = W.shape
        blocks = torch.arange(c * two * P, device=W.device)
        return self.apply(blocks, W.reshape(-1, h)).view(c, two, P, self.n, self.K)

    def constraint_adjoint(self, L: torch.Tensor) -> torch.Tensor:
        """𝒢ᵀ(L) of shape (c, 2, P, h) for L (c, 2, P, n, K)."""
        c, two, P = L.shape[:3]
        blocks = torch.arange(c * two * P, device=L.device)
        return self.adjoint(blocks, L.reshape(c * two * P, -1)).view(c, two, P, self.h)

    # ----- norms ---------------------------------------------------------------------
    def constraint_norm_squared(self) -> float:
        """‖G_i‖² = λ_max(MᵀM), the same for every pattern."""
        return float(torch.linalg.eigvalsh(self.M.T @ self.M)[-1])


def _sign_by(mask: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """(2·mask − 1) ⊙ Z, as 2·(Z·mask) − Z (exact; faster than torch.where on CPU)."""
    out = Z * mask
    return out.mul_(2).sub_(Z)
