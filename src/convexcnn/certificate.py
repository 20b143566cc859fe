"""Optimality certificates: dual points, duality gaps, violating-filter search (SPEC §2.4).

**The bound.** For a program ``min ℓ(𝒜W) + β ρ(W) s.t. 𝒢W ≥ 0`` take any ``V`` (n, c) and
multipliers ``λ ≥ 0`` with ``ρ°((𝒜ᵀV + 𝒢ᵀλ)_b) ≤ β`` for every block b. For every feasible W,
by Fenchel–Young, ``⟨λ, 𝒢W⟩ ≥ 0`` and Hölder for the gauge,

    ℓ(𝒜W) + βρ(W) ≥ −ℓ*(−V) − ⟨𝒜ᵀV + 𝒢ᵀλ, W⟩ + βρ(W) ≥ −ℓ*(−V),

so ``−ℓ*(−V)`` (``Loss.dual_value``) is a lower bound. We take ``V = −∇ℓ(𝒜Ŵ)`` at the solution
and, per block, ``min_{λ≥0} ρ°(z_b + G_bᵀλ)`` with ``z = 𝒜ᵀV`` (solver multipliers when present,
else projected gradient, then exact NNLS on the largest blocks). With the resulting ratio
``r = max_b ρ°(·)/β`` every ``s ∈ [0, min(1, 1/r)]`` makes ``sV`` dual feasible (and keeps it in
the conjugate's domain for every loss of :mod:`convexcnn.losses`); the bound is the best such s.

**What a bound covers (``Certificate.scope``).** For the two-layer CNN the per-block quantity is
``max {vᵀ g(X; u) : ‖u‖ ≤ 1, u has pattern b}`` with ``g(X; u) = Σ_k (X_k u)_+``, so

* ``"current patterns only"``: feasibility was checked on the program's own patterns. The lower
  bound is a bound on the *restricted* optimum (networks whose every filter has one of these
  patterns). It says nothing about filters with other patterns.
* ``"searched N starts"``: additionally ``max_u |vᵀ g(X; u)|`` over *all* unit filters was
  estimated by projected ascent from N starting filters, and r includes the best value found. If
  the search found the true maximum, the lower bound is a lower bound on the global optimum of
  the non-convex training problem; the search is local, so this is a heuristic certificate.
* ``"enumerated"``: the pattern set holds every pattern of the data (exact enumeration), so the
  restricted check *is* the check over all filters and the lower bound provably bounds the
  global optimum of the non-convex training problem: a proof of global optimality up to ``gap``.

``upper_bound`` is always the objective of a real network (computed by running it), so
``upper_bound − lower_bound`` bounds how much better any network of the covered kind can do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .losses import Loss, get_loss
from .problems.base import ConvexProblem

__all__ = [
    "SCOPE_CURRENT",
    "SCOPE_ENUMERATED",
    "Certificate",
    "DualFeasibility",
    "FilterSearch",
    "best_scaled_dual_value",
    "certify",
    "certify_solution",
    "restricted_dual_ratio",
    "search_filters",
]

SCOPE_ENUMERATED = "enumerated"
SCOPE_CURRENT = "current patterns only"

#: Row budget (floats) of one (starts × nK) buffer in the filter search.
_SEARCH_CHUNK_FLOATS = 1 << 23
#: The ascent stops when no start improved over this many steps.
_STALL_STEPS = 10

_SCOPE_TEXT = {
    SCOPE_ENUMERATED: "all patterns enumerated: a proof for the non-convex training problem",
    SCOPE_CURRENT: "valid for networks using the current patterns only",
}


def _scope_text(scope: str) -> str:
    if scope in _SCOPE_TEXT:
        return _SCOPE_TEXT[scope]
    return "heuristic: valid for the non-convex problem if the local filter search found the max"


@dataclass
class FilterSearch:
    """Result of the violating-filter search ``max_{‖u‖≤1} |V[:, j]ᵀ g(X; u)|``.

    Attributes:
        values: (c,) best value found per output j.
        filters: (c, h) unit filters attaining ``values``.
        candidates: (m, h) unit local maximizers with distinct patterns, values descending.
        candidate_values: (m,) their values; candidate_outputs: (m,) their output j.
        n_starts: starting filters (each ascended for both signs of every output).
    """

    values: torch.Tensor
    filters: torch.Tensor
    candidates: torch.Tensor
    candidate_values: torch.Tensor
    candidate_outputs: torch.Tensor
    n_starts: int

    @property
    def best_value(self) -> float:
        return float(self.values.max()) if self.values.numel() else 0.0

    def violating(self, beta: float, tol: float = 1e-6) -> torch.Tensor:
        """Candidate filters with value > β(1 + tol), best first, shape (m', h)."""
        keep = self.candidate_values > beta * (1 + tol)
        return self.candidates[keep]


@dataclass
class DualFeasibility:
    """``ratio = max_b min_{λ≥0} ρ°((𝒜ᵀV + 𝒢ᵀλ)_b) / β`` as certified by explicit multipliers.

    ``ratio`` is an upper bound of the exact value (equal to it on polished blocks), hence safe
    for the dual bound. ``method`` says where λ came from; ``polished`` counts NNLS blocks.
    """

    ratio: float
    method: str
    polished: int = 0
    block_ratios: torch.Tensor | None = None


@dataclass
class Certificate:
    """Lower/upper bounds on the training objective and what they cover (module docstring).

    Attributes:
        lower_bound: −ℓ*(−sV), a valid lower bound within ``scope``.
        upper_bound: the objective of a real network (the fit's ``network_objective``).
        scope: "enumerated" | "searched N starts" | "current patterns only".
        max_dual_ratio: max over checked blocks / searched filters of |vᵀg|/β (≤ 1 ⇔ dual
            feasible; s = min(1, 1/ratio)).
        details: extra numbers (restricted ratio, search ratio, scale s, timings, ...).
        search: the filter search behind a "searched" scope (not serialized).
    """

    lower_bound: float
    upper_bound: float
    scope: str
    max_dual_ratio: float
    details: dict[str, Any] = field(default_factory=dict)
    search: FilterSearch | None = field(default=None, repr=False, compare=False)

    @property
    def gap(self) -> float:
        """upper_bound − lower_bound (≥ 0 up to rounding)."""
        return self.upper_bound - self.lower_bound

    @property
    def relative_gap(self) -> float:
        """gap / |upper_bound| (gap itself when the upper bound is 0)."""
        scale = abs(self.upper_bound)
        return self.gap / scale if scale > 0 else self.gap

    @property
    def is_proof(self) -> bool:
        """True when the lower bound provably covers every network (scope "enumerated")."""
        return self.scope == SCOPE_ENUMERATED

    def as_dict(self) -> dict[str, Any]:
        return {
            "lower_bound": self.lower_bound,
            "upper_bound": self.upper_bound,
            "gap": self.gap,
            "relative_gap": self.relative_gap,
            "scope": self.scope,
            "max_dual_ratio": self.max_dual_ratio,
            "details": dict(self.details),
        }

    def __str__(self) -> str:
        return (
            f"objective {self.upper_bound:.8g} ≥ optimum ≥ {self.lower_bound:.8g} "
            f"(gap {self.gap:.3g}, relative {self.relative_gap:.3g}; scope: {self.scope} — "
            f"{_scope_text(self.scope)})"
        )


# ------------------------------------------------------------------------------------------
# dual value


def best_scaled_dual_value(
    loss: Loss, V: torch.Tensor, Y: torch.Tensor, ratio: float
) -> tuple[float, float]:
    """max over dual-feasible scalings s ∈ [0, 1/ratio] of −ℓ*(−sV) (concave in s) → (value, s).

    s = min(1, 1/ratio) is always in the conjugate's domain for our losses; larger s (possible
    when ratio < 1) count only where ``loss.dual_value`` is finite."""
    from scipy.optimize import minimize_scalar

    if not math.isfinite(ratio):
        return float(loss.dual_value(0 * V, Y)), 0.0
    s_max = min(1.0 / ratio, 1e6) if ratio > 0 else 1e6

    def value(s: float) -> float:
        v = float(loss.dual_value(s * V, Y))
        return v if math.isfinite(v) else -math.inf

    best_s = min(1.0, s_max)
    best = value(best_s)
    res = minimize_scalar(
        lambda s: min(-value(s), 1e300),
        bounds=(0.0, s_max),
        method="bounded",
        options={"xatol": 1e-12 * max(1.0, s_max)},
    )
    if res.success and math.isfinite(value(float(res.x))) and value(float(res.x)) > best:
        best_s, best = float(res.x), value(float(res.x))
    return best, best_s


# ------------------------------------------------------------------------------------------
# dual feasibility over the current patterns


def _block_norms(problem: ConvexProblem, G: torch.Tensor) -> torch.Tensor:
    try:
        return problem.block_dual_norms(G)
    except NotImplementedError:
        return problem.dual_norm(G).reshape(1)


def _constraint_norm_sq(problem: ConvexProblem, like: torch.Tensor, iters: int = 30) -> float:
    """‖𝒢‖² by power iteration on 𝒢ᵀ𝒢 (seeded, no global state), with 5 % safety margin."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(like.shape, generator=gen, dtype=like.dtype).to(like.device)
    x /= x.norm()
    est = 0.0
    for _ in range(iters):
        g = problem.constraint(x)
        assert g is not None
        y = problem.constraint_adjoint(g)
        est = float(y.norm())
        if est == 0.0:
            return 1.0
        x = y / est
    return 1.05 * est


def _projected_gradient_multipliers(
    problem: ConvexProblem, Z: torch.Tensor, L0: torch.Tensor, iters: int
) -> torch.Tensor:
    """FISTA for min_{λ≥0} ½‖Z + 𝒢ᵀλ‖² (separable over blocks: minimizes every block norm)."""
    lip = _constraint_norm_sq(problem, Z)
    lam = L0.clamp_min(0)
    y = lam
    t = 1.0
    for _ in range(iters):
        grad = problem.constraint(Z + problem.constraint_adjoint(y))
        assert grad is not None
        new = (y - grad / lip).clamp_min(0)
        t_new = 0.5 * (1 + math.sqrt(1 + 4 * t * t))
        y = new + ((t - 1) / t_new) * (new - lam)
        lam, t = new, t_new
    return lam


def _nnls_block_norm(problem: ConvexProblem, Z: torch.Tensor, index: tuple[int, ...]) -> float:
    """ρ°_b(z_b + G_bᵀλ) at λ = argmin_{λ≥0} ‖z_b + G_bᵀλ‖₂ (scipy NNLS): the exact
    min_{λ≥0} ρ°_b(z_b + G_bᵀλ) when ρ°_b is Euclidean (group ℓ2), else a valid upper bound.
    The value is the problem's own block dual norm of the residual."""
    from scipy.optimize import nnls

    G = problem.block_constraint_matrix(index).detach().cpu().double().numpy()  # (rows, size)
    z = Z[index].reshape(-1).detach().cpu().double().numpy()
    if G.shape[0] == 0:
        residual = z
    else:
        lam, _ = nnls(G.T, -z, maxiter=50 * G.shape[1] + 100)
        residual = z + G.T @ np.maximum(lam, 0.0)
    one_block = torch.zeros_like(Z)
    one_block[index] = torch.as_tensor(residual, dtype=Z.dtype).reshape(Z[index].shape)
    return float(problem.block_dual_norms(one_block)[index])


def _residual_from_multipliers(
    problem: ConvexProblem, Z: torch.Tensor, multipliers: torch.Tensor | None
) -> torch.Tensor | None:
    """Z + 𝒢ᵀλ for the solver's λ (clamped to ≥ 0); None when absent or of the wrong shape.

    Sparse COO multipliers (fully sparse, or hybrid with dense rows) are applied block by block
    through ``block_constraint_matrix``; blocks without an entry have λ_b = 0."""
    if multipliers is None:
        return None
    try:
        if not multipliers.is_sparse:
            return Z + problem.constraint_adjoint(multipliers.to(Z).clamp_min(0))
        lam = multipliers.coalesce()
        try:
            nb = problem.block_dual_norms(Z).ndim  # number of block axes
        except NotImplementedError:
            nb = lam.sparse_dim() + 1  # no block structure: densify below
        if lam.sparse_dim() < nb:
            return Z + problem.constraint_adjoint(lam.to_dense().to(Z).clamp_min(0))
        if tuple(lam.shape[:nb]) != tuple(Z.shape[:nb]):
            return None
        return _apply_sparse_multipliers(problem, Z, lam, nb)
    except (RuntimeError, ValueError):
        return None


def _apply_sparse_multipliers(
    problem: ConvexProblem, Z: torch.Tensor, lam: torch.Tensor, nb: int
) -> torch.Tensor:
    """Z + 𝒢ᵀλ for a coalesced sparse λ whose first ``nb`` axes are the block axes."""
    sd = lam.sparse_dim()
    idx, vals = lam.indices(), lam.values()
    inner_sparse = tuple(lam.shape[nb:sd])
    inner_dense = math.prod(lam.shape[sd:])
    rows = math.prod(inner_sparse) * inner_dense
    if sd > nb:
        flat = torch.as_tensor(
            np.ravel_multi_index(tuple(idx[nb:sd].cpu().numpy()), inner_sparse), dtype=torch.long
        )
    else:
        flat = torch.zeros(idx.shape[1], dtype=torch.long)
    blocks, inverse = torch.unique(idx[:nb].cpu(), dim=1, return_inverse=True)
    buf = torch.zeros((blocks.shape[1], rows), dtype=Z.dtype)
    positions = flat[:, None] * inner_dense + torch.arange(inner_dense)[None, :]
    buf[inverse[:, None], positions] = vals.reshape(-1, inner_dense).to(buf).cpu()
    buf = buf.clamp_min(0)
    R = Z.clone()
    try:
        for b in range(blocks.shape[1]):
            index = tuple(int(i) for i in blocks[:, b])
            G = problem.block_constraint_matrix(index).to(Z)
            R[index] = R[index] + (G.T @ buf[b].to(Z)).reshape(R[index].shape)
    except NotImplementedError:
        return Z + problem.constraint_adjoint(lam.to_dense().to(Z).clamp_min(0))
    return R


def restricted_dual_ratio(
    problem: ConvexProblem,
    V: torch.Tensor,
    multipliers: torch.Tensor | None = None,
    *,
    iters: int = 300,
    polish: int = 64,
) -> DualFeasibility:
    """Certified ``max_b min_{λ≥0} ρ°((𝒜ᵀV + 𝒢ᵀλ)_b) / β`` over the program's blocks.

    λ from ``multipliers`` (the solver's, shaped like 𝒢(W)) when given, else ``iters`` FISTA
    steps on ½‖𝒜ᵀV + 𝒢ᵀλ‖²; then the ``polish`` largest blocks get the exact NNLS value
    (stopping once the remaining upper bounds are below the polished maximum). Every number is
    evaluated at an explicit λ ≥ 0, so the ratio is a valid upper bound.
    """
    beta = problem.beta
    Z = problem.predict_adjoint(V)
    if not problem.has_constraints:
        norms = _block_norms(problem, Z)
        return DualFeasibility(float(norms.max()) / beta, "unconstrained", 0, norms / beta)
    residual = _residual_from_multipliers(problem, Z, multipliers)
    method = "solver multipliers"
    if residual is None:
        method = "projected gradient"
        zeros = problem.constraint(problem.zeros().to(Z))
        assert zeros is not None
        lam = _projected_gradient_multipliers(problem, Z, torch.zeros_like(zeros), iters)
        residual = Z + problem.constraint_adjoint(lam)
    norms = _block_norms(problem, residual).clone()
    polished = 0
    if polish > 0 and norms.numel() > 1:
        try:
            order = torch.argsort(norms.reshape(-1), descending=True)
            best = -math.inf
            for flat in order[:polish].tolist():
                index = tuple(int(i) for i in np.unravel_index(flat, tuple(norms.shape)))
                if float(norms[index]) <= best:
                    break
                exact = _nnls_block_norm(problem, Z, index)
                norms[index] = min(float(norms[index]), exact)
                best = max(best, float(norms[index]))
                polished += 1
            method += " + NNLS"
        except NotImplementedError:
            pass
    return DualFeasibility(float(norms.max()) / beta, method, polished, norms / beta)


# ------------------------------------------------------------------------------------------
# violating-filter search (two-layer CNN, sum/avg pooling)


def _starting_filters(
    M: torch.Tensor, starts: int, init_filters: torch.Tensor | None, gen: torch.Generator
) -> torch.Tensor:
    """Unit starting filters (starts, h): current filters (≤ half), data patches (≈ ¼) with
    10 % noise, Gaussian (the rest)."""
    N, h = M.shape
    parts: list[torch.Tensor] = []
    if init_filters is not None and init_filters.numel():
        cur = init_filters.to(M.dtype).reshape(-1, h)
        take = min(cur.shape[0], starts // 2)
        pick = torch.randperm(cur.shape[0], generator=gen)[:take]
        parts.append(cur[pick])
    used = sum(p.shape[0] for p in parts)
    n_patch = min((starts - used) // 2, N)
    if n_patch > 0:
        pick = torch.randint(0, N, (n_patch,), generator=gen)
        rows = M[pick]
        scale = rows.norm(dim=1, keepdim=True).clamp_min(1e-12) / math.sqrt(h)
        parts.append(rows + 0.1 * scale * torch.randn(n_patch, h, generator=gen, dtype=M.dtype))
    rest = starts - sum(p.shape[0] for p in parts)
    if rest > 0:
        parts.append(torch.randn(rest, h, generator=gen, dtype=M.dtype))
    U = torch.cat(parts)
    bad = U.norm(dim=1) <= 1e-300
    if bool(bad.any()):
        U[bad] = torch.randn(int(bad.sum()), h, generator=gen, dtype=M.dtype)
    return U / U.norm(dim=1, keepdim=True)


def _small_matmul(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A @ B; products of fewer than 2^20 multiply-adds by broadcasting instead of BLAS (a tiny
    multithreaded GEMM costs milliseconds of thread synchronization on a loaded machine)."""
    if A.shape[0] * A.shape[1] * B.shape[1] >= 1 << 20:
        return A @ B
    return (A[:, :, None] * B[None]).sum(dim=1)


def _ascend(
    M: torch.Tensor, w: torch.Tensor, U: torch.Tensor, sign: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected (normalized-gradient) ascent of sign·wᵀ(M u)_+ on the unit sphere.

    Returns the best value seen per row and its filter. Step sizes decay geometrically
    0.5 → 1e-5; the iterate's value is exact (evaluated on the sphere). Stops early when no
    row gained more than 1e-12 (relative) over the last ``_STALL_STEPS`` steps."""
    best_val = torch.full((U.shape[0],), -math.inf, dtype=U.dtype, device=U.device)
    best_U = U.clone()
    Mt = M.T.contiguous()
    ws = sign[:, None] * w  # (S, N): signed sample weights per row
    checkpoint = best_val.clone()
    for t in range(steps + 1):
        Zm = _small_matmul(U, Mt)  # (S, N)
        val = (Zm.clamp_min(0) * ws).sum(dim=1)
        better = val > best_val
        best_val = torch.where(better, val, best_val)
        best_U = torch.where(better[:, None], U, best_U)
        if t == steps:
            break
        if t % _STALL_STEPS == 0 and t > 0:
            gain = float((best_val - checkpoint).max())
            if gain <= 1e-12 * max(float(best_val.abs().max()), 1e-300):
                break
            checkpoint = best_val.clone()
        grad = _small_matmul(torch.where(Zm > 0, ws, 0.0), M)
        eta = 0.5 * (2e-5) ** (t / max(1, steps - 1))
        U = U + grad * (eta / grad.norm(dim=1, keepdim=True).clamp_min(1e-300))
        U = U / U.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return best_val, best_U


def search_filters(
    patches: torch.Tensor,
    V: torch.Tensor,
    *,
    starts: int = 64,
    steps: int = 100,
    seed: int = 0,
    init_filters: torch.Tensor | None = None,
    max_candidates: int = 64,
    polish: int = 8,
) -> FilterSearch:
    """Maximize ``|V[:, j]ᵀ Σ_k (X_k u)_+|`` over unit filters u, for every output j.

    Args:
        patches: (n, K, h) patches *as the program uses them* (avg pooling: divided by K).
        V: (n, c) dual point.
        starts: starting filters (current filters, random data patches, Gaussian), each
            ascended for both signs of every output.
        steps: ascent steps per start.
        seed: seeds the starts (no global state).
        init_filters: (P, h) current generator filters, used as starts.
        max_candidates: distinct-pattern local maxima kept in ``candidates``.
        polish: the best this many candidates get the exact maximum over the closure of
            their cell (NNLS, :func:`_cone_maximum`); ``candidate_values`` then holds that
            maximum while ``candidates`` keeps the interior filter (it realizes the pattern).
    """
    if starts < 1 or steps < 0:
        raise ValueError(f"starts must be ≥ 1 and steps ≥ 0; got starts={starts}, steps={steps}")
    n, K, h = patches.shape
    c = V.shape[1]
    M = patches.reshape(n * K, h)
    gen = torch.Generator().manual_seed(int(seed))
    U0 = _starting_filters(M.cpu(), starts, init_filters, gen).to(M.device)
    S = U0.shape[0]
    chunk = max(1, _SEARCH_CHUNK_FLOATS // max(1, n * K))
    vals_all, U_all, out_all = [], [], []
    for j in range(c):
        w = V[:, j].to(M.dtype).repeat_interleave(K)  # row t·K + k ↔ sample t
        U = torch.cat([U0, U0])
        sign = torch.cat([torch.ones(S), -torch.ones(S)]).to(M)
        for a in range(0, 2 * S, chunk):
            val, best = _ascend(M, w, U[a : a + chunk], sign[a : a + chunk], steps)
            vals_all.append(val)
            U_all.append(best)
            out_all.append(torch.full((val.shape[0],), j, dtype=torch.long))
    vals = torch.cat(vals_all)
    Ub = torch.cat(U_all)
    outs = torch.cat(out_all).to(vals.device)
    values = torch.zeros(c, dtype=M.dtype, device=M.device)
    filters = torch.zeros((c, h), dtype=M.dtype, device=M.device)
    for j in range(c):
        sel = (outs == j).nonzero(as_tuple=True)[0]
        k = sel[vals[sel].argmax()]
        values[j] = vals[k].clamp_min(0)
        filters[j] = Ub[k]
    # distinct patterns among the local maxima, best first
    order = torch.argsort(vals, descending=True)
    masks = (_small_matmul(Ub[order], M.T) >= 0).cpu().numpy()
    packed = np.packbits(masks, axis=1)
    seen: set[bytes] = set()
    keep: list[int] = []
    for pos, key in enumerate(packed):
        b = key.tobytes()
        if b in seen or not masks[pos].any():
            continue
        seen.add(b)
        keep.append(int(order[pos]))
        if len(keep) >= max_candidates:
            break
    idx = torch.as_tensor(keep, dtype=torch.long, device=vals.device)
    cand_vals = vals[idx].clone()
    cand_outs = outs[idx]
    for pos in range(min(polish, len(keep))):
        j = int(cand_outs[pos])
        w = V[:, j].to(M.dtype).repeat_interleave(K)
        value, u = _cone_maximum(M, w, Ub[idx[pos]])
        cand_vals[pos] = max(float(cand_vals[pos]), value)
        if value > float(values[j]):
            values[j], filters[j] = value, u
    order = torch.argsort(cand_vals, descending=True)
    return FilterSearch(
        values=values,
        filters=filters,
        candidates=Ub[idx][order],
        candidate_values=cand_vals[order],
        candidate_outputs=cand_outs[order],
        n_starts=S,
    )


def _cone_maximum(M: torch.Tensor, w: torch.Tensor, u0: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Exact max of |wᵀ(M u)_+| over unit u in the closure of u0's cell, and its filter.

    With d = 1[M u0 ≥ 0], σ = sign of wᵀ(M u0)_+, a = σ Mᵀ(d∘w) and G = (2d − 1)∘M, the cell's
    closure is K = {u : G u ≥ 0} where (M u)_+ = d∘(M u); max_{u∈K,‖u‖≤1} aᵀu = ‖Π_K a‖ with
    Π_K a = a + Gᵀλ*, λ* = argmin_{λ≥0} ‖a + Gᵀλ‖ (Moreau; NNLS). The value returned is
    evaluated directly at the returned filter."""
    from scipy.optimize import nnls

    Mn = M.detach().cpu().double().numpy()
    wn = w.detach().cpu().double().numpy()
    z = Mn @ u0.detach().cpu().double().numpy()
    d = z >= 0
    sigma = 1.0 if float(np.maximum(z, 0) @ wn) >= 0 else -1.0
    a = sigma * (Mn.T @ (d * wn))
    G = np.where(d, 1.0, -1.0)[:, None] * Mn
    lam, _ = nnls(G.T, -a, maxiter=50 * G.shape[0] + 100)
    p = a + G.T @ np.maximum(lam, 0.0)
    norm = float(np.linalg.norm(p))
    if norm <= 0.0:
        return 0.0, u0
    u = p / norm
    value = abs(float(np.maximum(Mn @ u, 0.0) @ wn))
    return value, torch.as_tensor(u, dtype=M.dtype, device=M.device)


# ------------------------------------------------------------------------------------------
# certificates


def certify_solution(
    problem: ConvexProblem,
    W: torch.Tensor,
    *,
    upper_bound: float,
    multipliers: torch.Tensor | None = None,
    starts: int = 64,
    steps: int = 100,
    seed: int = 0,
    V: torch.Tensor | None = None,
    threads: int | None = None,
) -> Certificate:
    """Certificate of a solution W of ``problem`` whose network has objective ``upper_bound``.

    The dual point is ``V = −∇ℓ(𝒜W)`` (or the given V). The scope is "enumerated" when the
    program holds every pattern, "searched N starts" when ``starts > 0`` and the program has a
    violating-filter search, else "current patterns only" (module docstring).

    ``threads``: torch intra-op threads while certifying (restored after). None picks 1 for
    small programs (n × variables < 10⁷), where thread hand-off costs more than the arithmetic
    of the many small operations (on a busy 2-core machine a 2-thread tiny GEMM took ~40 ms
    vs ~15 µs single-threaded).
    """
    if threads is None:
        size = problem.targets.shape[0] * math.prod(problem.variable_shape)
        threads = 1 if size < 10**7 else torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _certify_solution(problem, W, upper_bound, multipliers, starts, steps, seed, V)
    finally:
        torch.set_num_threads(previous)


def _certify_solution(
    problem: ConvexProblem,
    W: torch.Tensor,
    upper_bound: float,
    multipliers: torch.Tensor | None,
    starts: int,
    steps: int,
    seed: int,
    V: torch.Tensor | None,
) -> Certificate:
    import time

    t0 = time.perf_counter()
    if V is None:
        V = problem.loss.dual_point(problem.predict(W), problem.targets)
    feas = restricted_dual_ratio(problem, V, multipliers)
    details: dict[str, Any] = {
        "restricted_ratio": feas.ratio,
        "multipliers": feas.method,
        "polished_blocks": feas.polished,
    }
    ratio = feas.ratio
    search: FilterSearch | None = None
    if problem.patterns_complete:
        scope = SCOPE_ENUMERATED
    elif starts > 0:
        try:
            t1 = time.perf_counter()
            search = problem.search_violations(V, starts=starts, steps=steps, seed=seed)
            details["search_time"] = time.perf_counter() - t1
        except NotImplementedError:
            search = None
        if search is None:
            scope = SCOPE_CURRENT
        else:
            search_ratio = search.best_value / problem.beta
            details["search_ratio"] = search_ratio
            ratio = max(ratio, search_ratio)
            scope = f"searched {search.n_starts} starts"
    else:
        scope = SCOPE_CURRENT
    lower, s = best_scaled_dual_value(problem.loss, V, problem.targets, ratio)
    details["scale"] = s
    details["time"] = time.perf_counter() - t0
    return Certificate(
        lower_bound=lower,
        upper_bound=float(upper_bound),
        scope=scope,
        max_dual_ratio=ratio,
        details=details,
        search=search,
    )


def certify(
    network_or_result: Any,
    X: object,
    y: object,
    *,
    beta: float | None = None,
    loss: str | Loss | None = None,
    task: str = "auto",
    starts: int = 256,
    steps: int = 150,
    seed: int = 0,
    enumerate_patterns: bool | str = "auto",
    max_patterns: int = 20_000,
) -> Certificate:
    """Recompute the certificate of a two-layer CNN (or a :class:`~convexcnn.FitResult`) on (X, y).

    The dual point is ``V = −∇ℓ(f(X))`` from the network's own outputs; the upper bound is the
    network's objective ℓ(f(X); Y) + (β/2)Σ‖θ‖². Dual feasibility is checked on the patterns of
    the network's filters (multipliers by projected gradient + NNLS) and then either on every
    pattern of the data (``enumerate_patterns=True``, or ``"auto"`` when the enumeration has at
    most ``max_patterns`` cells: scope "enumerated", a proof) or by the violating-filter search
    from ``starts`` starts (scope "searched N starts"; ``starts=0``: "current patterns only").

    Args:
        network_or_result: a :class:`~convexcnn.networks.TwoLayerCNN` or a FitResult.
        X, y: data in any layout :func:`convexcnn.fit` accepts (y as for fit).
        beta, loss: the objective's β and loss (default: the FitResult's; required for a bare
            network).
    """
    from .data import as_float_tensor
    from .fit import _check_beta, prepare_targets, resolve_task
    from .networks import TwoLayerCNN
    from .patches import PatchSpec, as_signal_batch, extract_patches
    from .patterns import PatternSet
    from .problems.two_layer import TwoLayerReLU, network_objective

    net = getattr(network_or_result, "network", network_or_result)
    if not isinstance(net, TwoLayerCNN):
        raise ValueError(
            "network_or_result must be a convexcnn TwoLayerCNN or a FitResult holding one; got "
            f"{type(net).__name__}"
        )
    if beta is None:
        beta = getattr(network_or_result, "beta", None)
    if loss is None:
        loss = getattr(network_or_result, "loss", None)
    if beta is None or loss is None:
        raise ValueError("certify needs beta= and loss= for a bare network (the training values)")
    beta_value = _check_beta(beta)
    loss_obj = get_loss(loss)
    if enumerate_patterns not in (True, False, "auto"):
        raise ValueError(
            f"enumerate_patterns must be True, False or 'auto'; got {enumerate_patterns!r}"
        )
    dtype = next(net.parameters()).dtype
    rs = net.spec
    spec = PatchSpec(
        rs.kernel, stride=rs.stride, padding=rs.padding, dilation=rs.dilation, dims=rs.dims
    )
    batch, resolved = as_signal_batch(as_float_tensor(X, name="X", dtype=dtype), spec)
    if batch.shape[1] != net.conv.in_channels:
        raise ValueError(
            f"X has {batch.shape[1]} channels but the network expects {net.conv.in_channels}"
        )
    targets = prepare_targets(y, batch.shape[0], loss_obj, resolve_task(task, loss_obj), dtype)
    if targets.shape[1] != net.n_outputs:
        raise ValueError(
            f"y gives {targets.shape[1]} output column(s) but the network has {net.n_outputs}"
        )
    patches = extract_patches(batch, resolved)
    upper = network_objective(net, batch, targets, loss_obj, beta_value)
    with torch.no_grad():
        F = net(batch)
        F = F[:, None] if F.ndim == 1 else F
    V = loss_obj.dual_point(F, targets)

    patterns: PatternSet | None = None
    if enumerate_patterns is not False:
        try:
            patterns = PatternSet.enumerate_patches(patches, max_patterns=max_patterns)
        except ValueError:
            if enumerate_patterns is True:
                raise
    if patterns is None:
        weights = net.conv.weight.detach().reshape(net.width, -1)
        patterns = PatternSet.from_patch_filters(patches, weights, source="network")
    if len(patterns) == 0:  # every filter is dead: nothing to check on the current patterns
        patterns = PatternSet.from_patch_filters(
            patches, torch.ones((1, patches.shape[2]), dtype=dtype)
        )
    problem = TwoLayerReLU(
        patches,
        patterns,
        targets,
        beta_value,
        loss_obj,
        pooling=net.pooling,
        spec=resolved,
        in_channels=batch.shape[1],
        inputs=batch,
    )
    cert = certify_solution(
        problem, problem.zeros(), upper_bound=upper, starts=starts, steps=steps, seed=seed, V=V
    )
    cert.details["n_patterns_checked"] = len(patterns)
    return cert
