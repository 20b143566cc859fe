"""P4: forward + adjoint GFLOP/s of the two-layer operator vs torch's own matmul, one process.

Operator: :class:`convexcnn.operators.TwoLayerOperators` (what ``TwoLayerReLU.predict`` /
``predict_adjoint`` call), scalar output (c = 1).

* Precomputed path (A_i stored, the default when it fits in memory): forward
  ``F = Σ_i A_i v_i`` and adjoint ``g_i = A_iᵀ r`` each count **2·n·h·P flops** (SPEC §3).
* From-patches path (A_i recomputed from patches and masks every pass, used when A does not
  fit): each map counts 2·n·K·h·P flops; reported for information.

References, measured in the same process with the same threads and dtype:

* ``torch same-shape``: ``torch.mv`` on a dense (P·h × n) matrix and its transpose — the plain
  torch computation with exactly our flop count (a matrix–vector product: memory-bound).
* ``torch GEMM peak``: a square ``torch.mm`` (N = 1024), the best torch's matmul reaches here.

GFLOP/s = flops / median seconds over repeats (forward + adjoint together). Targets: ours ≥ 50 %
of the torch reference. Both ratios are checked: vs same-shape torch (the roofline of this
memory-bound product) and vs GEMM peak (compute roofline; a matrix–vector product cannot get
near it on a CPU — reported honestly).

Run: ``.venv/bin/python benchmarks/throughput.py [--quick]``; writes
benchmarks/results/throughput.json.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from _common import check, digits_38, median, parse_quick, patches, print_checks, table, write_json
from convexcnn.operators import TwoLayerOperators
from convexcnn.patterns import sample_patch_patterns

TARGET = 0.5


def seconds_per_call(fn: Callable[[], Any], *, min_time: float = 0.2, trials: int = 5) -> float:
    """Median over ``trials`` of the mean time per call in a loop of ≥ ``min_time`` seconds."""
    fn()  # warm-up
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - start >= min_time / 4 or calls >= 1 << 16:
            break
        calls *= 2
    out = []
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - start) / calls)
    return median(out)


def gemm_peak(dtype: torch.dtype, size: int, trials: int) -> float:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn((size, size), generator=gen, dtype=dtype)
    b = torch.randn((size, size), generator=gen, dtype=dtype)
    t = seconds_per_call(lambda: torch.mm(a, b), trials=trials)
    return 2 * size**3 / t / 1e9


def case(
    name: str, X: torch.Tensor, n_filters: int, dtype: torch.dtype, trials: int, peak: float
) -> dict[str, Any]:
    pts, _ = patches(X.to(dtype), 3)
    n, K, h = pts.shape
    patterns = sample_patch_patterns(pts, n_filters, seed=0)
    P = len(patterns)
    gen = torch.Generator().manual_seed(2)
    V = torch.randn((1, P, h), generator=gen, dtype=dtype)
    R = torch.randn((n, 1), generator=gen, dtype=dtype)
    out: dict[str, Any] = {
        "case": name,
        "dtype": str(dtype).replace("torch.", ""),
        "n": n,
        "K": K,
        "h": h,
        "P": P,
    }
    # precomputed path
    ops = TwoLayerOperators(pts, patterns.masks, n_outputs=1, precompute=True)
    flops = 2 * n * h * P
    t_f = seconds_per_call(lambda: ops.predict(V), trials=trials)
    t_a = seconds_per_call(lambda: ops.predict_adjoint(R), trials=trials)
    ours = 2 * flops / (t_f + t_a) / 1e9
    # same-shape torch reference: dense (P·h × n) matrix-vector products
    A = ops.masked_patches().transpose(1, 2).reshape(P * h, n).contiguous()
    v, r = V.reshape(-1), R.reshape(-1)
    t_rf = seconds_per_call(lambda: torch.mv(A.T, v), trials=trials)
    t_ra = seconds_per_call(lambda: torch.mv(A, r), trials=trials)
    ref = 2 * flops / (t_rf + t_ra) / 1e9
    # from-patches path
    ops2 = TwoLayerOperators(pts, patterns.masks, n_outputs=1, precompute=False)
    flops2 = 2 * n * K * h * P
    t_f2 = seconds_per_call(lambda: ops2.predict(V), trials=trials)
    t_a2 = seconds_per_call(lambda: ops2.predict_adjoint(R), trials=trials)
    ours2 = 2 * flops2 / (t_f2 + t_a2) / 1e9
    out.update(
        precomputed_gflops=ours,
        forward_seconds=t_f,
        adjoint_seconds=t_a,
        torch_same_shape_gflops=ref,
        torch_gemm_peak_gflops=peak,
        ratio_vs_same_shape=ours / ref,
        ratio_vs_peak=ours / peak,
        from_patches_gflops=ours2,
        from_patches_forward_seconds=t_f2,
        from_patches_adjoint_seconds=t_a2,
        from_patches_ratio_vs_peak=ours2 / peak,
    )
    return out


def run(quick: bool = False) -> dict[str, Any]:
    trials = 3 if quick else 7
    X38, _ = digits_38(60 if quick else None)
    cases = [("digits 3-vs-8", X38, 100 if quick else 1000)]
    if not quick:
        from _common import digits_all

        Xall, _ = digits_all()
        cases.append(("all digits", Xall, 1000))
    results = []
    for dtype in (torch.float64, torch.float32):
        peak = gemm_peak(dtype, 512 if quick else 1024, trials)
        for name, X, m in cases:
            res = case(name, X, m, dtype, trials, peak)
            results.append(res)
            print(
                f"  {name} {res['dtype']}: ours {res['precomputed_gflops']:.2f} GFLOP/s, "
                f"torch mv {res['torch_same_shape_gflops']:.2f}, GEMM {peak:.2f}",
                flush=True,
            )
    table(
        [
            "case",
            "dtype",
            "n",
            "P",
            "ours GF/s",
            "torch mv GF/s",
            "GEMM GF/s",
            "ours/mv",
            "ours/GEMM",
            "from-patches GF/s",
        ],
        [
            [
                r["case"],
                r["dtype"],
                r["n"],
                r["P"],
                r["precomputed_gflops"],
                r["torch_same_shape_gflops"],
                r["torch_gemm_peak_gflops"],
                r["ratio_vs_same_shape"],
                r["ratio_vs_peak"],
                r["from_patches_gflops"],
            ]
            for r in results
        ],
        title="P4: forward+adjoint throughput (precomputed A: 2nhP flops per map)",
    )
    worst_mv = min(results, key=lambda r: r["ratio_vs_same_shape"])
    worst_peak = min(results, key=lambda r: r["ratio_vs_peak"])
    checks = [
        check(
            "P4 ours / torch same-shape matmul (worst case)",
            worst_mv["ratio_vs_same_shape"],
            TARGET,
            direction=">=",
            note=f"{worst_mv['case']} {worst_mv['dtype']}",
        ),
        check(
            "P4 ours / torch GEMM peak (worst case)",
            worst_peak["ratio_vs_peak"],
            TARGET,
            direction=">=",
            note=f"{worst_peak['case']} {worst_peak['dtype']}; "
            "matrix-vector products are memory-bound",
        ),
    ]
    print_checks(checks)
    payload: dict[str, Any] = {
        "setup": {
            "trials": trials,
            "quick": quick,
            "path": "precomputed A_i (P, h, n)",
            "flops_per_map": "2*n*h*P",
        },
        "results": results,
        "checks": checks,
    }
    write_json("throughput", payload)
    return payload


if __name__ == "__main__":
    run(parse_quick())
