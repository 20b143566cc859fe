"""P3: the MLP special case (kernel = the whole 8×8 image, K = 1) against scnn (pyscnn).

Set-up: digits 3-vs-8, full training split (n = 249 images, d = h = 64), squared loss,
``GATES`` Gaussian gate vectors → one PatternSet; scnn gets the *same* gates (its
``ConvexGatedReLU(G)`` / ``ConvexReLU(G)`` with G = our PatternSet's generator filters, d × P),
``unitize_data=False`` (its default rescales the columns of X, which changes the patterns),
float64 on both sides, scnn's own default solvers: R-FISTA for gated ReLU, AL for ReLU.

**Objective scaling.** scnn minimizes ``(1/(2n))‖ŷ − y‖² + λ Σ_i ‖u_i‖₂`` (its squared error is
divided by 2·n·c, c = 1); we minimize ``½‖ŷ − y‖² + β Σ_i ‖u_i‖₂``. Multiplying theirs by n gives
ours with **β = n·λ**, and **our objective = n × theirs**. We pass λ = β/n and compare every
objective on our scale, evaluated by us from each side's returned convex weights (scnn's
``return_convex=True``), so nothing depends on either side's own bookkeeping. scnn's gates are
``1[Xg > 0]``, ours ``1[Xg ≥ 0]``: identical for Gaussian gates on non-zero images (checked).
Our gated program keeps two copies (c, c′) per pattern; its optimum equals scnn's one-copy group
lasso (at the optimum at most one copy is nonzero).

**Measured.** scnn time = wall time of ``optimize_model`` (patterns from the gates, solve, model
conversion). Target T = scnn's final objective (our scale). Our solves stop at 5 × scnn's time
(or 10 s). Our time to T = problem set-up + the
first solver-history time at which the objective is ≤ T — for ``al`` only at an iterate whose
max constraint violation is ≤ scnn's final violation (the same feasibility standard), or the
total time of our solve when its final objective is ≤ T at such a violation, whichever is
earlier.
Medians of repeats. Target: our time ≤ 0.5 × scnn's.

Needs pyscnn in the venv (never in pyproject: a plain install replaces torch with a CUDA
build): ``.venv/bin/pip install --no-deps pyscnn linalg-backends opt_einsum``. Without it the
benchmark prints SKIPPED with the import error.

Run: ``.venv/bin/python benchmarks/vs_scnn.py [--quick]``; writes benchmarks/results/vs_scnn.json.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from _common import (
    check,
    digits_38,
    median,
    parse_quick,
    patches,
    print_checks,
    skipped,
    solver,
    table,
    time_to_target,
    two_layer_problem,
    write_json,
)
from convexcnn.patterns import PatternSet

BETA, KERNEL, GATES, SPEEDUP = 1e-3, 8, 100, 0.5


def import_scnn() -> tuple[Any, str]:
    """(scnn modules namespace, "") or (None, reason)."""
    try:
        import scnn.metrics
        import scnn.models
        import scnn.optimize
        import scnn.regularizers
        import scnn.solvers

        return scnn, ""
    except Exception as err:
        return None, f"{type(err).__name__}: {err}"


def our_objective(
    X: np.ndarray, y: np.ndarray, pred: np.ndarray, norms: float, beta: float
) -> float:
    return float(0.5 * np.sum((pred.reshape(-1) - y.reshape(-1)) ** 2) + beta * norms)


def run_scnn(
    scnn: Any, formulation: str, X: np.ndarray, y: np.ndarray, G: np.ndarray, lam: float
) -> dict[str, Any]:
    """One scnn solve; objective and violation evaluated on our scale from its convex weights."""
    if formulation == "gated":
        model = scnn.models.ConvexGatedReLU(G.copy(), c=1)
        opt = scnn.solvers.RFISTA(model)
    else:
        model = scnn.models.ConvexReLU(G.copy(), c=1)
        opt = scnn.solvers.AL(model)
    metrics = scnn.metrics.Metrics(metric_freq=25, objective=True, grad_norm=False, time=True)
    start = time.perf_counter()
    model, metrics = scnn.optimize.optimize_model(
        model,
        opt,
        metrics,
        X,
        y,
        regularizer=scnn.regularizers.NeuronGL1(lam),
        return_convex=True,
        unitize_data=False,
        dtype="float64",
        verbose=False,
    )
    seconds = time.perf_counter() - start
    D = (X @ model.G > 0).astype(np.float64)  # (n, p)
    params = model.parameters
    if formulation == "gated":
        U = params[0][0]  # (p, d)
        pred = np.einsum("ij,kj,ik->i", X, U, D)
        norms = float(np.linalg.norm(U, axis=1).sum())
        violation = 0.0
    else:
        V, W = params[0][0], params[1][0]
        pred = np.einsum("ij,kj,ik->i", X, V - W, D)
        norms = float(np.linalg.norm(V, axis=1).sum() + np.linalg.norm(W, axis=1).sum())
        S = 2 * D - 1
        rows = np.concatenate([S * (X @ V.T), S * (X @ W.T)], axis=1)
        violation = float(max(0.0, -rows.min()))
    n = X.shape[0]
    return {
        "seconds": seconds,
        "objective": our_objective(X, y, pred, norms, n * lam),
        "max_violation": violation,
        "neurons": int(model.p),
        "their_objective_trace_times_n": [float(v) * n for v in np.asarray(metrics.objective)],
        "their_time_trace": [float(v) for v in np.asarray(metrics.time)],
    }


def run_ours(
    formulation: str,
    X: torch.Tensor,
    y: torch.Tensor,
    patterns: PatternSet,
    target: float,
    max_violation: float,
    time_limit: float,
) -> dict[str, Any]:
    """Our solve to a tight tolerance; time to the target from the history."""
    start = time.perf_counter()
    problem = two_layer_problem(
        X, y, patterns, beta=BETA, kernel=KERNEL, gated=formulation == "gated"
    )
    setup = time.perf_counter() - start
    if formulation == "gated":
        # fista against their R-FISTA (its rank-one metric is what makes it converge here:
        # σ₁²/σ₂² ≈ 8; session 2's plain fista never reached scnn's objective)
        sol = solver("fista", tol=1e-9, max_iter=10**9, time_limit=time_limit).solve(problem)
        t_hist = time_to_target(sol.history, target)
        t_final = sol.solve_time if sol.objective <= target else math.nan
    else:
        sol = solver("al", time_limit=time_limit).solve(problem)
        t_hist = time_to_target(sol.history, target, max_violation=max_violation)
        feasible = sol.max_violation <= max_violation
        t_final = sol.solve_time if feasible and sol.objective <= target else math.nan
    candidates = [t for t in (t_hist, t_final) if math.isfinite(t)]
    return {
        "setup_seconds": setup,
        "solve_seconds": sol.solve_time,
        "time_to_target": setup + min(candidates) if candidates else math.nan,
        "objective": sol.objective,
        "max_violation": sol.max_violation,
        "status": sol.status,
        "gap": sol.info.get("gap", math.nan),
    }


def run(quick: bool = False) -> dict[str, Any]:
    repeats = 1 if quick else 3
    n_gates = 30 if quick else GATES
    limit = 80 if quick else None
    scnn, reason = import_scnn()
    if scnn is None:
        note = (
            f"scnn not importable ({reason}); install: .venv/bin/pip install --no-deps "
            "pyscnn linalg-backends opt_einsum"
        )
        print(f"P3 vs_scnn: SKIPPED — {note}", flush=True)
        checks = [skipped("P3 gated time ratio", note), skipped("P3 relu time ratio", note)]
        print_checks(checks)
        payload: dict[str, Any] = {"skipped": note, "checks": checks}
        write_json("vs_scnn", payload)
        return payload

    Xt, yt = digits_38(limit)
    n = int(Xt.shape[0])
    pts, _ = patches(Xt, KERNEL)  # (n, 1, 64)
    gen = torch.Generator().manual_seed(0)
    filters = torch.randn((n_gates, pts.shape[2]), generator=gen, dtype=torch.float64)
    patterns = PatternSet.from_patch_filters(pts, filters, source="gaussian")
    X = pts[:, 0, :].numpy().copy()
    y = yt[:, 0].numpy().copy()
    G = patterns.filters.numpy().T.copy()  # (d, P)
    lam = BETA / n
    same_masks = bool(np.array_equal(X @ G > 0, patterns.masks[:, :, 0].numpy().T))
    print(
        f"P3 vs_scnn: digits 3-vs-8 MLP case, n={n}, d={X.shape[1]}, P={len(patterns)} gates; "
        f"beta={BETA} ↔ scnn lambda=beta/n={lam:.3e}; masks identical: {same_masks}",
        flush=True,
    )
    results: dict[str, Any] = {}
    checks = []
    rows = []
    for formulation, theirs_name, ours_name in (
        ("gated", "R-FISTA", "fista"),
        ("relu", "AL", "al"),
    ):
        try:
            theirs = [run_scnn(scnn, formulation, X, y, G, lam) for _ in range(repeats)]
        except Exception as err:
            note = f"scnn {theirs_name} failed: {type(err).__name__}: {err}"
            print(note, flush=True)
            checks.append(skipped(f"P3 {formulation} time ratio", note))
            results[formulation] = {"skipped": note}
            continue
        target = theirs[0]["objective"]
        viol = theirs[0]["max_violation"]
        t_theirs = median([r["seconds"] for r in theirs])
        budget = max(10.0, 5 * t_theirs)  # enough to measure a ratio up to 5
        ours = [
            run_ours(formulation, Xt, yt, patterns, target, viol, budget) for _ in range(repeats)
        ]
        t_ours = median([r["time_to_target"] for r in ours])
        ratio = t_ours / t_theirs if math.isfinite(t_ours) else math.nan
        best = ours[0]["objective"]
        rows.append(
            [
                f"scnn {theirs_name}",
                t_theirs,
                theirs[0]["objective"],
                (theirs[0]["objective"] - best) / abs(best),
                viol,
                f"{theirs[0]['neurons']} neurons",
            ]
        )
        rows.append(
            [
                f"convexcnn {ours_name} (to T)",
                t_ours,
                ours[0]["objective"],
                0.0,
                ours[0]["max_violation"],
                f"full solve {median([r['solve_seconds'] for r in ours]):.2f} s, "
                f"gap {ours[0]['gap']:.1e}",
            ]
        )
        note = "time to scnn's final objective" + (
            "" if math.isfinite(t_ours) else " — never reached by our solver"
        )
        checks.append(
            check(
                f"P3 {formulation}: our time / scnn {theirs_name} time",
                ratio,
                SPEEDUP,
                direction="<=",
                note=note,
            )
        )
        results[formulation] = {
            "scnn": theirs,
            "ours": ours,
            "target_objective": target,
            "scnn_median_seconds": t_theirs,
            "ours_median_time_to_target": t_ours,
            "ratio": ratio,
        }
    if rows:
        table(
            [
                "side",
                "median s",
                "objective (ours scale)",
                "rel. to our final",
                "violation",
                "notes",
            ],
            rows,
            title=f"P3 (median of {repeats}); objective = n x scnn's",
        )
    print_checks(checks)
    payload = {
        "setup": {
            "n": n,
            "d": int(X.shape[1]),
            "P": len(patterns),
            "beta": BETA,
            "scnn_lambda": lam,
            "scaling": "ours = n * scnn; beta = n * lambda",
            "masks_identical": same_masks,
            "repeats": repeats,
            "quick": quick,
        },
        "results": results,
        "checks": checks,
    }
    write_json("vs_scnn", payload)
    return payload


if __name__ == "__main__":
    run(parse_quick())
