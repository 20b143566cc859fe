"""The public entry point: ``fit`` a CNN by its convex program and get back a torch network."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .certificate import certify_solution
from .data import as_float_tensor, one_hot, validate_targets
from .growth import grow_patterns as grow_pattern_set
from .losses import Loss, get_loss
from .patches import PatchSpec, ResolvedSpec, as_signal_batch, extract_patches
from .patterns import PatternSet
from .problems.base import ConvexProblem
from .problems.registry import ARCHITECTURES, FitContext, build_problem
from .solvers import get_solver
from .solvers.result import ConvexSolution

__all__ = ["DEFAULT_PATTERNS", "FitResult", "fit"]

#: Generator filters drawn when ``patterns=None``.
DEFAULT_PATTERNS = 100


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    Attributes:
        objective: the convex program's objective at the solution.
        network: the recovered ``torch.nn.Module`` (input (n, C, *spatial)).
        network_objective: ℓ(f(X); Y) + weight penalty of ``network`` on the training data,
            computed by running it — the honest number.
        n_filters: branches (hidden filters) of the recovered network.
        patterns: the :class:`PatternSet` used.
        solve_time: seconds spent in the solver.
        status: the solver's status ("optimal" when its stopping rule was met).
        certificate: :class:`~convexcnn.certificate.Certificate` (lower bound, gap, scope).
        growth_history: per-round records of ``grow_patterns=True`` (else None).
    """

    objective: float
    network: torch.nn.Module
    network_objective: float
    n_filters: int
    patterns: PatternSet | None
    solve_time: float
    status: str
    solution: ConvexSolution
    problem: ConvexProblem
    spec: PatchSpec
    resolved_spec: ResolvedSpec
    loss: Loss
    beta: float
    task: str
    architecture: str
    pooling: str
    certificate: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    growth_history: list[dict[str, Any]] | None = None

    def _batch(self, X: object) -> torch.Tensor:
        dtype = next(self.network.parameters()).dtype
        batch, _ = as_signal_batch(as_float_tensor(X, name="X", dtype=dtype), self.spec)
        return batch

    def decision_function(self, X: object) -> torch.Tensor:
        """Raw network outputs: (n,) for scalar output, (n, c) otherwise."""
        with torch.no_grad():
            return self.network(self._batch(X))

    def predict(self, X: object) -> torch.Tensor:
        """Regression: outputs. Binary: ±1 labels (sign). Multi-class: class index (argmax)."""
        out = self.decision_function(X)
        if self.task == "binary":
            return torch.where(out >= 0, 1.0, -1.0).to(out.dtype)
        if self.task == "multiclass":
            return out.argmax(dim=1)
        return out

    @property
    def relative_difference(self) -> float:
        """|network_objective − objective| / max(1, |objective|)."""
        return abs(self.network_objective - self.objective) / max(1.0, abs(self.objective))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "architecture": self.architecture,
            "pooling": self.pooling,
            "loss": self.loss.name,
            "beta": self.beta,
            "objective": self.objective,
            "network_objective": self.network_objective,
            "n_filters": self.n_filters,
            "n_patterns": len(self.patterns) if self.patterns is not None else 0,
            "solve_time": self.solve_time,
            "status": self.status,
            "solver": self.solution.info.get("solver", ""),
        }
        if self.certificate is not None and hasattr(self.certificate, "as_dict"):
            out["certificate"] = self.certificate.as_dict()
        return out


def _check_beta(beta: object) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise ValueError(f"beta must be a positive number; got {beta!r}")
    value = float(beta)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"beta must be > 0 and finite (weight-decay strength); got {beta!r}")
    return value


def prepare_targets(y: object, n: int, loss: Loss, task: str, dtype: torch.dtype) -> torch.Tensor:
    """Targets as an (n, c) tensor: ±1 column for binary, one-hot for multi-class."""
    Y = validate_targets(y, n, task=task).to(dtype)
    if task == "multiclass":
        labels = Y.to(torch.long).reshape(-1)
        return one_hot(labels, int(labels.max()) + 1).to(dtype)
    return Y[:, None] if Y.ndim == 1 else Y


def resolve_task(task: str, loss: Loss) -> str:
    if task == "auto":
        return loss.task
    if task not in ("regression", "binary", "multiclass"):
        raise ValueError(
            f"task must be 'auto', 'regression', 'binary' or 'multiclass'; got {task!r}"
        )
    if loss.task == "multiclass" and task != "multiclass":
        raise ValueError(f"loss={loss.name!r} needs task='multiclass'; got task={task!r}")
    if loss.task == "binary" and task != "binary":
        raise ValueError(f"loss={loss.name!r} needs ±1 targets (task='binary'); got {task!r}")
    return task


def fit(
    X: object,
    y: object,
    *,
    architecture: str = "two_layer",
    pooling: str | None = None,
    kernel_size: int | tuple[int, ...] = 3,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    spec_dims: int | None = None,
    beta: float = 1e-3,
    loss: str | Loss = "squared",
    task: str = "auto",
    patterns: Any = None,
    pattern_kind: str = "gaussian",
    solver: str = "exact",
    solver_options: dict[str, Any] | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    certificate_starts: int = 64,
    grow_patterns: bool = False,
    growth_rounds: int = 10,
    growth_starts: int = 64,
    growth_per_round: int = 10,
    warm_start: Any = None,
    **architecture_options: Any,
) -> FitResult:
    """Train a CNN to global optimality over its patterns by solving its convex program.

    Args:
        X: images (n, C, H, W) or (n, H, W); 1-D signals (n, L), or (n, C, L) with
            ``spec_dims=1``. numpy or torch.
        y: targets (n,) or (n, c). ±1 for binary losses / ``task="binary"``; integer labels
            for ``loss="cross_entropy"``.
        architecture, pooling: see ``convexcnn.problems.registry.ARCHITECTURES``
            ("two_layer" with "sum" or "avg": SPEC §3).
        kernel_size, stride, padding, dilation, spec_dims: convolution geometry (PatchSpec).
        beta: weight decay β > 0; objective ℓ(f(X); Y) + (β/2)Σ_j(‖u_j‖² + ‖w_j‖²).
        loss: "squared", "logistic", "cross_entropy", "squared_hinge", "huber" or a Loss.
        task: "auto" (from the loss), "regression", "binary" (checks ±1) or "multiclass".
        patterns: None (sample 100 filters), an int (generator filters to sample), a
            PatternSet built on the same X and spec, or "enumerate" (every pattern, exact
            enumeration for small rank: the certificate is then a proof).
        pattern_kind: "gaussian" or "patches" generator filters when sampling.
        solver: "exact" (CVXPY + Clarabel) or another registered solver name.
        solver_options: keyword options of the solver object.
        seed: seeds pattern sampling.
        dtype: torch.float64 (default) or torch.float32.
        certificate_starts: starts of the violating-filter search behind ``certificate``
            (0: check the current patterns only). See :mod:`convexcnn.certificate`.
        grow_patterns: column generation (:mod:`convexcnn.growth`): solve, search violating
            filters, add their patterns, repeat ≤ ``growth_rounds`` times, ``growth_starts``
            search starts and ≤ ``growth_per_round`` new patterns per round.
        warm_start: initial point for the solver (a ``ConvexSolution`` or W) of the same
            program (same patterns), e.g. the previous β's solution (:func:`fit_path`);
            ignored by the exact solver and by pattern growth.
        architecture_options: options of the architecture (e.g. ``gated=True``).

    Returns:
        A :class:`FitResult`; ``network_objective`` is the recovered network's own objective.
    """
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "float64": torch.float64}.get(dtype, dtype)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"dtype must be torch.float32 or torch.float64 (or 'float32' / 'float64'); "
            f"got {dtype!r}"
        )
    beta_value = _check_beta(beta)
    loss_obj = get_loss(loss)
    task_name = resolve_task(task, loss_obj)
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"architecture must be one of {sorted(ARCHITECTURES)}; got {architecture!r}"
        )
    if pooling is None:  # the architecture's default (first listed) pooling
        pooling = ARCHITECTURES[architecture].poolings[0]
    if pooling not in ARCHITECTURES[architecture].poolings:
        raise ValueError(
            f"pooling must be one of {list(ARCHITECTURES[architecture].poolings)} for "
            f"architecture={architecture!r}; got {pooling!r}"
        )
    solver_obj = get_solver(solver, **(solver_options or {}))

    spec = PatchSpec(kernel_size, stride=stride, padding=padding, dilation=dilation, dims=spec_dims)
    batch, resolved = as_signal_batch(as_float_tensor(X, name="X", dtype=dtype), spec)
    targets = prepare_targets(y, batch.shape[0], loss_obj, task_name, dtype)
    context = FitContext(
        batch=batch,
        spec=spec,
        resolved=resolved,
        patches=extract_patches(batch, resolved),
        targets=targets,
        beta=beta_value,
        loss=loss_obj,
        pooling=pooling,
        patterns=patterns,
        pattern_kind=pattern_kind,
        seed=seed,
        dtype=dtype,
    )
    if (
        isinstance(certificate_starts, bool)
        or not isinstance(certificate_starts, int)
        or certificate_starts < 0
    ):
        raise ValueError(f"certificate_starts must be an integer ≥ 0; got {certificate_starts!r}")
    if isinstance(patterns, str) and architecture == "two_layer":
        if (
            patterns != "enumerate"
            or pooling not in ("sum", "avg")
            or architecture_options.get("pool_size") is not None
        ):
            raise ValueError(
                "patterns may be the string 'enumerate' only (sum/avg pooling, no pooling "
                f"windows); got patterns={patterns!r} with pooling={pooling!r}"
            )
        context.patterns = PatternSet.enumerate_patches(context.patches)
    problem = build_problem(architecture, context, architecture_options)
    growth_history = None
    if grow_patterns:
        grown = grow_pattern_set(
            problem,
            solver_obj,
            rounds=growth_rounds,
            starts=growth_starts,
            per_round=growth_per_round,
            seed=seed,
        )
        problem, solution, recovered = grown.problem, grown.solution, grown.recovered
        certificate = grown.certificate
        growth_history = [r.as_dict() for r in grown.history]
    else:
        solution = solver_obj.solve(problem, warm_start)
        recovered = problem.recover(solution.W)
        certificate = certify_solution(
            problem,
            solution.W,
            upper_bound=recovered.objective,
            multipliers=solution.multipliers,
            starts=certificate_starts,
            seed=seed,
        )
    return FitResult(
        objective=solution.objective,
        network=recovered.module,
        network_objective=recovered.objective,
        n_filters=recovered.n_branches,
        patterns=getattr(problem, "patterns", None),
        solve_time=solution.solve_time,
        status=solution.status,
        solution=solution,
        problem=problem,
        spec=spec,
        resolved_spec=resolved,
        loss=loss_obj,
        beta=beta_value,
        task=task_name,
        architecture=architecture,
        pooling=pooling,
        info=dict(recovered.info),
        certificate=certificate,
        growth_history=growth_history,
    )
