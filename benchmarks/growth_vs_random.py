"""Pattern growth vs purely random patterns at equal pattern count (digits 3-vs-8).

Both arms start from the same P0 random Gaussian patterns. Growth (``fit(grow_patterns=True)``)
adds the patterns of violating filters found by the dual search, round by round; the random arm
adds random patterns (Gaussian or data-patch generator filters) until it has exactly as many
patterns as growth ended with. Each arm's program is solved to optimality over its patterns and
the recovered network's own objective (loss + weight decay, computed by running it) is compared.
Lower is better; growth should win at every seed.

Run: ``.venv/bin/python benchmarks/growth_vs_random.py [--quick] [--solver exact|al]``; writes
``benchmarks/results/growth_vs_random_<solver>.json``.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from _common import check, print_checks, table, write_json
from convexcnn import PatchSpec, PatternSet, fit
from convexcnn.data import load_dataset
from convexcnn.patches import patches_of
from convexcnn.patterns import sample_patch_patterns
from convexcnn.solvers import SOLVERS

KERNEL, STRIDE, BETA, P0 = 3, 2, 0.1, 10


def _start_patterns(X: Any, spec: PatchSpec, seed: int) -> PatternSet:
    h = patches_of(X, spec).shape[2]
    gen = torch.Generator().manual_seed(seed)
    return PatternSet.from_filters(
        X, spec, torch.randn((P0, h), generator=gen, dtype=torch.float64)
    )


def run(quick: bool = False, solver: str | None = None, limit: int | None = None) -> dict[str, Any]:
    """Both arms with ``solver`` (default: "al" when registered, else "exact"); ``limit``
    training images (default 100; 0: the whole training split)."""
    if limit is None:
        limit = 60 if quick else 100
    seeds = [0] if quick else [0, 1, 2]
    rounds = 3 if quick else 10
    per_round = 10
    if solver is None:
        solver = "al" if "al" in SOLVERS else "exact"
    data = load_dataset("digits", classes=(3, 8), limit=limit or None)
    X, y = data.X_train, data.y_train
    spec = PatchSpec(KERNEL, stride=STRIDE)
    common = {"kernel_size": KERNEL, "stride": STRIDE, "beta": BETA, "solver": solver}
    print(
        f"digits 3-vs-8: n={len(y)}, kernel {KERNEL}, stride {STRIDE}, beta {BETA}, squared loss, "
        f"solver {solver}; growth: {rounds} rounds × ≤{per_round} patterns from P0={P0}",
        flush=True,
    )
    rows, records = [], []
    for seed in seeds:
        start = _start_patterns(X, spec, seed)
        t0 = time.perf_counter()
        grown = fit(
            X, y, patterns=start, grow_patterns=True, growth_rounds=rounds,
            growth_per_round=per_round, seed=seed, **common,  # type: ignore[arg-type]
        )  # fmt: skip
        t_grow = time.perf_counter() - t0
        n_final = len(grown.patterns) if grown.patterns is not None else 0
        random_arms: dict[str, dict[str, Any]] = {}
        for kind in ("gaussian", "patches"):
            pool = sample_patch_patterns(
                patches_of(X, spec), 50 * n_final, seed=1000 + seed, kind=kind
            )
            merged = start.merged(pool)
            if len(merged) < n_final:
                raise RuntimeError(f"only {len(merged)} distinct {kind} patterns; need {n_final}")
            t0 = time.perf_counter()
            res = fit(X, y, patterns=merged.subset(range(n_final)), seed=seed, **common)  # type: ignore[arg-type]
            random_arms[kind] = {
                "network_objective": res.network_objective,
                "n_patterns": len(res.patterns) if res.patterns is not None else 0,
                "certificate": res.certificate.as_dict(),
                "seconds": time.perf_counter() - t0,
            }
        initial = grown.growth_history[0]["network_objective"] if grown.growth_history else None
        rows.append([
            seed, P0, n_final, initial, grown.network_objective,
            random_arms["gaussian"]["network_objective"],
            random_arms["patches"]["network_objective"],
            grown.certificate.lower_bound, t_grow,
        ])  # fmt: skip
        records.append({
            "seed": seed,
            "initial_patterns": len(start),
            "final_patterns": n_final,
            "initial_objective": initial,
            "growth": {
                "network_objective": grown.network_objective,
                "certificate": grown.certificate.as_dict(),
                "history": grown.growth_history,
                "seconds": t_grow,
            },
            "random": random_arms,
        })  # fmt: skip
    table(
        ["seed", "P0", "P final", "obj @P0", "growth", "random gauss", "random patches",
         "growth lower bd", "growth s"],
        rows,
        title="recovered-network objective at equal final pattern count (lower is better)",
    )  # fmt: skip
    checks = []
    for rec in records:
        g = rec["growth"]["network_objective"]
        for kind in ("gaussian", "patches"):
            r = rec["random"][kind]["network_objective"]
            checks.append(
                check(
                    f"seed {rec['seed']}: growth / random {kind} objective",
                    g / r, 1.0, direction="<=",
                    note=f"{g:.6g} vs {r:.6g} at P={rec['final_patterns']}",
                )
            )  # fmt: skip
    # strictly lower: a ratio of exactly 1 is not a win
    for c in checks:
        c["met"] = bool(c["value"] < 1.0)
        c["verdict"] = "MET" if c["met"] else "MISSED"
    print_checks(checks)
    payload = {
        "settings": {
            "data": "digits 3-vs-8 (load_dataset, train split)", "n": len(y), "kernel": KERNEL,
            "stride": STRIDE, "beta": BETA, "loss": "squared", "pooling": "sum",
            "solver": solver, "P0": P0, "rounds": rounds, "per_round": per_round,
            "quick": quick,
        },
        "runs": records,
        "checks": checks,
    }  # fmt: skip
    suffix = ("_quick" if quick else "") + (f"_n{len(y)}" if limit != 100 and not quick else "")
    write_json(f"growth_vs_random_{solver}{suffix}", payload)
    return payload


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (small, one seed)")
    parser.add_argument("--solver", default=None, help="solver for both arms (default: al/exact)")
    parser.add_argument("--limit", type=int, default=None, help="training images (0: all)")
    args = parser.parse_args()
    run(quick=args.quick, solver=args.solver, limit=args.limit)
