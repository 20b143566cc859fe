"""Architecture registry: maps ``fit(architecture=...)`` to a problem builder.

Each architecture module exposes ``build(context, options) -> ConvexProblem``; register it in
``ARCHITECTURES`` with its allowed poolings and the extra keyword options ``fit`` accepts for it
(``fit(..., **architecture_options)``). Unknown options are refused with a clear error.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..losses import Loss
from ..patches import PatchSpec, ResolvedSpec
from .base import ConvexProblem

__all__ = ["ARCHITECTURES", "ArchitectureEntry", "FitContext", "build_problem"]


@dataclass
class FitContext:
    """Everything :func:`convexcnn.fit` has validated, handed to a problem builder.

    Shapes: batch (n, C, *spatial); patches (n, K, h); targets (n, c).
    """

    batch: torch.Tensor
    spec: PatchSpec
    resolved: ResolvedSpec
    patches: torch.Tensor
    targets: torch.Tensor
    beta: float
    loss: Loss
    pooling: str
    patterns: Any  # None | int | PatternSet (or an architecture's own pattern container)
    pattern_kind: str
    seed: int
    dtype: torch.dtype


@dataclass(frozen=True)
class ArchitectureEntry:
    builder: str  # "module:function", imported on first use
    poolings: tuple[str, ...]
    options: tuple[str, ...] = ()
    description: str = ""

    def load(self) -> Callable[[FitContext, dict[str, Any]], ConvexProblem]:
        module_name, func = self.builder.split(":")
        module = importlib.import_module(module_name, package=__package__)
        return getattr(module, func)  # type: ignore[no-any-return,unused-ignore]


ARCHITECTURES: dict[str, ArchitectureEntry] = {
    "three_layer": ArchitectureEntry(
        ".three_layer:build",
        ("sum", "avg"),
        ("branch_width", "regularization", "prune"),
        "Conv(m·m1) → ReLU → sum/avg pool → block-diagonal Linear(m·m1 → m) → ReLU → Linear "
        "(§8); patterns = random branches to sample, 'enumerate' or a TupleSet",
    ),
    "two_layer": ArchitectureEntry(
        ".two_layer:build",
        ("sum", "avg", "max"),
        ("gated", "pool_size", "pool_stride"),
        "Conv → ReLU → global sum/avg (§3; gated=True: §5) or max (§4) pool → Linear; "
        "pool_size/pool_stride: local windows + a sum over windows",
    ),
    "linear": ArchitectureEntry(
        ".linear:build_linear",
        ("sum", "flatten"),
        (),
        "Conv (no ReLU) → sum pool (ℓ2 norm) or flatten (nuclear norm) → Linear (§6)",
    ),
    "linear_circular": ArchitectureEntry(
        ".linear:build_linear_circular",
        ("none",),
        (),
        "full-size circular Conv (no ReLU) → flatten → Linear: spectral ℓ1 (§6); "
        "ignores kernel_size",
    ),
    "circular": ArchitectureEntry(
        ".circular:build",
        ("none",),
        ("depth", "inner_norm", "polish_epochs", "polish_lr", "polish_seed"),
        "L − 2 full-size circular Convs → Linear → ReLU → Linear: spectral ℓ1 (§7); "
        "inner_norm='schatten' exact, 'l2' a lower bound; ignores kernel_size",
    ),
}


def build_problem(architecture: str, context: FitContext, options: dict[str, Any]) -> ConvexProblem:
    """Validate architecture, pooling and options; build the convex problem."""
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"architecture must be one of {sorted(ARCHITECTURES)}; got {architecture!r}"
        )
    entry = ARCHITECTURES[architecture]
    if context.pooling not in entry.poolings:
        raise ValueError(
            f"pooling must be one of {list(entry.poolings)} for architecture="
            f"{architecture!r}; got {context.pooling!r}"
        )
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        allowed = ", ".join(entry.options) or "none"
        raise ValueError(
            f"unknown option(s) {unknown} for architecture={architecture!r} (allowed: {allowed})"
        )
    return entry.load()(context, options)
