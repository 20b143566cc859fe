"""ADMM (OSQP-style splitting) for cone-constrained programs with any regularizer that has a prox.

Problem: min_W ½‖𝒜W − Y‖² + β·ρ(W) s.t. 𝒢W ≥ 0, 𝒢 block diagonal (rows G_b w_b of block
w_b = W.view(-1, h)[b]). This covers the programs whose per-block prox of β·ρ + ι_K has no
closed form — the circular CNN's spectral ℓ1 (SPEC §7) — and max pooling (§4) / sum pooling (§3).

Splitting W = Z (regularizer) and 𝒢W = S ≥ 0 (slacks), scaled duals U, U_S, penalty ρ_k,
relaxation α:

    W   ← argmin ½‖𝒜W − Y‖² + (ρ_k/2)(‖W − Z + U‖² + ‖𝒢W − S + U_S‖²)
    Z   ← prox_{(β/ρ_k)ρ}(αW + (1 − α)Z + U),        U   ← U + αW + (1 − α)Z_old − Z
    S   ← (α𝒢W + (1 − α)S + U_S)_+,                   U_S ← U_S + α𝒢W + (1 − α)S_old − S

The W-step is exact: with D = blockdiag(I + G_bᵀG_b) (one h×h matrix for the sum-pooling and
circular programs, where G_bᵀG_b = MᵀM for every block),

    (𝒜ᵀ𝒜 + ρ_k D) W = q   ⇒   W = D⁻¹q/ρ_k − D⁻¹𝒜ᵀ(ρ_k I + H)⁻¹𝒜D⁻¹q/ρ_k,   H = 𝒜D⁻¹𝒜ᵀ,

with H (n·c × n·c) formed once and one Cholesky per ρ_k. An iteration costs one 𝒜, 𝒜ᵀ, 𝒢,
𝒢ᵀ, one prox and elementwise work: no inner loops. ρ_k follows residual balancing. When every
block's rows are G_b = diag(±1)·M (the circular program: M = X), 𝒢 and 𝒢ᵀ are one GEMM each
with the shared M instead of B dense matrix-vector products (measured 2× per iteration).

Since Z = prox(v_Z), U = v_Z − Z, S = (v_S)_+, U_S = min(v_S, 0) for v = (Z + U, S + U_S), the
iteration is a fixed-point map v ← T(v) on one vector; it is accelerated by safeguarded type-II
Anderson extrapolation (``memory`` differences; a step is kept only when it does not raise the
fixed-point residual; memory reset at every ρ change). Off by default: measured on digits
3-vs-8, circular, β = 1e-3, memory 5 took 1.6× fewer iterations at n = 40, P = 20 (8 % less
time), the same number at n = 249, P = 50 (52k vs 55k), and more time on the tiny all-pattern
instances (per-iteration overhead); memory 10–100 was no better. The tail of these solves is
slow and not linear-affine enough for extrapolation to pay.

Certificate (SPEC §2.4, :mod:`.duality`): U_S ≤ 0 always, so λ = −ρ_k U_S ≥ 0 are valid
multipliers and, with V = Y − 𝒜W, −ℓ*(−sV) is a lower bound for s ≤ β/ρ°(𝒜ᵀV + 𝒢ᵀλ); at a
fixed point 𝒜ᵀV + 𝒢ᵀλ = ρ_k U ∈ ∂(βρ)(Z) and the gap closes. Upper bounds come from feasible
points only: t·Π_K(Z), the exact per-block projection of the (sparse) Z with the best scale
t ≥ 0 (the cone is invariant under scaling), so the returned W satisfies the constraints and the
recovered network reproduces ``objective``. The projection costs several iterations, so it runs
at every 8th check until the gap is within 100·tol, then at every check.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..cone_projection import DenseBlockOperators
from ..losses import SquaredLoss
from ..memory import MemoryEstimate, check_fits
from ..problems.base import ConvexProblem
from .cones import ConeProx, block_operators
from .duality import relative_gap, scaled_dual_value
from .fista import default_tol, exact_violation, resolve_warm_start
from .result import ConvexSolution, History
from .stopping import IterationState, MaxIterations, TimeLimit
from .threads import solver_threads

__all__ = ["ADMM", "BlockRows", "cone_operators"]


def cone_operators(problem: ConvexProblem) -> Any:
    """Per-block cone rows of a constrained program: the problem's fast operators when it has
    them, else dense matrices from ``block_constraint_matrix`` (ValueError when neither)."""
    ops = block_operators(problem, group_l2=False)
    if ops is None:
        raise ValueError(
            f"the first-order solvers ('al', 'admm') need the cone rows of "
            f"{type(problem).__name__} block by block "
            "over the last axis of W (G_b w_b, w_b = W.view(-1, h)[b]); this program's blocks "
            "are different: use solver='exact'"
        )
    return ops


class BlockRows:
    """𝒢 of a constrained program, rows scaled by 1/g (g² = mean ‖row‖²·… so that the slack
    penalty is on the scale of the identity), with D⁻¹ = blockdiag((I + G̃_bᵀG̃_b)⁻¹).

    ``apply(W)`` (B, rows) and ``adjoint(L)`` (variable shape) work on all blocks at once;
    ``solve_d(W)`` applies D⁻¹ (one shared h×h inverse when every G_bᵀG_b = MᵀM).
    """

    def __init__(self, problem: ConvexProblem, ops: Any) -> None:
        self.shape = tuple(problem.variable_shape)
        self.h = int(self.shape[-1])
        self.n_blocks = math.prod(self.shape) // self.h
        like = problem.targets
        self.blocks = torch.arange(self.n_blocks, device=like.device)
        self.ops = ops
        eye = torch.eye(self.h, dtype=like.dtype, device=like.device)
        self.G: torch.Tensor | None = None
        self.M: torch.Tensor | None = None  # G_b = diag(signs_b)·M for every block
        self.signs: torch.Tensor | None = None
        if isinstance(ops, DenseBlockOperators) and ops.G is not None:
            G = ops.G
            factored = _sign_factor(G)
            if factored is not None:  # one GEMM per map instead of B matrix-vector products
                self.M, self.signs = factored
                gram = self.M.T @ self.M
                self.g = math.sqrt(max(float(gram.diagonal().mean()), 1e-300))
                self.shared = torch.linalg.inv(eye + gram / self.g**2)
                self.dinv = None
            else:
                self.G = G
                grams = G.transpose(1, 2) @ G  # (B, h, h)
                self.g = math.sqrt(max(float(grams.diagonal(dim1=1, dim2=2).mean()), 1e-300))
                self.shared = None
                self.dinv = torch.linalg.inv(eye + grams / self.g**2)
        elif hasattr(ops, "M"):  # two-layer operators: G_b = diag(±1)·M for every block
            gram = ops.M.T @ ops.M
            self.g = math.sqrt(max(float(gram.diagonal().mean()), 1e-300))
            self.shared = torch.linalg.inv(eye + gram / self.g**2)
            self.dinv = None
        else:
            raise ValueError(
                f"solver='admm' needs the cone rows of {type(problem).__name__} as dense block "
                "matrices or two-layer operators; use solver='exact'"
            )

    def apply(self, W: torch.Tensor) -> torch.Tensor:
        Wb = W.reshape(-1, self.h)
        if self.M is not None and self.signs is not None:
            out = (Wb @ self.M.T) * self.signs
        elif self.G is not None:
            out = torch.einsum("brs,bs->br", self.G, Wb)
        else:
            out = self.ops.apply(self.blocks, Wb)
        return out / self.g

    def adjoint(self, L: torch.Tensor) -> torch.Tensor:
        if self.M is not None and self.signs is not None:
            out = (L * self.signs) @ self.M
        elif self.G is not None:
            out = torch.einsum("brs,br->bs", self.G, L)
        else:
            out = self.ops.adjoint(self.blocks, L)
        return (out / self.g).view(self.shape)

    def solve_d(self, W: torch.Tensor) -> torch.Tensor:
        Wb = W.reshape(-1, self.h)
        if self.shared is not None:
            return (Wb @ self.shared).view(self.shape)  # symmetric inverse
        assert self.dinv is not None
        return torch.einsum("bij,bj->bi", self.dinv, Wb).view(self.shape)


def _sign_factor(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(M, signs) with G_b = diag(signs_b)·M for every block b (exactly), else None."""
    M = G[0]
    signs = torch.where((G * M).sum(dim=-1) < 0, -1.0, 1.0).to(G.dtype)  # (B, rows)
    if not torch.equal(signs[:, :, None] * M, G):
        return None
    return M, signs


def weighted_gram(problem: ConvexProblem, rows: BlockRows | None) -> torch.Tensor:
    """H = 𝒜D⁻¹𝒜ᵀ over the flattened prediction space (n·c, n·c), column by column
    (D = I without constraints)."""
    Y = problem.targets
    nc = int(Y.numel())
    H = torch.empty((nc, nc), dtype=Y.dtype, device=Y.device)
    E = torch.eye(nc, dtype=Y.dtype, device=Y.device)
    for k in range(nc):
        G = problem.predict_adjoint(E[k].view_as(Y))
        if rows is not None:
            G = rows.solve_d(G)
        H[:, k] = problem.predict(G).reshape(-1)
    return 0.5 * (H + H.T)


@dataclass
class ADMM:
    """OSQP-style ADMM with exact W-steps and residual balancing (module docstring).

    Args:
        tol: relative duality gap that counts as optimal (None: 1e-6 float64, 1e-4 float32).
        max_iter: iteration cap.
        time_limit: seconds (None: no limit).
        rho: initial penalty (None: trace(𝒜𝒜ᵀ)/numel(W), the mean squared column norm of 𝒜).
        relaxation: α ∈ (0, 2) (1.6 is the usual over-relaxation).
        check_every: iterations between certificates (objective, bound, ρ update).
        verbose: print one line per check every ``log_every`` iterations.
        memory: Anderson acceleration (type II) of the fixed-point map v ← T(v) over the last
            ``memory`` differences (0: plain ADMM).
        safeguard: an extrapolated state is kept only if its fixed-point residual is at most
            ``safeguard`` × the residual of the plain iterate it replaced (else that plain one).
        adapt: ρ is rebalanced when the relative residuals differ by this factor (OSQP: 5).
    """

    tol: float | None = None
    max_iter: int = 100_000
    time_limit: float | None = None
    rho: float | None = None
    relaxation: float = 1.6
    check_every: int = 25
    verbose: bool = False
    log_every: int = 1000
    threads: int | None = None
    memory: int = 0
    safeguard: float = 1.0
    adapt: float = 5.0

    name: str = field(default="admm", init=False)

    def solve(self, problem: ConvexProblem, warm_start: Any = None) -> ConvexSolution:
        """Solve ``problem`` (from ``warm_start``: a ConvexSolution or W of the same program)."""
        if not isinstance(problem.loss, SquaredLoss):
            raise ValueError(
                f"solver='admm' supports the squared loss (exact W-steps); got "
                f"loss={problem.loss.name!r}: use solver='exact'"
            )
        if not 0 < self.relaxation < 2:
            raise ValueError(f"relaxation must be in (0, 2); got {self.relaxation!r}")
        with solver_threads(problem, self.threads):
            return _Run(self, problem, warm_start).run()


class _Run:
    """One ADMM solve (state shared by the helpers)."""

    def __init__(self, cfg: ADMM, problem: ConvexProblem, warm: Any) -> None:
        self.cfg, self.problem = cfg, problem
        self.start = time.perf_counter()
        Y = problem.targets
        self.Y = Y
        nc = int(Y.numel())
        check_fits(
            MemoryEstimate(
                {"n·c × n·c matrices 𝒜D⁻¹𝒜ᵀ and its factor": 2 * nc * nc * Y.element_size()},
                context=f"ADMM on {type(problem).__name__} (n·c = {nc})",
            ),
            device=Y.device,
        )
        self.ops: Any = cone_operators(problem) if problem.has_constraints else None
        self.rows = BlockRows(problem, self.ops) if self.ops is not None else None
        self.cone = ConeProx(problem, self.ops) if self.ops is not None else None
        self.H = weighted_gram(problem, self.rows)
        self.AtY = problem.predict_adjoint(Y)
        W = resolve_warm_start(problem, warm)
        self.Z = W.clone()
        self.U = torch.zeros_like(W)
        self.S: torch.Tensor | None = None
        self.US: torch.Tensor | None = None
        if self.rows is not None:
            self.S = self.rows.apply(W).clamp_min(0)
            self.US = torch.zeros_like(self.S)
        self.tol = default_tol(W.dtype) if cfg.tol is None else cfg.tol
        self.factor: torch.Tensor | None = None
        self.factor_rho = math.nan

    def feasible(self, W: torch.Tensor) -> torch.Tensor:
        """Π_K(W) block by block (step 0 of the cone prox: no shrinkage)."""
        return W if self.cone is None else self.cone(W, 0.0)

    def rescaled(self, C: torch.Tensor) -> torch.Tensor:
        """t·C with the best t ≥ 0 for ½‖t𝒜C − Y‖² + t·βρ(C) (t·C stays in the cone)."""
        AC = self.problem.predict(C)
        aa = float((AC * AC).sum())
        if aa <= 0:
            return C
        t = (float((AC * self.Y).sum()) - float(self.problem.regularizer(C))) / aa
        return C * max(t, 0.0)

    def d_inverse(self, W: torch.Tensor) -> torch.Tensor:
        return W if self.rows is None else self.rows.solve_d(W)

    def w_step(self, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, 𝒜W) minimizing ½‖𝒜W − Y‖² + (ρ/2)(‖W − Z + U‖² + ‖𝒢W − S + U_S‖²)."""
        p = self.problem
        if self.factor is None or rho != self.factor_rho:
            eye = torch.eye(self.H.shape[0], dtype=self.H.dtype, device=self.H.device)
            self.factor = torch.linalg.cholesky(self.H + rho * eye)
            self.factor_rho = rho
        q = self.AtY + rho * (self.Z - self.U)
        if self.rows is not None:
            assert self.S is not None and self.US is not None
            q = q + rho * self.rows.adjoint(self.S - self.US)
        Dq = self.d_inverse(q)
        ADq = p.predict(Dq).reshape(-1, 1)
        AW = torch.cholesky_solve(ADq, self.factor)  # (ρI + H)⁻¹𝒜D⁻¹q = 𝒜W
        W = (Dq - self.d_inverse(p.predict_adjoint(AW.view_as(self.Y)))) / rho
        return W, AW.view_as(self.Y)

    def lower_bound(self, AW: torch.Tensor, rho: float) -> tuple[float, float]:
        """(Lagrangian bound at V = Y − 𝒜W, λ = (−ρU_S)_+; ‖𝒜ᵀV‖, the dual scale)."""
        p = self.problem
        V = self.Y - AW
        G = p.predict_adjoint(V)
        scale = float(G.norm())
        if self.rows is not None:
            assert self.US is not None
            G = G + self.rows.adjoint((-rho * self.US).clamp_min(0))
        dn = float(p.dual_norm(G))
        s_max = p.beta / dn if dn > 0 else math.inf
        return scaled_dual_value(p.loss, V, self.Y, s_max), scale

    # ----- the ADMM map on its state v = (v_Z, v_S) ----------------------------------------
    # Z = prox(v_Z), U = v_Z − Z, S = (v_S)_+, U_S = v_S − S = min(v_S, 0): relaxed ADMM is a
    # fixed-point iteration v ← T(v) on this one vector (Douglas–Rachford form).
    def pack(self) -> torch.Tensor:
        parts = [(self.Z + self.U).reshape(-1)]
        if self.S is not None and self.US is not None:
            parts.append((self.S + self.US).reshape(-1))
        return torch.cat(parts)

    def unpack(self, v: torch.Tensor, rho: float) -> None:
        """Set Z, U, S, U_S from the state v."""
        nz = self.Z.numel()
        vz = v[:nz].view(self.Z.shape)
        self.Z = self.problem.prox(vz, 1.0 / rho)
        self.U = vz - self.Z
        if self.S is not None:
            vs = v[nz:].view(self.S.shape)
            self.S = vs.clamp_min(0)
            self.US = vs.clamp_max(0)

    def step(
        self, v: torch.Tensor, rho: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """One relaxed ADMM iteration from state v: (W, 𝒜W, 𝒢W, T(v))."""
        alpha = self.cfg.relaxation
        self.unpack(v, rho)
        W, AW = self.w_step(rho)
        parts = [(alpha * W + (1 - alpha) * self.Z + self.U).reshape(-1)]
        GW = None
        if self.rows is not None:
            assert self.S is not None and self.US is not None
            GW = self.rows.apply(W)
            parts.append((alpha * GW + (1 - alpha) * self.S + self.US).reshape(-1))
        return W, AW, GW, torch.cat(parts)

    def run(self) -> ConvexSolution:
        cfg, p = self.cfg, self.problem
        numel = self.Z.numel()
        rho = cfg.rho if cfg.rho is not None else max(float(self.H.trace()) / numel, 1e-12)
        rho_min, rho_max = rho * 1e-8, rho * 1e8
        history = History()
        limits = MaxIterations(cfg.max_iter)
        timer = TimeLimit(math.inf if cfg.time_limit is None else cfg.time_limit)
        best_W = self.feasible(self.Z)
        best_lower, best_obj = -math.inf, p.objective(best_W)
        gap, status, it = math.inf, "max_iter", 0
        x = self.pack()
        accel = _Anderson(cfg.memory) if cfg.memory > 0 else None
        fallback: torch.Tensor | None = None  # plain iterate to return to if x (AA) fails
        base_norm = math.inf
        accepted = rejected = checks = 0
        for it in range(1, cfg.max_iter + 1):
            W, AW, GW, fx = self.step(x, rho)
            res = float((x - fx).norm())
            if fallback is not None:
                if res > cfg.safeguard * base_norm:  # the extrapolation failed: plain step
                    rejected += 1
                    x = fallback
                    W, AW, GW, fx = self.step(x, rho)
                    res = float((x - fx).norm())
                else:
                    accepted += 1
                fallback = None
            if accel is not None:
                x_new = accel.extrapolate(x, fx)
                if x_new is not fx:
                    fallback, base_norm = fx, res
                x = x_new
            else:
                x = fx
            if it % cfg.check_every and it != cfg.max_iter:
                continue
            Z_old, S_old = self.Z, self.S  # from x_old (set by step)
            self.unpack(fx, rho)
            lower, dual_scale = self.lower_bound(AW, rho)
            best_lower = max(best_lower, lower)
            checks += 1
            # the exact projection costs several iterations: every check only near the end
            if checks % 8 == 0 or relative_gap(best_obj, best_lower) <= 100 * self.tol:
                candidate = self.rescaled(self.feasible(self.Z))
                obj = p.objective(candidate)
                if obj < best_obj:
                    best_obj, best_W = obj, candidate
            gap = relative_gap(best_obj, best_lower)
            # relative residuals (as in OSQP): primal ‖(W − Z, 𝒢W − S)‖, dual ρ‖ΔZ + 𝒢ᵀΔS‖
            r_prim2 = float(((W - self.Z) ** 2).sum())
            dual = self.Z - Z_old
            scale_p2 = max(float((W * W).sum()), float((self.Z * self.Z).sum()))
            scale_d = self.U
            if self.rows is not None and GW is not None:
                assert self.S is not None and S_old is not None and self.US is not None
                r_prim2 += float(((GW - self.S) ** 2).sum())
                dual = dual + self.rows.adjoint(self.S - S_old)
                scale_p2 = max(scale_p2, float((GW * GW).sum()))
                scale_d = scale_d + self.rows.adjoint(self.US)
            rel_p = math.sqrt(r_prim2 / max(scale_p2, 1e-300))
            rel_d = rho * float(dual.norm()) / max(rho * float(scale_d.norm()), dual_scale, 1e-300)
            elapsed = time.perf_counter() - self.start
            violation = self.cone.violation if self.cone is not None else 0.0
            history.record(
                objective=best_obj,
                gap=gap,
                violation=violation,
                time=elapsed,
                lower_bound=best_lower,
                rho=rho,
                primal_residual=rel_p,
                dual_residual=rel_d,
                fixed_point_residual=res,
            )
            if cfg.verbose and (it % cfg.log_every == 0 or abs(gap) <= self.tol):
                print(
                    f"admm {it:6d}  obj {best_obj:.12g}  gap {gap:.2e}  rho {rho:.3g}  "
                    f"res {rel_p:.1e}/{rel_d:.1e}  aa {accepted}/{rejected}  t {elapsed:.2f}s"
                )
            if abs(gap) <= self.tol:
                status = "optimal"
                break
            state = IterationState(it, elapsed, best_obj, gap, math.nan, violation)
            why = limits.check(state) or timer.check(state)
            if why is not None:
                status = why
                break
            if rel_p > cfg.adapt * rel_d or rel_d > cfg.adapt * rel_p:
                factor = min(max(math.sqrt(rel_p / max(rel_d, 1e-300)), 1e-2), 1e2)
                factor = min(max(factor, rho_min / rho), rho_max / rho)
                rho *= factor
                x = fx if fallback is not None else x
                fallback = None
                self.unpack(x, rho / factor)  # Z, S stay; U, U_S scale by 1/factor
                self.U = self.U / factor
                if self.US is not None:
                    self.US = self.US / factor
                x = self.pack()
                if accel is not None:
                    accel.reset()
        violation = exact_violation(p, best_W, self.ops) if self.ops is not None else 0.0
        info: dict[str, Any] = {
            "solver": "admm",
            "method": "ADMM (slack splitting), exact W-steps, residual balancing, Anderson",
            "anderson_accepted": accepted,
            "anderson_rejected": rejected,
            "iterations": it,
            "lower_bound": best_lower,
            "gap": gap,
            "rho": rho,
        }
        if self.cone is not None:
            info["projection_fallbacks"] = self.cone.fallbacks
        return ConvexSolution(
            W=best_W,
            status=status,
            objective=best_obj,
            max_violation=violation,
            solve_time=time.perf_counter() - self.start,
            history=history,
            info=info,
        )


class _Anderson:
    """Type-II Anderson acceleration of a fixed-point map T (regularized least squares).

    ``extrapolate(x, T(x))`` returns T(x) − ΔF·γ with γ = argmin ‖g − ΔG·γ‖² + ε‖γ‖²
    (g = x − T(x); ΔG, ΔF the last ``memory`` differences of g and T(x)).
    """

    def __init__(self, memory: int, reg: float = 1e-10) -> None:
        self.memory, self.reg = memory, reg
        self.reset()

    def reset(self) -> None:
        self.dG: list[torch.Tensor] = []
        self.dF: list[torch.Tensor] = []
        self.g_prev: torch.Tensor | None = None
        self.f_prev: torch.Tensor | None = None

    def extrapolate(self, x: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        g = x - fx
        if self.g_prev is not None and self.f_prev is not None:
            self.dG.append(g - self.g_prev)
            self.dF.append(fx - self.f_prev)
            if len(self.dG) > self.memory:
                self.dG.pop(0)
                self.dF.pop(0)
        self.g_prev, self.f_prev = g, fx
        if not self.dG:
            return fx
        DG = torch.stack(self.dG, dim=1)
        gram = DG.T @ DG
        eps = self.reg * float(gram.diagonal().max()) + 1e-300
        gram = gram + eps * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        try:
            gamma = torch.linalg.solve(gram, DG.T @ g)
        except RuntimeError:
            self.reset()
            return fx
        if not bool(torch.isfinite(gamma).all()):
            self.reset()
            return fx
        return fx - torch.stack(self.dF, dim=1) @ gamma
