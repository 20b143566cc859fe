"""The ``convexcnn`` command: ``fit`` (convex training + SGD/Adam comparison), ``certify``,
``architectures``."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import torch

__all__ = ["main"]


def _parse_value(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _parse_options(items: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--option expects KEY=VALUE; got {item!r}")
        key, value = item.split("=", 1)
        options[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return options


def _int_tuple(text: str) -> int | tuple[int, ...]:
    parts = [int(p) for p in text.split(",") if p.strip()]
    return parts[0] if len(parts) == 1 else tuple(parts)


def _accuracy(outputs: torch.Tensor, y: Any, kind: str) -> float | None:
    """Accuracy of raw network outputs: sign for binary, argmax for (n, c) multi-class."""
    target = torch.as_tensor(y)
    if kind == "binary":
        return float((torch.where(outputs >= 0, 1, -1) == target.sign()).double().mean())
    if kind == "multiclass":
        return float((outputs.argmax(dim=1) == target.long()).double().mean())
    return None


def _format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "—"
        if isinstance(value, float):
            return f"{value:.6g}"
        return str(value)

    header = [title for _, title in columns]
    body = [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convexcnn",
        description="Train CNNs to global optimality by solving their exact convex programs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser(
        "fit",
        help="fit a CNN by its convex program and compare with SGD/Adam",
        description=(
            "Fit a CNN by its exact convex program on a data set, recover the torch network, "
            "train the same network by Adam from several seeds, print one comparison table "
            "and save the network under --out."
        ),
    )
    fit.add_argument("--data", default="digits", help="'digits', an .npz file, or idx file/dir")
    fit.add_argument("--classes", default="3,8", help="comma-separated labels ('all' = every)")
    fit.add_argument("--train-size", type=int, default=None, help="cap on training images")
    fit.add_argument("--test-size", type=float, default=0.3, help="test fraction (no test set)")
    fit.add_argument("--architecture", default="two_layer")
    fit.add_argument("--pooling", default=None, help="default: the architecture's first")
    fit.add_argument("--kernel-size", type=_int_tuple, default=3)
    fit.add_argument("--stride", type=_int_tuple, default=1)
    fit.add_argument("--padding", type=_int_tuple, default=0)
    fit.add_argument("--beta", type=float, default=1e-3, help="weight decay β > 0")
    fit.add_argument("--loss", default="squared")
    fit.add_argument("--patterns", type=int, default=100, help="generator filters to sample")
    fit.add_argument("--solver", default="exact")
    fit.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    fit.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture option, e.g. --option gated=true (repeatable)",
    )
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--baseline-seeds", type=int, default=5, help="Adam runs (0 = none)")
    fit.add_argument("--baseline-epochs", type=int, default=2000)
    fit.add_argument("--baseline-lr", type=float, default=1e-2)
    fit.add_argument("--baseline-optimizer", choices=("adam", "sgd"), default="adam")
    fit.add_argument("--out", default=None, help="output directory (default runs/<timestamp>)")

    certify = sub.add_parser(
        "certify", help="recompute the optimality certificate of a saved network on data"
    )
    certify.add_argument("model", help="directory written by `convexcnn fit`")
    certify.add_argument("--data", default=None, help="data set (default: the one it was fit on)")
    certify.add_argument("--classes", default=None)
    certify.add_argument("--train-size", type=int, default=None)
    certify.add_argument("--starts", type=int, default=200, help="violating-filter search starts")

    sub.add_parser("architectures", help="list architectures and their implicit regularizers")
    return parser


def _load(args: argparse.Namespace) -> Any:
    from .data import load_dataset

    classes = (
        None
        if args.classes in (None, "all")
        else [_parse_value(c) for c in str(args.classes).split(",")]
    )
    return load_dataset(
        args.data,
        classes=classes,
        test_size=getattr(args, "test_size", 0.3),
        seed=0,
        limit=args.train_size,
    )


def _run_fit(args: argparse.Namespace) -> int:
    from .fit import fit
    from .io import atomic_write_text, save_network, to_jsonable
    from .networks import train_network

    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    dataset = _load(args)
    options = _parse_options(args.option)
    print(
        f"data: {dataset.name}  classes {dataset.classes}  train {len(dataset.X_train)}  "
        f"test {len(dataset.X_test)}  image shape {tuple(dataset.X_train.shape[1:])}",
        flush=True,
    )
    print(
        f"convex fit: architecture={args.architecture} pooling={args.pooling} "
        f"kernel={args.kernel_size} β={args.beta} loss={args.loss} solver={args.solver} "
        f"patterns={args.patterns} …",
        flush=True,
    )
    y_train = dataset.y_train
    task = "auto"
    if dataset.task == "binary":
        task = "binary"
    elif dataset.task == "multiclass":
        if args.loss == "cross_entropy":
            task = "multiclass"
        else:  # one-hot targets, one output per class
            y_train = torch.nn.functional.one_hot(torch.as_tensor(y_train).long()).double()
            task = "regression"
    start = time.perf_counter()
    result = fit(
        dataset.X_train,
        y_train,
        task=task,
        architecture=args.architecture,
        pooling=args.pooling,
        kernel_size=args.kernel_size,
        stride=args.stride,
        padding=args.padding,
        beta=args.beta,
        loss=args.loss,
        patterns=args.patterns,
        solver=args.solver,
        seed=args.seed,
        dtype=dtype,
        **options,
    )
    fit_time = time.perf_counter() - start
    rows: list[dict[str, Any]] = [
        {
            "method": "convex program",
            "objective": result.objective,
            "train_acc": _accuracy(
                result.decision_function(dataset.X_train), dataset.y_train, dataset.task
            ),
            "test_acc": _accuracy(
                result.decision_function(dataset.X_test), dataset.y_test, dataset.task
            ),
            "time": fit_time,
            "width": result.n_filters,
        },
        {
            "method": "  recovered network",
            "objective": result.network_objective,
            "train_acc": None,
            "test_acc": None,
            "time": None,
            "width": result.n_filters,
        },
    ]
    baselines = []
    if args.baseline_seeds > 0:
        network = result.network
        if not hasattr(network, "config") or not hasattr(network, "weight_penalty"):
            print(f"(no SGD/Adam baseline for {type(network).__name__})")
        else:
            inputs = _forward(network, result, dataset.X_train, batch_only=True)
            for seed in range(args.baseline_seeds):
                torch.manual_seed(seed)  # seeded default (Kaiming-uniform) initialization
                template: Any = network
                net = type(template).from_config(template.config()).to(dtype)
                before_step, project = _constraint_hooks(net)
                if project is not None:
                    with torch.no_grad():
                        project(net)  # start feasible
                run = train_network(
                    net,
                    inputs,
                    result.problem.targets,
                    loss=result.loss,
                    beta=result.beta,
                    optimizer=args.baseline_optimizer,
                    lr=args.baseline_lr,
                    epochs=args.baseline_epochs,
                    seed=seed,
                    project=project,
                    before_step=before_step,
                )
                baselines.append(run)
                print(
                    f"  {args.baseline_optimizer} seed {seed}: objective {run.objective:.6g} "
                    f"({run.times[-1]:.1f} s, width {result.n_filters})",
                    flush=True,
                )
    if baselines:
        best = min(baselines, key=lambda r: r.objective)

        def row(label: str, run: Any) -> dict[str, Any]:
            return {
                "method": label,
                "objective": run.objective,
                "train_acc": _accuracy(
                    _forward(run.network, result, dataset.X_train), dataset.y_train, dataset.task
                ),
                "test_acc": _accuracy(
                    _forward(run.network, result, dataset.X_test), dataset.y_test, dataset.task
                ),
                "time": run.times[-1],
                "width": result.n_filters,
            }

        rows.append(row(f"{args.baseline_optimizer} best of {len(baselines)}", best))
        median_run = sorted(baselines, key=lambda r: r.objective)[len(baselines) // 2]
        rows.append(row(f"{args.baseline_optimizer} median", median_run))
    print()
    print(
        _format_table(
            rows,
            [
                ("method", "method"),
                ("objective", "objective"),
                ("train_acc", "train acc"),
                ("test_acc", "test acc"),
                ("time", "time (s)"),
                ("width", "filters"),
            ],
        )
    )
    certificate = getattr(result, "certificate", None)
    if certificate is not None:
        print(f"\ncertificate: {certificate}")
    if baselines:
        best_obj = min(r.objective for r in baselines)
        verdict = "≤" if result.network_objective <= best_obj else ">"
        print(
            f"\nrecovered network objective {result.network_objective:.6g} {verdict} best "
            f"{args.baseline_optimizer} objective {best_obj:.6g} "
            f"(median {statistics.median(r.objective for r in baselines):.6g})"
        )
    out = Path(args.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    summary = {
        **result.summary(),
        "data": dataset.name,
        "classes": list(dataset.classes),
        "train_size": len(dataset.X_train),
        "fit_args": {k: v for k, v in vars(args).items() if k != "func"},
        "baselines": [
            {"seed": r.seed, "objective": r.objective, "time": r.times[-1]} for r in baselines
        ],
        "table": rows,
    }
    save_network(out, result.network, to_jsonable(summary))
    atomic_write_text(out / "results.json", json.dumps(to_jsonable(summary), indent=2))
    print(f"\nsaved network and results to {out}/")
    return 0


def _forward(
    network: torch.nn.Module, result: Any, X: Any, *, batch_only: bool = False
) -> torch.Tensor:
    """Network outputs on X (or, with ``batch_only``, X in the network's input layout)."""
    from .data import as_float_tensor
    from .patches import as_signal_batch

    dtype = next(network.parameters()).dtype
    batch, _ = as_signal_batch(as_float_tensor(X, name="X", dtype=dtype), result.spec)
    if batch_only:
        return batch
    with torch.no_grad():
        return network(batch)


Hook = Any


def _constraint_hooks(net: torch.nn.Module) -> tuple[Hook, Hook]:
    """(before_step, project) that keep a constrained network feasible during SGD/Adam."""
    if hasattr(net, "constraint_callbacks"):
        return cast(Any, net).constraint_callbacks()
    if hasattr(net, "project"):
        return None, lambda module: module.project()
    return None, None


def _run_architectures(args: argparse.Namespace) -> int:
    from .problems.registry import ARCHITECTURES

    for name, entry in ARCHITECTURES.items():
        options = ", ".join(entry.options) or "—"
        print(f"{name:16s} pooling {'/'.join(entry.poolings):18s} options: {options}")
        if entry.description:
            print(f"{'':16s} {entry.description}")
    return 0


def _run_certify(args: argparse.Namespace) -> int:
    try:
        from .certificate import certify
    except ImportError:
        raise NotImplementedError("`convexcnn certify` needs convexcnn.certificate") from None
    from .io import load_network

    network, metadata = load_network(args.model)
    if args.data is None:
        args.data = metadata.get("data", "digits")
    if args.classes is None:
        args.classes = ",".join(str(c) for c in metadata.get("classes", [])) or None
    if args.train_size is None:
        args.train_size = metadata.get("train_size")
    dataset = _load(args)
    certificate = certify(
        network,
        dataset.X_train,
        dataset.y_train,
        beta=metadata["beta"],
        loss=metadata["loss"],
        starts=args.starts,
    )
    print(certificate)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``convexcnn`` console script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    handlers = {"fit": _run_fit, "certify": _run_certify, "architectures": _run_architectures}
    try:
        return handlers[args.command](args)
    except (ValueError, FileNotFoundError, NotImplementedError) as err:
        print(f"convexcnn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
