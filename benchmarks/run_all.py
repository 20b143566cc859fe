"""Run every benchmark in sequence (one subprocess each) and print every ratio vs its target.

    .venv/bin/python benchmarks/run_all.py            # full run (``make bench``)
    .venv/bin/python benchmarks/run_all.py --quick    # smoke run: small sizes, numbers not final
    .venv/bin/python benchmarks/run_all.py --only vs_cvxpy throughput
    .venv/bin/python benchmarks/run_all.py --summarize   # re-print the summary of existing results

Each benchmark writes benchmarks/results/<name>.json; this script reads their ``checks`` and
writes benchmarks/results/summary.json. Besides the issue-3 set (P1 vs_cvxpy, P2 vs_sgd,
P3 vs_scnn, P4 throughput, P6 scaling) any other ``benchmarks/<name>.py`` that follows the same
convention (``run(quick)``, ``--quick``, writes results/<name>.json) is run after them.
A benchmark that crashes is reported as FAILED; the others still run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CORE = ["vs_cvxpy", "vs_sgd", "vs_scnn", "throughput", "scaling"]
LABELS = {"vs_cvxpy": "P1", "vs_sgd": "P2", "vs_scnn": "P3", "throughput": "P4", "scaling": "P6"}


def discover() -> list[str]:
    """The issue-3 benchmarks, then any other benchmark script in this folder."""
    extra = sorted(
        p.stem
        for p in HERE.glob("*.py")
        if not p.stem.startswith("_") and p.stem != "run_all" and p.stem not in CORE
    )
    return CORE + extra


def run_one(name: str, quick: bool) -> dict[str, Any]:
    out = RESULTS / f"{name}.json"
    if out.exists():
        out.unlink()  # never report a stale result
    cmd = [sys.executable, str(HERE / f"{name}.py")] + (["--quick"] if quick else [])
    print(f"\n===== {name} ({' '.join(cmd[1:])}) =====", flush=True)
    start = time.perf_counter()
    code = subprocess.call(cmd, cwd=HERE.parent)
    seconds = time.perf_counter() - start
    if code != 0 or not out.exists():
        return {
            "name": name,
            "seconds": seconds,
            "exit_code": code,
            "checks": [],
            "error": f"exit code {code}" + ("" if out.exists() else ", no results file"),
        }
    data = json.loads(out.read_text())
    return {"name": name, "seconds": seconds, "exit_code": code, "checks": data.get("checks", [])}


def collect(name: str) -> dict[str, Any]:
    """The checks of an existing results/<name>.json (``--summarize``)."""
    out = RESULTS / f"{name}.json"
    if not out.exists():
        return {
            "name": name,
            "seconds": 0.0,
            "exit_code": None,
            "checks": [],
            "error": "no results file (not run)",
        }
    return {
        "name": name,
        "seconds": 0.0,
        "exit_code": None,
        "checks": json.loads(out.read_text()).get("checks", []),
    }


def fmt(value: Any) -> str:
    if value is None:
        return "nan"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary(runs: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in runs:
        label = LABELS.get(r["name"], "")
        bench = f"{label} {r['name']}".strip()
        if r.get("error"):
            rows.append([bench, "(benchmark)", "-", "-", "FAILED", r["error"]])
            continue
        for c in r["checks"]:
            wanted = f"{c.get('direction', '')} {fmt(c.get('target'))}".strip()
            rows.append(
                [
                    bench,
                    c["name"],
                    fmt(c.get("value")),
                    wanted or "-",
                    c["verdict"],
                    c.get("note", ""),
                ]
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (small, few repeats)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument(
        "--summarize", action="store_true", help="run nothing: summarize the existing results"
    )
    args = parser.parse_args(argv)
    names = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; choose from {names}")
        names = [n for n in names if n in args.only]
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs = [collect(name) if args.summarize else run_one(name, args.quick) for name in names]
    rows = summary(runs)
    headers = ["benchmark", "target", "measured", "wanted", "verdict", "note"]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    print(
        "\n===== summary"
        + (" (QUICK smoke run: not the targets' sizes)" if args.quick else "")
        + " ====="
    )
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    (RESULTS / "summary.json").write_text(
        json.dumps({"quick": args.quick, "runs": runs}, indent=2) + "\n"
    )
    print(f"wrote {(RESULTS / 'summary.json').relative_to(HERE.parent)}")
    return 1 if any(r.get("error") for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
