"""P6: time per solver iteration as the data (n) and the pattern count (P) grow.

Data: scikit-learn digits, all ten classes' training split, targets ±1 by parity, 3×3 kernel,
β = 1e-3. Two sweeps from a base (n₀, P₀):

* n ×1, ×2, ×4, ×8 at P₀ generator filters (the same filters; patterns recomputed on the data),
* P ×1, ×2, ×4 generator filters at n₀.

Solvers: ``fista`` on the gated program (one iteration = one prox-gradient step with
backtracking: ≥ 1 forward map, 1 adjoint) and ``al`` on the ReLU program (4 outer iterations; the
time of outer iterations 2–4 divided by their inner steps: the history's ``newton_steps`` of the
semismooth-Newton AL, or ``inner_iterations``). Per-iteration time = (last history
time − first history time) / (iterations − 1), i.e. set-up (operators, Lipschitz estimate)
excluded; median of 3 repeats for ``fista``, one run per point for ``al``. Slope =
least-squares slope of log(time per iteration) against log(n) (resp. log(P), with P the actual
number of distinct patterns). Target: slopes ≤ 1.1. Per-iteration cost depends on how many
blocks are active, which differs between points: the slopes measure the solvers as they run.

Run: ``.venv/bin/python benchmarks/scaling.py [--quick]``; writes benchmarks/results/scaling.json.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from _common import (
    check,
    digits_all,
    median,
    parse_quick,
    patches,
    print_checks,
    solver,
    table,
    two_layer_problem,
    write_json,
)
from convexcnn.patterns import PatternSet, draw_generator_filters

BETA, KERNEL, TARGET = 1e-3, 3, 1.1


def slope(x: list[float], t: list[float]) -> float:
    """Least-squares slope of log t against log x."""
    lx, lt = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(t, dtype=float))
    if len(lx) < 2 or not np.all(np.isfinite(lt)):
        return math.nan
    return float(np.polyfit(lx, lt, 1)[0])


def per_iteration(
    name: str,
    X: torch.Tensor,
    y: torch.Tensor,
    filters: torch.Tensor,
    iterations: int,
    repeats: int,
) -> tuple[float, int]:
    """(median seconds per iteration, P) of solver ``name`` on the data's patterns."""
    pts, _ = patches(X, KERNEL)
    patterns = PatternSet.from_patch_filters(pts, filters, source="gaussian")
    times = []
    # al: one run per point (each already averages the Newton steps of outer iterations 2-4,
    # and one point at n = 1200 takes about a minute here)
    for _ in range(repeats if name == "fista" else 1):
        gated = name == "fista"
        problem = two_layer_problem(X, y, patterns, beta=BETA, kernel=KERNEL, gated=gated)
        if gated:
            sol = solver("fista", tol=0.0, max_iter=iterations).solve(problem)
            steps = len(sol.history)
            span = sol.history.time[-1] - sol.history.time[0]
            times.append(span / max(1, steps - 1))
        else:
            sol = solver("al", tol=0.0, max_iter=4).solve(problem)
            hist = sol.history
            steps = hist.extra.get("newton_steps") or hist.extra.get("inner_iterations")
            if not steps:
                raise RuntimeError("the al history has neither newton_steps nor inner_iterations")
            if len(hist) > 1 and sum(steps[1:]) > 0:  # exclude set-up and the first outer step
                times.append((hist.time[-1] - hist.time[0]) / sum(steps[1:]))
            else:
                times.append(sol.solve_time / max(1.0, sum(steps)))
    return median(times), len(patterns)


def run(quick: bool = False) -> dict[str, Any]:
    n0, f0 = (60, 50) if quick else (150, 250)
    n_factors, p_factors = ((1, 2, 4), (1, 2)) if quick else ((1, 2, 4, 8), (1, 2, 4))
    iterations, repeats = (30, 1) if quick else (200, 3)
    Xall, yall = digits_all()
    h = patches(Xall[:1], KERNEL)[0].shape[2]
    filters = draw_generator_filters(
        torch.zeros((1, 1, h), dtype=torch.float64), f0 * max(p_factors), seed=0
    )
    print(
        f"P6 scaling: base n={n0}, {f0} generator filters; fista {iterations} iterations",
        flush=True,
    )
    sweeps: dict[str, Any] = {}
    checks = []
    rows = []
    for name in ("fista", "al"):
        try:
            n_pts = []
            for k in n_factors:
                t, P = per_iteration(
                    name, Xall[: n0 * k], yall[: n0 * k], filters[:f0], iterations, repeats
                )
                n_pts.append({"n": n0 * k, "P": P, "seconds_per_iteration": t})
                rows.append([name, "n", n0 * k, P, t])
                print(f"  {name} n={n0 * k} P={P}: {t * 1e3:.3f} ms/iteration", flush=True)
            p_pts = []
            for k in p_factors:
                t, P = per_iteration(
                    name, Xall[:n0], yall[:n0], filters[: f0 * k], iterations, repeats
                )
                p_pts.append({"n": n0, "P": P, "seconds_per_iteration": t})
                rows.append([name, "P", n0, P, t])
                print(f"  {name} n={n0} P={P}: {t * 1e3:.3f} ms/iteration", flush=True)
        except Exception as err:
            note = f"{name}: {type(err).__name__}: {err}"
            print(f"  {note}", flush=True)
            sweeps[name] = {"error": note}
            continue
        s_n = slope([p["n"] for p in n_pts], [p["seconds_per_iteration"] for p in n_pts])
        s_p = slope([p["P"] for p in p_pts], [p["seconds_per_iteration"] for p in p_pts])
        sweeps[name] = {"n_sweep": n_pts, "P_sweep": p_pts, "slope_n": s_n, "slope_P": s_p}
        checks.append(check(f"P6 {name} slope in n", s_n, TARGET, direction="<="))
        checks.append(check(f"P6 {name} slope in P", s_p, TARGET, direction="<="))
    table(
        ["solver", "sweep", "n", "P", "s / iteration"],
        rows,
        title=f"P6: time per iteration (median of {repeats})",
    )
    print_checks(checks)
    payload: dict[str, Any] = {
        "setup": {
            "n0": n0,
            "generator_filters0": f0,
            "n_factors": list(n_factors),
            "p_factors": list(p_factors),
            "fista_iterations": iterations,
            "repeats": repeats,
            "beta": BETA,
            "quick": quick,
        },
        "sweeps": sweeps,
        "checks": checks,
    }
    write_json("scaling", payload)
    return payload


if __name__ == "__main__":
    run(parse_quick())
