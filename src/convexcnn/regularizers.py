"""Which convex regularizer an architecture implies (the paper's point; SPEC §3–§8).

:func:`implicit_regularizer` returns an :class:`ImplicitRegularizer`: the regularizer's name and
formula, the pattern set it is taken over, whether the convex program is *exact* (equal to
training the network) or only a *lower bound*, the program itself and how the network is
recovered. It is a description; the programs live in :mod:`convexcnn.problems`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ImplicitRegularizer", "implicit_regularizer", "known_regularizers"]


@dataclass(frozen=True)
class ImplicitRegularizer:
    """The implicit convex regularizer of one architecture.

    Attributes:
        architecture, pooling: as passed to :func:`convexcnn.fit`.
        name: short name ("group ℓ2", "nuclear norm", "spectral ℓ1", ...).
        formula: the regularizer term of the convex program.
        pattern_set: what the program's blocks range over.
        exact: True when the convex optimum equals the network's training optimum (given all
            patterns); False when the program is only a lower bound.
        program: the convex program, one line.
        recovery: how a solution becomes the torch network.
        section: the SPEC section.
    """

    architecture: str
    pooling: str
    name: str
    formula: str
    pattern_set: str
    exact: bool
    program: str
    recovery: str
    section: str

    def __str__(self) -> str:
        kind = "exact" if self.exact else "lower bound only"
        return (
            f"{self.architecture} ({self.pooling}): {self.name} — {self.formula} "
            f"[{kind}; over {self.pattern_set}; SPEC {self.section}]"
        )


_DEFAULT_POOLING = {
    "two_layer": "sum",
    "linear": "sum",
    "linear_circular": "none",
    "circular": "none",
    "three_layer": "sum",
}

_ALLOWED_OPTIONS = {
    "two_layer": {"gated", "pool_size", "pool_stride"},
    "linear": set(),
    "linear_circular": set(),
    "circular": {"depth", "inner_norm"},
    "three_layer": {"regularization"},
}

_JOINT = "joint patch patterns 1[X_k g ≥ 0] over every (sample, patch) pair"
_GROUP = "β Σ_i (‖c_i‖₂ + ‖c'_i‖₂)"


def _power_of_d(exponent_twice: int) -> str:
    """'√d', 'd', 'd^{3/2}', 'd^2', … for d^{exponent_twice/2}."""
    if exponent_twice == 1:
        return "√d"
    if exponent_twice % 2 == 0:
        k = exponent_twice // 2
        return "d" if k == 1 else f"d^{k}"
    return f"d^{{{exponent_twice}/2}}"


def _two_layer(pooling: str, options: dict[str, Any]) -> ImplicitRegularizer:
    gated = bool(options.get("gated", False))
    local = options.get("pool_size") is not None
    windows = " per pooling window, then summed over windows" if local else ""
    if pooling == "max":
        if gated:
            raise ValueError("gated=True is defined for sum/avg pooling only (SPEC §5)")
        return ImplicitRegularizer(
            "two_layer",
            pooling,
            "group ℓ2 (argmax cones)",
            _GROUP,
            "(winning patch, active) patterns a(g) ∈ {0,…,K}^n" + windows,
            True,
            "min ℓ(Σ_i B_i (c_i − c'_i); y) + " + _GROUP + " s.t. winner ≥ 0 and ≥ every patch "
            "of active samples, every patch ≤ 0 on inactive samples",
            "block c → filter c/√‖c‖, output ±√‖c‖: Conv → ReLU → max pool → Linear",
            "§4",
        )
    scale = " (avg: X_k/K)" if pooling == "avg" else ""
    if gated:
        return ImplicitRegularizer(
            "two_layer",
            pooling,
            "group ℓ2 (group lasso, no cones)",
            _GROUP,
            _JOINT + scale + windows,
            True,
            "min ℓ(Σ_i A_i (c_i − c'_i); y) + " + _GROUP + ", A_i = Σ_k D_i^k X_k "
            "(exact for the gated network; a lower bound for the ReLU network)",
            "gated network exactly; a ReLU network only approximately (cone decomposition)",
            "§5",
        )
    return ImplicitRegularizer(
        "two_layer",
        pooling,
        "group ℓ2 (cone-constrained group lasso)",
        _GROUP,
        _JOINT + scale + windows,
        True,
        "min ℓ(Σ_i A_i (c_i − c'_i); y) + " + _GROUP + " s.t. G_i c_i ≥ 0, G_i c'_i ≥ 0",
        f"block c → filter c/√‖c‖, output ±√‖c‖: Conv → ReLU → {pooling} pool → Linear",
        "§3",
    )


def _linear(pooling: str, options: dict[str, Any]) -> ImplicitRegularizer:
    if pooling == "sum":
        return ImplicitRegularizer(
            "linear",
            "sum",
            "ℓ2 norm",
            "β ‖z‖₂",
            "no patterns (linear network)",
            True,
            "min ℓ(X̄ z; y) + β ‖z‖₂, X̄ = Σ_k X_k",
            "one filter z/√‖z‖, output weight √‖z‖: Conv → sum pool → Linear",
            "§6",
        )
    return ImplicitRegularizer(
        "linear",
        "flatten",
        "nuclear norm",
        "β ‖Z‖_*",
        "no patterns (linear network)",
        True,
        "min ℓ(Σ_k X_k Z[:, k]; y) + β ‖Z‖_*, Z ∈ R^{h×K}",
        "SVD Z = Σ σ_i a_i b_iᵀ → filters √σ_i a_i, output weights √σ_i b_i: "
        "Conv → flatten → Linear",
        "§6",
    )


def _linear_circular(pooling: str, options: dict[str, Any]) -> ImplicitRegularizer:
    return ImplicitRegularizer(
        "linear_circular",
        "none",
        "spectral ℓ1",
        "(β/√d) ‖F z‖₁",
        "no patterns (linear network)",
        True,
        "min ℓ(X z; y) + (β/√d) ‖F z‖₁ (F unitary DFT; images: 2-D DFT, d = H·W)",
        "z = u ⊛ w with |F u|² ∝ |F z|, ‖u‖ = ‖w‖: circular Conv → flatten → Linear",
        "§6",
    )


def _circular(pooling: str, options: dict[str, Any]) -> ImplicitRegularizer:
    depth = options.get("depth", 3)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 3:
        raise ValueError(f"depth must be an integer ≥ 3; got {depth!r}")
    inner_norm = options.get("inner_norm", "schatten")
    if inner_norm not in ("schatten", "l2"):
        raise ValueError(f"inner_norm must be 'schatten' or 'l2'; got {inner_norm!r}")
    weight = f"β/{_power_of_d(depth - 2)}"
    patterns = "patterns of X itself, D_i = diag(1[X g ≥ 0]) (X flattened, n × d)"
    cones = " s.t. (2D_i − I) X c_i ≥ 0, (2D_i − I) X c'_i ≥ 0"
    fit_part = "min ℓ(Σ_i D_i X (c_i − c'_i); y) + "
    dft = " (F unitary DFT; images: 2-D DFT, d = H·W)"
    if depth == 3 or inner_norm == "schatten":
        formula = f"({weight}) Σ_i (‖F c_i‖₁ + ‖F c'_i‖₁)"
        bound = "‖u‖₂ ≤ 1" if depth == 3 else f"‖F u_l‖_{2 * (depth - 2)} ≤ 1 (Schatten)"
        return ImplicitRegularizer(
            "circular",
            "none",
            "spectral ℓ1",
            formula,
            patterns,
            True,
            fit_part + formula + cones + dft + f"; inner filters {bound}",
            "block c: ĉ = F c split across the L − 1 factors in closed form (real filters), "
            "w1 = w̃/√R, w2 = ±√R: circular Convs → Linear → ReLU → Linear",
            "§7",
        )
    pair = 2.0 ** ((depth - 3) / 2)
    formula = (
        f"({weight}) Σ_i Σ_k ω_k (|F c_i|_k + |F c'_i|_k), ω = 1 on self-conjugate "
        f"frequencies, {pair:.4g} (= 2^{{(L−3)/2}}) on conjugate pairs"
    )
    return ImplicitRegularizer(
        "circular",
        "none",
        "weighted spectral ℓ1 (convex envelope of a quasi-norm)",
        formula,
        patterns,
        False,
        fit_part + formula + cones + dft + "; inner filters ‖u_l‖₂ ≤ 1: a lower bound, the "
        f"true cost is ‖F z‖_{{2/{depth - 1}}}/{_power_of_d(depth - 2)}",
        "|ẑ| split evenly across the L − 1 factors, then projected-Adam polishing; "
        "bound, network objective and gap reported",
        "§7",
    )


def _three_layer(pooling: str, options: dict[str, Any]) -> ImplicitRegularizer:
    reg = options.get("regularization", "path")
    if reg not in ("path", "unit"):
        raise ValueError(f"regularization must be 'path' or 'unit'; got {reg!r}")
    rho = "Σ_l ‖c_l‖₂" if reg == "path" else "(Σ_l ‖c_l‖₂²)^{1/2}"
    return ImplicitRegularizer(
        "three_layer",
        pooling,
        "group ℓ1 of ℓ2 (path)" if reg == "path" else "group ℓ2 (unit)",
        f"β Σ_τ (ρ(c_τ) + ρ(c'_τ)), ρ(c) = {rho}",
        "tuples τ = (signs s, one joint patch pattern per filter, second-layer pattern δ)",
        True,
        "min ℓ(Σ_τ diag(δ_τ) B_τ (c_τ − c'_τ); y) + β Σ_τ (ρ(c_τ) + ρ(c'_τ)) s.t. c ∈ 𝒞_τ "
        "(exact for every branch width ≥ the number of nonzero blocks)",
        "block of tuple (s, i, δ) → one branch of m1 filters (closed form per regularization)",
        "§8",
    )


_BUILDERS = {
    "two_layer": (_two_layer, ("sum", "avg", "max")),
    "linear": (_linear, ("sum", "flatten")),
    "linear_circular": (_linear_circular, ("none",)),
    "circular": (_circular, ("none",)),
    "three_layer": (_three_layer, ("sum", "avg")),
}


def known_regularizers() -> dict[str, tuple[str, ...]]:
    """Architecture → poolings that :func:`implicit_regularizer` describes."""
    return {name: poolings for name, (_, poolings) in _BUILDERS.items()}


def implicit_regularizer(
    architecture: str, pooling: str | None = None, **options: Any
) -> ImplicitRegularizer:
    """The convex regularizer that ``architecture`` (with ``pooling`` and options such as
    ``gated``, ``depth``, ``inner_norm``, ``regularization``) implies.

    Example: ``implicit_regularizer("circular", depth=4, inner_norm="l2")`` is the weighted
    spectral ℓ1 with weight β/d, a lower bound (``exact=False``).
    """
    if architecture not in _BUILDERS:
        raise ValueError(f"architecture must be one of {sorted(_BUILDERS)}; got {architecture!r}")
    builder, poolings = _BUILDERS[architecture]
    chosen = _DEFAULT_POOLING[architecture] if pooling is None else pooling
    if chosen not in poolings:
        raise ValueError(
            f"pooling must be one of {list(poolings)} for architecture={architecture!r}; "
            f"got {chosen!r}"
        )
    unknown = sorted(set(options) - _ALLOWED_OPTIONS[architecture])
    if unknown:
        allowed = ", ".join(sorted(_ALLOWED_OPTIONS[architecture])) or "none"
        raise ValueError(
            f"unknown option(s) {unknown} for architecture={architecture!r} (allowed: {allowed})"
        )
    return builder(chosen, options)
