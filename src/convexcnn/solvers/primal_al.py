"""Primal augmented Lagrangian (penalty on 𝒢W ≥ 0, FISTA inner solves): the generic fallback.

Used by :class:`~convexcnn.solvers.al.AugmentedLagrangian` only for constrained programs that
expose no per-block cone projection (then only ``constraint``/``constraint_adjoint`` of the
protocol are available). It is slow: the inner problems become ill-conditioned as ρ grows
(measured on the tiny sum-pooling instance: stalls ~1e-3 above the optimum). Programs with
block projections use the dual augmented Lagrangian with semismooth Newton instead.

Problem: min ℓ(𝒜W) + β·ρ(W) s.t. 𝒢W ≥ 0, with 𝒢 block diagonal (block b: rows G_b w_b).
Outer iteration k, multipliers λ ≥ 0, penalty ρ_k:

    W_{k+1} ≈ argmin_W ℓ(𝒜W) + βρ(W) + Σ_b (‖(λ_b − ρ_k G_b w_b)_+‖² − ‖λ_b‖²)/(2ρ_k)
    λ_b ← (λ_b − ρ_k G_b w_b)_+

The inner problem is solved by FISTA (:mod:`convexcnn.solvers.fista`), warm-started from the
previous W, to a gradient-mapping tolerance that tightens every outer iteration; ρ grows ×10
when the violation did not fall by 4×.

Multipliers are stored only for blocks that were nonzero at some outer iterate (a block with
w_b = 0 has G_b w_b = 0, so its λ_b never changes from 0 unless it was touched): memory is
(#touched blocks)·rows, not 2cP·nK. ``ConvexSolution.multipliers`` is a hybrid sparse COO
tensor shaped like ``problem.constraint(W)`` (sparse over blocks, dense rows; ``.to_dense()``).

Certificate (Lagrangian dual, SPEC §2.4): V = −∇ℓ(𝒜W), μ = 𝒢ᵀλ; with
s ≤ β / max_b ‖(𝒜ᵀV + μ)_b‖, the lower bound is −ℓ*(−sV). At an exact inner solution
𝒜ᵀV + μ ∈ ∂(βρ)(W), so the gap equals the complementarity ⟨λ, 𝒢W⟩ → 0.

Final repair: every block with a (small) violation is projected exactly onto its cone
{z : G_b z ≥ 0} (nonnegative least squares on the violated rows, repeated until none is
violated), so the reported ``objective`` is that of a feasible W and equals the recovered
network's own objective.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ..memory import MemoryLimitError, available_memory, format_bytes
from ..problems.base import ConvexProblem
from .cones import block_matrix, project_onto_cone
from .duality import relative_gap, scaled_dual_value
from .fista import (
    ProxGradStep,
    accelerated_proximal_gradient,
    default_tol,
    initial_lipschitz,
    resolve_warm_start,
)
from .result import ConvexSolution, History
from .stopping import IterationState, MaxIterations, TimeLimit
from .threads import solver_threads

__all__ = [
    "BlockConstraints",
    "DenseBlockConstraints",
    "PrimalAugmentedLagrangian",
    "block_constraints",
]


class BlockConstraints(Protocol):
    """Block-diagonal constraint operator: block b's rows G_b w_b (``rows`` per block)."""

    def apply(self, blocks: torch.Tensor, Wb: torch.Tensor) -> torch.Tensor: ...

    def adjoint(self, blocks: torch.Tensor, L: torch.Tensor) -> torch.Tensor: ...

    def penalty(
        self, blocks: torch.Tensor, Wb: torch.Tensor, lam: torch.Tensor | None, rho: float
    ) -> tuple[float, torch.Tensor]: ...

    def update(
        self, blocks: torch.Tensor, Wb: torch.Tensor, lam: torch.Tensor, rho: float
    ) -> tuple[torch.Tensor, float, float]: ...

    def constraint_norm_squared(self) -> float: ...


class DenseBlockConstraints:
    """Fallback for any constrained problem: one block = all of W, via the protocol's
    ``constraint`` / ``constraint_adjoint`` (dense multipliers)."""

    def __init__(self, problem: ConvexProblem) -> None:
        self.problem = problem
        self.shape = tuple(problem.variable_shape)
        g = problem.constraint(problem.zeros())
        assert g is not None
        self.gshape = tuple(g.shape)

    def apply(self, blocks: torch.Tensor, Wb: torch.Tensor) -> torch.Tensor:
        g = self.problem.constraint(Wb.reshape(self.shape))
        assert g is not None
        return g.reshape(1, -1)

    def adjoint(self, blocks: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
        return self.problem.constraint_adjoint(L.reshape(self.gshape)).reshape(1, -1)

    def penalty(
        self, blocks: torch.Tensor, Wb: torch.Tensor, lam: torch.Tensor | None, rho: float
    ) -> tuple[float, torch.Tensor]:
        g = self.apply(blocks, Wb)
        lam0 = torch.zeros_like(g) if lam is None else lam
        z = (lam0 - rho * g).clamp_min(0)
        value = float((z.square() - lam0.square()).sum()) / (2 * rho)
        return value, -self.adjoint(blocks, z)

    def update(
        self, blocks: torch.Tensor, Wb: torch.Tensor, lam: torch.Tensor, rho: float
    ) -> tuple[torch.Tensor, float, float]:
        g = self.apply(blocks, Wb)
        viol = float((-g).clamp_min(0).max()) if g.numel() else 0.0
        lam.copy_((lam - rho * g).clamp_min(0))
        return self.adjoint(blocks, lam), viol, float((lam * g).sum())

    def constraint_norm_squared(self) -> float:
        v = torch.randn(self.shape, dtype=self.problem.targets.dtype)
        est = 1.0
        for _ in range(20):
            v = v / v.norm()
            g = self.problem.constraint(v)
            assert g is not None
            w = self.problem.constraint_adjoint(g)
            est = float((w * v).sum())
            v = w
        return max(est, 1e-12)


def block_constraints(problem: ConvexProblem) -> tuple[BlockConstraints, int, int]:
    """(operator, number of blocks, rows per block) for a constrained problem.

    Uses ``problem.operators`` when it is the two-layer fast operator (blocks = W[j, s, i]),
    else :class:`DenseBlockConstraints` (one block).
    """
    from ..operators import TwoLayerOperators

    ops = getattr(problem, "operators", None)
    if isinstance(ops, TwoLayerOperators):
        n_blocks = int(np.prod(problem.variable_shape[:-1]))
        return ops, n_blocks, ops.n * ops.K
    dense = DenseBlockConstraints(problem)
    return dense, 1, int(np.prod(dense.gshape))


class MultiplierStore:
    """λ_b (rows) and μ_b = G_bᵀλ_b (block size) for the blocks touched so far."""

    def __init__(
        self, n_blocks: int, rows: int, size: int, like: torch.Tensor, *, limit: int | None = None
    ) -> None:
        self.n_blocks, self.rows, self.size = n_blocks, rows, size
        self.dtype, self.device = like.dtype, like.device
        self.slot = torch.full((n_blocks,), -1, dtype=torch.long, device=like.device)
        self.blocks = torch.zeros((0,), dtype=torch.long, device=like.device)
        self.lam = torch.zeros((0, rows), dtype=like.dtype, device=like.device)
        self.mu = torch.zeros((0, size), dtype=like.dtype, device=like.device)
        self.limit = limit

    def __len__(self) -> int:
        return int(self.blocks.numel())

    @property
    def nbytes(self) -> int:
        return int(self.lam.numel() * self.lam.element_size())

    def add(self, blocks: torch.Tensor) -> None:
        """Give every block in ``blocks`` a slot (λ = 0) if it has none."""
        new = blocks[self.slot[blocks] < 0]
        if new.numel() == 0:
            return
        itemsize = self.lam.element_size()
        needed = (len(self) + new.numel()) * self.rows * itemsize
        budget = self.limit if self.limit is not None else int(0.5 * available_memory(self.device))
        if needed > budget:
            raise MemoryLimitError(
                f"the augmented Lagrangian's multipliers for {len(self) + new.numel():,} blocks "
                f"× {self.rows:,} rows need {format_bytes(needed)}, more than "
                f"{format_bytes(budget)}; multipliers are the binding memory limit. Knobs: "
                "fewer patterns, dtype=torch.float32, a larger stride (fewer rows n·K), fewer "
                "samples, or a larger beta (fewer active blocks)"
            )
        start = len(self)
        self.slot[new] = torch.arange(start, start + new.numel(), device=self.device)
        self.blocks = torch.cat([self.blocks, new])
        zl = torch.zeros((new.numel(), self.rows), dtype=self.dtype, device=self.device)
        zm = torch.zeros((new.numel(), self.size), dtype=self.dtype, device=self.device)
        self.lam = torch.cat([self.lam, zl])
        self.mu = torch.cat([self.mu, zm])

    def dense_mu(self) -> torch.Tensor:
        """μ scattered over all blocks, (n_blocks, size)."""
        out = torch.zeros((self.n_blocks, self.size), dtype=self.dtype, device=self.device)
        if len(self):
            out[self.blocks] = self.mu
        return out

    def as_sparse(self, shape: tuple[int, ...], block_axes: int) -> torch.Tensor:
        """Hybrid sparse COO tensor of ``shape``: sparse over the block axes, dense rows."""
        lead = shape[:block_axes]
        idx = _unravel(self.blocks, lead) if len(self) else None
        if idx is None:
            idx = torch.zeros((block_axes, 0), dtype=torch.long, device=self.device)
        values = self.lam.reshape((len(self), *shape[block_axes:]))
        return torch.sparse_coo_tensor(idx, values, shape, check_invariants=False).coalesce()


class _PenaltyTerm:
    """e(W) = Σ_b (‖(λ_b − ρ G_b w_b)_+‖² − ‖λ_b‖²)/(2ρ) over nonzero or multiplier blocks."""

    def __init__(
        self, ops: BlockConstraints, store: MultiplierStore, rho: float, size: int
    ) -> None:
        self.ops, self.store, self.rho, self.size = ops, store, rho, size
        self.mu_dense = -store.dense_mu()  # gradient of the term at w_b = 0

    def _split(self, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        Wb = W.reshape(-1, self.size)
        nz = (Wb != 0).any(dim=1).nonzero().flatten()
        lam = None
        if len(self.store) and nz.numel():
            slots = self.store.slot[nz]
            has = slots >= 0
            if bool(has.any()):
                lam = torch.zeros((nz.numel(), self.store.rows), dtype=W.dtype, device=W.device)
                lam[has] = self.store.lam[slots[has]]
        return Wb, nz, lam

    def value(self, W: torch.Tensor) -> float:
        Wb, nz, lam = self._split(W)
        if nz.numel() == 0:
            return 0.0
        v, _ = self.ops.penalty(nz, Wb[nz], lam, self.rho)
        return v

    def value_and_grad(self, W: torch.Tensor) -> tuple[float, torch.Tensor]:
        Wb, nz, lam = self._split(W)
        grad = self.mu_dense.clone()
        value = 0.0
        if nz.numel():
            value, g = self.ops.penalty(nz, Wb[nz], lam, self.rho)
            grad[nz] = g
        return value, grad.view(W.shape)


def repair(problem: ConvexProblem, ops: BlockConstraints, W: torch.Tensor, size: int) -> int:
    """Project every violating block of W (in place) onto its cone; returns how many."""
    Wb = W.view(-1, size)
    nz = (Wb != 0).any(dim=1).nonzero().flatten()
    if nz.numel() == 0:
        return 0
    g = ops.apply(nz, Wb[nz])
    bad = ((g < 0).any(dim=1)).nonzero().flatten()
    for j in bad.tolist():
        b = int(nz[j])
        w = Wb[b]
        G = block_matrix(ops, b, size, W)
        z, _, _ = project_onto_cone(G.cpu().numpy(), w.cpu().numpy())
        Wb[b] = torch.as_tensor(z, dtype=W.dtype, device=W.device)
    return int(bad.numel())


@dataclass
class PrimalAugmentedLagrangian:
    """Primal augmented Lagrangian with FISTA inner solves (generic, slow fallback).

    Args:
        tol: relative duality gap that counts as optimal (None: 1e-6 float64, 1e-4 float32).
        max_iter: outer iterations.
        max_inner: FISTA iterations per outer iteration.
        time_limit: seconds (None: no limit).
        rho: initial penalty (None: balance ρ‖G_b‖² with L_ℓ‖𝒜‖²).
        inner_tol: first inner tolerance on the scaled gradient mapping (then ×0.1 per outer).
        repair: project slightly infeasible blocks onto their cones at the end.
        verbose: print one line per outer iteration.
    """

    tol: float | None = None
    max_iter: int = 200
    max_inner: int = 5_000
    time_limit: float | None = None
    rho: float | None = None
    inner_tol: float = 1e-2
    repair: bool = True
    verbose: bool = False
    multiplier_memory: int | None = None
    threads: int | None = None
    name: str = field(default="al-primal", init=False)

    def solve(self, problem: ConvexProblem, warm_start: Any = None) -> ConvexSolution:
        """Solve ``problem`` (from ``warm_start``: a ConvexSolution or W of the same program)."""
        with solver_threads(problem, self.threads):
            return self._solve(problem, warm_start)

    def _solve(self, problem: ConvexProblem, warm_start: Any = None) -> ConvexSolution:
        """Minimize ℓ(𝒜W) + βρ(W) s.t. 𝒢W ≥ 0; status "optimal" only when the gap rule fired
        on a feasible (repaired) W."""
        if not problem.has_constraints:
            raise ValueError(
                f"solver='al' is for constrained programs; {type(problem).__name__} has none: "
                "use solver='fista'"
            )
        start = time.perf_counter()
        W = resolve_warm_start(problem, warm_start)
        tol = default_tol(W.dtype) if self.tol is None else self.tol
        ops, n_blocks, rows = block_constraints(problem)
        size = int(np.prod(problem.variable_shape)) // n_blocks
        store = MultiplierStore(n_blocks, rows, size, W, limit=self.multiplier_memory)
        if isinstance(warm_start, ConvexSolution) and warm_start.multipliers is not None:
            self._load_multipliers(store, ops, warm_start.multipliers, size)
        L_loss = initial_lipschitz(problem, W)
        G2 = ops.constraint_norm_squared()
        rho = self.rho if self.rho is not None else L_loss / G2
        L = L_loss + rho * G2
        inner_tol = self.inner_tol
        history = History()
        limits = MaxIterations(self.max_iter)
        timer = TimeLimit(math.inf if self.time_limit is None else self.time_limit)
        status, best_lower, prev_viol = "max_iter", -math.inf, math.inf
        objective, gap, viol, repaired = math.nan, math.nan, math.nan, 0
        total_inner = 0
        for outer in range(self.max_iter):
            term = _PenaltyTerm(ops, store, rho, size)

            def inner_stop(step: ProxGradStep, tol_k: float = inner_tol) -> bool:
                if time.perf_counter() - start > timer.seconds:
                    return True
                return step.gradient_mapping <= tol_k

            W, F, L, iters = accelerated_proximal_gradient(
                problem, W, L=L, callback=inner_stop, extra=term, max_iter=self.max_inner
            )
            total_inner += iters
            # multiplier step on the blocks that are nonzero now
            Wb = W.view(-1, size)
            nz = (Wb != 0).any(dim=1).nonzero().flatten()
            viol, comp = 0.0, 0.0
            if nz.numel():
                store.add(nz)
                slots = store.slot[nz]
                lam = store.lam[slots]
                mu, viol, comp = ops.update(nz, Wb[nz], lam, rho)
                store.lam[slots] = lam
                store.mu[slots] = mu
            # Lagrangian dual bound and gap
            V = problem.loss.dual_point(F, problem.targets)
            Z = problem.predict_adjoint(V).reshape(-1, size) + store.dense_mu()
            dn = float(Z.norm(dim=1).max())
            s_max = problem.beta / dn if dn > 0 else math.inf
            best_lower = max(best_lower, scaled_dual_value(problem.loss, V, problem.targets, s_max))
            objective = problem.objective(W)
            gap = relative_gap(objective, best_lower)
            elapsed = time.perf_counter() - start
            history.record(
                objective=objective,
                gap=gap,
                violation=viol,
                time=elapsed,
                lower_bound=best_lower,
                rho=rho,
                inner_iterations=iters,
                complementarity=comp,
                multiplier_blocks=len(store),
            )
            if self.verbose:
                print(
                    f"al {outer:3d}  obj {objective:.10g}  gap {gap:.2e}  viol {viol:.2e}  "
                    f"rho {rho:.3g}  inner {iters:5d}  blocks {int(nz.numel())}/"
                    f"{len(store)}  t {elapsed:.2f}s"
                )
            if gap <= tol:
                candidate = W.clone()
                fixed = repair(problem, ops, candidate, size) if self.repair and viol > 0 else 0
                cand_obj = problem.objective(candidate) if fixed else objective
                cand_gap = relative_gap(cand_obj, best_lower)
                cand_viol = self._violation(ops, candidate, size) if fixed else viol
                if cand_gap <= tol and (cand_viol == 0.0 or not self.repair):
                    W, objective, gap, viol, repaired = (
                        candidate,
                        cand_obj,
                        cand_gap,
                        cand_viol,
                        fixed,
                    )
                    status = "optimal"
                    break
            state = IterationState(outer, time.perf_counter() - start, objective, gap)
            why = limits.check(state) or timer.check(state)
            if why is not None:
                status = why
                break
            if viol > 0.25 * prev_viol:
                rho *= 10.0
                L = max(L, L_loss + rho * G2)
            prev_viol = viol
            inner_tol = max(0.1 * inner_tol, 1e-3 * tol)
        if status != "optimal" and self.repair:
            repaired = repair(problem, ops, W, size)
            if repaired:
                objective = problem.objective(W)
                viol = self._violation(ops, W, size)
                gap = relative_gap(objective, best_lower)
        elapsed = time.perf_counter() - start
        multipliers: torch.Tensor | None
        if isinstance(ops, DenseBlockConstraints):
            multipliers = store.lam.reshape(ops.gshape) if len(store) else None
        else:
            shape = tuple(problem.variable_shape[:-1]) + self._row_shape(problem, rows)
            multipliers = store.as_sparse(shape, len(problem.variable_shape) - 1)
        return ConvexSolution(
            W=W,
            status=status,
            objective=objective,
            max_violation=viol,
            solve_time=elapsed,
            history=history,
            multipliers=multipliers,
            info={
                "solver": "al-primal",
                "outer_iterations": len(history),
                "inner_iterations": total_inner,
                "lower_bound": best_lower,
                "gap": gap,
                "rho": rho,
                "repaired_blocks": repaired,
                "multiplier_blocks": len(store),
                "multiplier_bytes": store.nbytes,
            },
        )

    @staticmethod
    def _violation(ops: BlockConstraints, W: torch.Tensor, size: int) -> float:
        Wb = W.view(-1, size)
        nz = (Wb != 0).any(dim=1).nonzero().flatten()
        if nz.numel() == 0:
            return 0.0
        g = ops.apply(nz, Wb[nz])
        return float((-g).clamp_min(0).max())

    @staticmethod
    def _row_shape(problem: ConvexProblem, rows: int) -> tuple[int, ...]:
        n, K = getattr(problem, "n", None), getattr(problem, "K", None)
        if isinstance(n, int) and isinstance(K, int) and n * K == rows:
            return (n, K)
        return (rows,)

    @staticmethod
    def _load_multipliers(
        store: MultiplierStore, ops: BlockConstraints, lam: torch.Tensor, size: int
    ) -> None:
        dense = lam.to_dense() if lam.is_sparse else lam
        flat = dense.reshape(store.n_blocks, store.rows).to(store.dtype)
        keep = (flat != 0).any(dim=1).nonzero().flatten()
        if keep.numel() == 0:
            return
        store.add(keep)
        slots = store.slot[keep]
        store.lam[slots] = flat[keep]
        store.mu[slots] = ops.adjoint(keep, flat[keep])


def _unravel(flat: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Row-major multi-indices (len(shape), N) of flat indices."""
    out = []
    rest = flat
    for dim in reversed(shape):
        out.append(rest % dim)
        rest = rest // dim
    return torch.stack(out[::-1])
