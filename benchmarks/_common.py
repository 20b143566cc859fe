"""Shared plumbing of the benchmarks: data set-up, problem construction, timing, tables, JSON.

Every benchmark module exposes ``run(quick: bool = False) -> dict`` returning a JSON-able payload
with a ``"checks"`` list (one :func:`check` per target) and prints its own tables. Timings are
medians over repeats (the reference machine has 2 cores shared with other jobs: noisy).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a fresh clone without installing
    sys.path.insert(0, str(ROOT / "src"))

from convexcnn.data import load_dataset  # noqa: E402
from convexcnn.losses import get_loss  # noqa: E402
from convexcnn.patches import PatchSpec, as_signal_batch, extract_patches  # noqa: E402
from convexcnn.patterns import PatternSet  # noqa: E402
from convexcnn.problems.two_layer import TwoLayerReLU  # noqa: E402

RESULTS_DIR = ROOT / "benchmarks" / "results"


def set_threads(count: int | None = None) -> int:
    """Use ``count`` CPU threads everywhere (torch intra-op and the BLAS under numpy/scipy).

    Default: ``$BENCH_THREADS`` or 1. One thread is the default because the reference machine has
    2 cores shared with other jobs: an oversubscribed 2-thread torch runs 10-300x slower in
    bursts, which would make every timing meaningless. Every side of a comparison runs under the
    same setting (Clarabel is single-threaded anyway). On a quiet machine try BENCH_THREADS=2.
    """
    if count is None:
        count = int(os.environ.get("BENCH_THREADS", "1"))
    if count < 1:
        raise ValueError(f"BENCH_THREADS must be ≥ 1; got {count}")
    torch.set_num_threads(count)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(count)
    except ImportError:  # threadpoolctl comes with scikit-learn; without it BLAS keeps its own
        pass
    return count


THREADS = set_threads()


# ----- data and problems ------------------------------------------------------------------
def digits_38(limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits 3-vs-8 training split as (n, 1, 8, 8) float64 images and (n, 1) ±1 targets;
    ``limit`` keeps the first ``limit`` training images."""
    data = load_dataset("digits", classes=(3, 8))
    X = torch.as_tensor(data.X_train, dtype=torch.float64)
    y = torch.as_tensor(data.y_train, dtype=torch.float64)[:, None]
    if limit is not None:
        X, y = X[:limit], y[:limit]
    return X, y


def digits_all(limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All ten digits' training split (n ≤ 1257), targets ±1 by parity (odd → +1), (n, 1)."""
    data = load_dataset("digits")
    X = torch.as_tensor(data.X_train, dtype=torch.float64)
    labels = torch.as_tensor(data.y_train)
    y = torch.where(labels % 2 == 1, 1.0, -1.0).to(torch.float64)[:, None]
    if limit is not None:
        X, y = X[:limit], y[:limit]
    return X, y


def patches(X: torch.Tensor, kernel: int, padding: int = 0) -> tuple[torch.Tensor, Any]:
    """(n, K, h) patches of images X and the resolved geometry."""
    batch, resolved = as_signal_batch(X, PatchSpec(kernel, padding=padding))
    return extract_patches(batch, resolved), resolved


def two_layer_problem(
    X: torch.Tensor,
    y: torch.Tensor,
    patterns: PatternSet,
    *,
    beta: float,
    kernel: int,
    gated: bool = False,
    dtype: torch.dtype = torch.float64,
) -> TwoLayerReLU:
    """A fresh SPEC §3 program (squared loss, sum pooling) on a given PatternSet; nothing is
    cached between calls, so each timed solve pays for its own operator set-up."""
    X = X.to(dtype)
    P, resolved = patches(X, kernel)
    return TwoLayerReLU(
        P,
        patterns,
        y.to(dtype),
        beta,
        get_loss("squared"),
        pooling="sum",
        spec=resolved,
        in_channels=X.shape[1],
        inputs=X,
        gated=gated,
    )


def solver(name: str, **options: Any) -> Any:
    """A registered solver by name (``convexcnn.solvers.SOLVERS``)."""
    from convexcnn.solvers import SOLVERS, get_solver

    if name not in SOLVERS:
        raise RuntimeError(
            f"solver {name!r} is not registered in convexcnn.solvers.SOLVERS "
            f"(have {sorted(SOLVERS)}); this benchmark needs it"
        )
    return get_solver(name, **options)


def time_to_target(history: Any, target: float, *, max_violation: float = math.inf) -> float:
    """First history time whose objective is ≤ target with violation ≤ ``max_violation``
    (NaN if never)."""
    for obj, viol, t in zip(history.objective, history.violation, history.time, strict=True):
        if obj <= target and viol <= max_violation:
            return float(t)
    return math.nan


# ----- timing ------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of one call."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def median(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(statistics.median(finite)) if finite else math.nan


def machine() -> dict[str, Any]:
    """Where the numbers came from (load average: other jobs share the cores)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "bench_threads": THREADS,
        "loadavg_1_5_15": [round(v, 2) for v in load],
    }


# ----- reporting ---------------------------------------------------------------------------
def check(
    name: str, value: float, target: float, *, direction: str, unit: str = "", note: str = ""
) -> dict[str, Any]:
    """One target: ``direction`` ">=" (value must reach target) or "<=" (stay below)."""
    if direction not in (">=", "<="):
        raise ValueError(f"direction must be '>=' or '<='; got {direction!r}")
    if not math.isfinite(value):
        met = False
    else:
        met = value >= target if direction == ">=" else value <= target
    return {
        "name": name,
        "value": value,
        "target": target,
        "direction": direction,
        "unit": unit,
        "met": bool(met),
        "verdict": "MET" if met else "MISSED",
        "note": note,
    }


def skipped(name: str, reason: str) -> dict[str, Any]:
    return {
        "name": name,
        "value": math.nan,
        "target": math.nan,
        "direction": "",
        "unit": "",
        "met": False,
        "verdict": "SKIPPED",
        "note": reason,
    }


def fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """A plain fixed-width table (also returned, for the caller to keep)."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def print_checks(checks: Sequence[dict[str, Any]]) -> None:
    rows = []
    for c in checks:
        value = fmt(c["value"]) + (
            f" {c['unit']}" if c["unit"] and c["verdict"] != "SKIPPED" else ""
        )
        target = f"{c['direction']} {fmt(c['target'])}" if c["direction"] else "-"
        rows.append([c["name"], value, target, c["verdict"], c["note"]])
    table(["target", "measured", "wanted", "verdict", "note"], rows)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    return value


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """benchmarks/results/<name>.json (NaN → null)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    body = {"benchmark": name, "machine": machine(), **payload}
    path.write_text(json.dumps(_jsonable(body), indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}", flush=True)
    return path


def parse_quick(argv: Sequence[str] | None = None) -> bool:
    """``--quick``: a smoke run (smaller sizes, fewer repeats); numbers are not the targets'."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smoke run (small, few repeats)")
    return bool(parser.parse_args(argv).quick)
