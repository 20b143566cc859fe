"""Identity-plus-rank-one metrics for proximal gradient: deflating 𝒜's top singular direction.

Image data are nonnegative, so every block A_b of 𝒜 shares one large common direction: on
200 digits (3×3 kernel, 300 patterns) σ₁(𝒜) = 2263 while σ₂ = 253. A scalar step 1/σ₁² then
crawls along every other direction. The metric

    M = L·(I + κ·v vᵀ),   v: unit top right singular vector of 𝒜,  κ = σ₁²/σ₂² − 1

majorizes 𝒜ᵀ𝒜 with L ≈ σ₂² instead of σ₁² (80× larger steps there). Its inverse is closed form
(Sherman–Morrison) and its proximal map stays cheap (Becker & Fadili 2012, zero-memory SR1):

    prox^M(z) = argmin_x r(x) + ½(x − z)ᵀM(x − z) = prox_{r/L}(z − κθ·v)

where the scalar θ = vᵀ(x − z) is the root of φ(θ) = θ − vᵀ(prox_{r/L}(z − κθv) − z), which is
strictly increasing (the prox is monotone), so a bracketed 1-D solve with a few cheap prox
evaluations (no operator applications) finds it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..problems.base import ConvexProblem

__all__ = ["RankOneMetric", "top_singular_pair"]

Prox = Callable[[torch.Tensor, float], torch.Tensor]


def top_singular_pair(
    problem: ConvexProblem,
    like: torch.Tensor,
    *,
    iterations: int = 30,
    deflate: torch.Tensor | None = None,
) -> tuple[float, torch.Tensor]:
    """(λ, v): the largest eigenvalue of 𝒜ᵀ𝒜 (restricted to v ⟂ ``deflate``) and its unit
    eigenvector, by power iteration from a fixed random start (shape of ``like``)."""
    gen = torch.Generator(device=like.device).manual_seed(0)
    v = torch.randn(like.shape, generator=gen, dtype=like.dtype, device=like.device)
    lam = 0.0
    for _ in range(iterations):
        if deflate is not None:
            v = v - float((deflate * v).sum()) * deflate
        v = v / v.norm().clamp_min(1e-300)
        w = problem.predict_adjoint(problem.predict(v))
        lam = float((w * v).sum())
        v = w
    if deflate is not None:
        v = v - float((deflate * v).sum()) * deflate
    return max(lam, 0.0), v / v.norm().clamp_min(1e-300)


@dataclass
class RankOneMetric:
    """M = L·(I + κ vvᵀ) for proximal gradient (L is the caller's step constant).

    ``kappa = 0`` is the plain Euclidean metric (then every method reduces to the usual one).
    """

    v: torch.Tensor
    kappa: float
    theta: float = 0.0  # last root of φ, the next solve's first guess
    evaluations: int = 0

    @classmethod
    def estimate(
        cls,
        problem: ConvexProblem,
        like: torch.Tensor,
        *,
        deflate: bool = True,
        min_ratio: float = 2.0,
    ) -> tuple[RankOneMetric, float]:
        """Deflate 𝒜's top direction when ``deflate`` and σ₁²/σ₂² ≥ ``min_ratio`` (else κ = 0).

        Returns (metric, L₀) where L₀ = L_ℓ·σ₂² with the deflation, L_ℓ·σ₁² without (L_ℓ: the
        loss's smoothness; power-iteration estimates, which backtracking corrects)."""
        lam1, v = top_singular_pair(problem, like)
        smooth = float(getattr(problem.loss, "smoothness", 1.0))
        lam2 = top_singular_pair(problem, like, deflate=v)[0] if deflate else 0.0
        if lam2 <= 0 or lam1 < min_ratio * lam2:
            return cls(v, 0.0), max(lam1 * smooth, 1e-12)
        return cls(v, lam1 / lam2 - 1.0), max(lam2 * smooth, 1e-12)

    def inverse(self, g: torch.Tensor) -> torch.Tensor:
        """(I + κvvᵀ)⁻¹g = g − κ/(1+κ)·(vᵀg)·v (Sherman–Morrison)."""
        if self.kappa == 0:
            return g
        return g - (self.kappa / (1 + self.kappa)) * float((self.v * g).sum()) * self.v

    def squared_norm(self, d: torch.Tensor) -> float:
        """dᵀ(I + κvvᵀ)d."""
        plain = float((d * d).sum())
        if self.kappa == 0:
            return plain
        return plain + self.kappa * float((self.v * d).sum()) ** 2

    def inner(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """aᵀ(I + κvvᵀ)b."""
        plain = float((a * b).sum())
        if self.kappa == 0:
            return plain
        return plain + self.kappa * float((self.v * a).sum()) * float((self.v * b).sum())

    def prox(
        self, prox: Prox, z: torch.Tensor, step: float, *, rtol: float | None = None
    ) -> torch.Tensor:
        """argmin_x r(x) + (1/(2·step))·(x − z)ᵀ(I + κvvᵀ)(x − z), given ``prox(w, step)`` =
        prox_{step·r}(w): the root θ of φ(θ) = θ − vᵀ(prox(z − κθv) − z) by a bracketed
        Illinois (modified regula falsi) iteration, |θ − θ*| ≤ rtol·scale (default rtol:
        100 machine epsilons of z's dtype)."""
        if self.kappa == 0:
            return prox(z, step)
        v, k = self.v, self.kappa
        vz = float((v * z).sum())

        def phi(theta: float) -> tuple[float, torch.Tensor]:
            self.evaluations += 1
            x = prox(z - (k * theta) * v, step)
            return theta - (float((v * x).sum()) - vz), x

        if rtol is None:
            rtol = 100 * torch.finfo(z.dtype).eps
        tol = rtol * max(1.0, abs(vz), abs(self.theta))
        # φ' ≥ 1, so |θ − θ*| ≤ |φ(θ)| and θ − φ(θ) lies on the root's other side (or on it)
        a = self.theta
        fa, _ = phi(a)
        b = a - fa
        fb, xb = phi(b)
        while fa * fb > 0:  # roundoff only: step on until the signs differ
            a, fa = b, fb
            b = a - 2 * fa
            fb, xb = phi(b)
        for _ in range(100):
            if abs(fb) <= tol or abs(b - a) <= tol:
                break
            c = b - fb * (b - a) / (fb - fa)
            if not (min(a, b) < c < max(a, b)):
                c = 0.5 * (a + b)
            fc, xc = phi(c)
            if fc * fb < 0:
                a, fa = b, fb
            else:
                fa = fa / 2  # Illinois: halve the value at the end that stays
            b, fb, xb = c, fc, xc
        self.theta = b
        return xb
