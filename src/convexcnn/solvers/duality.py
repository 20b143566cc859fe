"""Dual lower bounds from a dual point (SPEC §2.4), shared by the first-order solvers.

For any V ∈ R^{n×c} and multipliers λ ≥ 0 of the constraints 𝒢W ≥ 0, Fenchel–Young gives, for
every feasible W,

    ℓ(𝒜W) + β·ρ(W) ≥ −ℓ*(−V) − ⟨𝒜ᵀV + 𝒢ᵀλ, W⟩ + β·ρ(W) ≥ −ℓ*(−V)

whenever ρ°(𝒜ᵀV + 𝒢ᵀλ) ≤ β. Scaling (V, λ) by s ∈ [0, β/ρ°(𝒜ᵀV + 𝒢ᵀλ)] keeps that true, so
the best bound along the ray is ``max_s loss.dual_value(s·V)`` over that interval (a concave
function of s; closed form for the squared loss).
"""

from __future__ import annotations

import math

import torch

from ..losses import Loss, SquaredLoss

__all__ = ["relative_gap", "scaled_dual_value"]

_GOLDEN = (math.sqrt(5) - 1) / 2


def scaled_dual_value(loss: Loss, V: torch.Tensor, Y: torch.Tensor, s_max: float) -> float:
    """max_{0 ≤ s ≤ s_max} −ℓ*(−s·V): a lower bound on the optimum when s_max = β / ρ°(…)."""
    if not math.isfinite(s_max):
        s_max = 1.0
    if isinstance(loss, SquaredLoss):
        # −½s²‖V‖² + s⟨V, Y⟩ is maximized at s = ⟨V, Y⟩ / ‖V‖².
        vv = float((V * V).sum())
        vy = float((V * Y).sum())
        s = min(max(vy / vv, 0.0), s_max) if vv > 0 else 0.0
        return -0.5 * s * s * vv + s * vy

    def phi(s: float) -> float:
        return float(loss.dual_value(s * V, Y))

    lo, hi = 0.0, float(s_max)
    a = hi - _GOLDEN * (hi - lo)
    b = lo + _GOLDEN * (hi - lo)
    fa, fb = phi(a), phi(b)
    for _ in range(60):
        if fa < fb:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = phi(b)
        else:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = phi(a)
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return max(fa, fb, phi(s_max), phi(0.0))


def relative_gap(upper: float, lower: float) -> float:
    """(upper − lower) / |upper| (inf when upper is 0 but the bounds differ)."""
    diff = upper - lower
    if upper == 0:
        return 0.0 if diff <= 0 else math.inf
    return diff / abs(upper)
