"""Circular CNN with one ReLU layer: the spectral-ℓ1 program (SPEC §7).

Data X (n, C·d): the inputs flattened (C channels, d = L or H·W positions); patterns are those
of X itself, ``D_i = diag(1[X g_i ≥ 0])`` (masks (P, n)). Variable W (c, 2, P, C·d) with
``W[j, 0, i] = c_i``, ``W[j, 1, i] = c'_i`` for output j:

    F[:, j] = Σ_i D_i X (W[j,0,i] − W[j,1,i])                          (n, c)
    𝒢(W)[j, s, i] = (2 D_i − I) X W[j, s, i] ≥ 0                       (c, 2, P, n)
    β·ρ(W) = β/d^{(L−2)/2} · Σ_{j,s,i} Σ_k ω_k ‖(F W[j,s,i])[:, k]‖    (unitary DFT F)

F is the unitary DFT over the signal axes (2-D images: ``fft2/√(H·W)``, so the weight is
β/√(H·W) at depth 3, β/(H·W)^{(L−2)/2} in general). Channels are grouped per frequency
(C = 1: plain spectral ℓ1; C > 1 is supported at depth 3 only).

* depth 3 (‖u‖₂ ≤ 1) and depth L ≥ 4 with ``inner_norm="schatten"`` (‖F u_l‖_{2(L−2)} ≤ 1):
  ω ≡ 1 and the program is **exact**; recovery in closed form.
* depth L ≥ 4 with ``inner_norm="l2"`` (‖u_l‖₂ ≤ 1): ω = 1 on self-conjugate frequencies and
  2^{(L−3)/2} on conjugate pairs — the convex envelope of the true (non-convex) cost
  ‖F z‖_{2/(L−1)}/d^{(L−2)/2}. The program is only a **lower bound**: ``recover`` builds the
  network by splitting |ẑ| evenly across the L − 1 factors, polishes it by projected Adam and
  reports bound, network objective and gap (``info["objective_is_lower_bound"] = True``).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from ..losses import Loss
from ..networks import CircularCNN, train_network
from ..patterns import PatternSet, sample_patch_patterns
from ..spectral import SpectralL1, frequency_weights, rfft_multiplicity, spectral_moduli
from .base import ConvexProblem, RecoveredNetwork
from .linear import circular_factor
from .registry import FitContext
from .two_layer import ZERO_BLOCK_RTOL, network_objective

__all__ = ["CircularReLU", "build", "factor_block"]


def factor_block(
    z: torch.Tensor, channels: int, spatial: tuple[int, ...], depth: int, inner_norm: str
) -> tuple[list[torch.Tensor], torch.Tensor, float]:
    """Real factorization of an effective filter z (C·d) into inner filters u_1..u_{L−2} and w̃
    with ``F z = d^{(L−2)/2}·Π_l F u_l ⊙ F w̃`` and each u_l on its unit sphere (SPEC §7).

    Returns ([u_1 (C, *spatial), u_2 (1, *spatial), …], w̃ (*spatial), R = ‖w̃‖): the branch
    costs β·R after splitting w̃ between w1 = w̃/√R and w2 = ±√R.

    * L = 3: :func:`~convexcnn.problems.linear.circular_factor` (R = ρ(z)/√d).
    * L ≥ 4, "schatten": π = |ẑ|/‖ẑ‖₁, F u_l = π^{1/p} (p = 2(L−2)), F w̃ = ẑ/(D π^{1/2}),
      D = d^{(L−2)/2}; R = ‖ẑ‖₁/D.
    * L ≥ 4, "l2": F u_l = a with a_k ∝ |ẑ_k|^{1/(L−1)}, ‖a‖₂ = 1 (the optimal even split),
      F w̃ = ẑ/(D a^{L−2}); R = ‖ẑ‖_{2/(L−1)}/D.
    """
    if depth == 3:
        u, w, R = circular_factor(z, channels, spatial)
        return [u], w, R
    d = math.prod(spatial)
    dims = tuple(range(-len(spatial), 0))
    D = d ** ((depth - 2) / 2)
    zh = torch.fft.rfftn(z.reshape(spatial), dim=dims, norm="ortho")
    mod = zh.abs()
    mult = rfft_multiplicity(spatial, z.dtype)
    if float(mod.max()) == 0.0:
        zeros = torch.zeros((1, *spatial), dtype=z.dtype)
        return [zeros] * (depth - 2), torch.zeros(spatial, dtype=z.dtype), 0.0
    if inner_norm == "schatten":
        p = 2.0 * (depth - 2)
        pi = mod / float((mult * mod).sum())
        a = pi.pow(1.0 / p)
    else:
        q = 1.0 / (depth - 1)
        a = mod.pow(q) / float((mult * mod.pow(2 * q)).sum().sqrt())
    denom = D * a.pow(depth - 2)
    wh = torch.where(mod > 0, zh / denom.clamp_min(1e-300), torch.zeros_like(zh))
    u = torch.fft.irfftn(a.to(zh.dtype), s=spatial, dim=dims, norm="ortho").reshape(1, *spatial)
    w = torch.fft.irfftn(wh, s=spatial, dim=dims, norm="ortho")
    return [u] * (depth - 2), w, float(w.norm())


class CircularReLU(ConvexProblem):
    """SPEC §7 program over a fixed pattern set of X.

    Args:
        inputs: (n, C, *spatial) training inputs (1-D signals or images).
        patterns: a :class:`PatternSet` on X flattened (masks (P, n, 1), filters (P, C·d)).
        targets: (n, c). beta: β > 0. loss: a Loss.
        depth: L ≥ 3. inner_norm: "schatten" (exact) or "l2" (lower bound; L ≥ 4).
        polish_epochs, polish_lr, polish_seed: projected-Adam polishing of the recovered
            network for inner_norm="l2" (ignored by the exact models).
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        patterns: PatternSet,
        targets: torch.Tensor,
        beta: float,
        loss: Loss,
        *,
        depth: int = 3,
        inner_norm: str = "schatten",
        polish_epochs: int = 1000,
        polish_lr: float = 1e-2,
        polish_seed: int = 0,
    ) -> None:
        self.inputs = inputs
        self.n, self.C = int(inputs.shape[0]), int(inputs.shape[1])
        self.spatial = tuple(int(s) for s in inputs.shape[2:])
        self.d = math.prod(self.spatial)
        self.X = inputs.reshape(self.n, -1)
        self.h = int(self.X.shape[1])
        if patterns.masks.shape[1:] != (self.n, 1) or patterns.filter_size != self.h:
            raise ValueError(
                f"patterns must be built on X flattened to (n, C·d) = ({self.n}, {self.h}), "
                "e.g. PatternSet.from_patch_filters(X.reshape(n, 1, -1), filters); got masks "
                f"{tuple(patterns.masks.shape)} and filter size {patterns.filter_size}"
            )
        self.patterns = patterns
        self.masks = patterns.masks[:, :, 0]  # (P, n)
        self.P = len(patterns)
        self.targets = targets
        self.c = int(targets.shape[1])
        self.beta = float(beta)
        self.loss = loss
        self.depth = int(depth)
        self.inner_norm = inner_norm
        self.exact = inner_norm == "schatten" or self.depth == 3
        pair_weight = 1.0 if self.exact else 2.0 ** ((self.depth - 3) / 2)
        self.gauge = SpectralL1(self.C, self.spatial, pair_weight)
        self.D = self.d ** ((self.depth - 2) / 2)
        self.scale = self.beta / self.D
        self.polish_epochs = int(polish_epochs)
        self.polish_lr = float(polish_lr)
        self.polish_seed = int(polish_seed)

    # ----- operators ------------------------------------------------------------------
    @property
    def variable_shape(self) -> tuple[int, ...]:
        return (self.c, 2, self.P, self.h)

    def _m(self) -> torch.Tensor:
        return self.masks.to(self.X.dtype)

    def _signs(self) -> torch.Tensor:
        return self._m() * 2 - 1

    def predict(self, W: torch.Tensor) -> torch.Tensor:
        XV = torch.einsum("th,jph->jpt", self.X, W[:, 0] - W[:, 1])
        return (XV * self._m()).sum(dim=1).T

    def predict_adjoint(self, R: torch.Tensor) -> torch.Tensor:
        g = torch.einsum("pt,tj,th->jph", self._m(), R, self.X)
        return torch.stack([g, -g], dim=1)

    @property
    def has_constraints(self) -> bool:
        return True

    def constraint(self, W: torch.Tensor) -> torch.Tensor:
        return torch.einsum("th,jsph->jspt", self.X, W) * self._signs()

    def constraint_adjoint(self, L: torch.Tensor) -> torch.Tensor:
        return torch.einsum("jspt,pt,th->jsph", L, self._signs(), self.X)

    # ----- regularizer ----------------------------------------------------------------
    def regularizer(self, W: torch.Tensor) -> torch.Tensor:
        return self.scale * self.gauge.value(W)

    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        return self.gauge.prox(W, step * self.scale)

    def dual_norm(self, G: torch.Tensor) -> torch.Tensor:
        return self.gauge.dual(G) * self.D

    def block_dual_norms(self, G: torch.Tensor) -> torch.Tensor:
        """ρ° per block (c, 2, P): D·max_k ‖(F G_b)[:, k]‖/ω_k."""
        blocks = G.reshape(*G.shape[:-1], self.C, *self.spatial)
        mod = spectral_moduli(blocks, self.spatial)
        weights = frequency_weights(self.spatial, self.gauge.pair_weight, G.dtype)
        return (mod / weights).flatten(G.ndim - 1).amax(dim=-1) * self.D

    def block_constraint_matrix(self, index: tuple[int, ...]) -> torch.Tensor:
        """G_b = diag(2d_i − 1)·X (n, C·d) for block (j, s, i): one row per sample."""
        i = int(index[-1])
        return self._signs()[i][:, None] * self.X

    @property
    def patterns_complete(self) -> bool:
        """True when the pattern set holds every pattern of X (``patterns="enumerate"``)."""
        return bool(getattr(self.patterns, "complete", False))

    # ----- recovery -------------------------------------------------------------------
    def recover(self, W: torch.Tensor) -> RecoveredNetwork:
        """Each nonzero block → one branch via :func:`factor_block` (w1 = w̃/√R, w2 = ±√R).

        Exact models: the network's objective equals the convex objective. ``"l2"``: the
        convex value is a lower bound; the recovered network is polished by projected Adam
        (``polish_epochs``) and ``info`` reports bound, objectives and gap.
        """
        norms = self.gauge.per_block(W)  # (c, 2, P)
        cutoff = ZERO_BLOCK_RTOL * float(norms.max()) if norms.numel() else 0.0
        keep = (norms > cutoff).nonzero(as_tuple=False).tolist()
        m = max(1, len(keep))
        net = CircularCNN(
            self.C,
            self.spatial,
            m,
            depth=self.depth,
            inner_norm=self.inner_norm,
            n_outputs=self.c,
        ).to(W.dtype)
        layers = [torch.zeros_like(u) for u in net.inner_filters()]
        for layer in layers:  # unused branches keep a feasible unit filter (w1 = w2 = 0)
            layer.view(m, -1)[:, 0] = 1.0
        w1 = torch.zeros((m, self.d), dtype=W.dtype)
        w2 = torch.zeros((self.c, m), dtype=W.dtype)
        for b, (j, s, i) in enumerate(keep):
            filters, w_tilde, R = factor_block(
                W[j, s, i], self.C, self.spatial, self.depth, self.inner_norm
            )
            for layer, u in zip(layers, filters, strict=True):
                layer[b] = u
            w1[b] = w_tilde.reshape(-1) / math.sqrt(R)
            w2[j, b] = math.sqrt(R) if s == 0 else -math.sqrt(R)
        net.set_weights(layers, w1, w2)
        value = network_objective(net, self.inputs, self.targets, self.loss, self.beta)
        if self.exact:
            return RecoveredNetwork(net, value, len(keep), info={"objective_is_lower_bound": False})
        return self._polish(net, value, W, len(keep))

    def _polish(
        self, net: CircularCNN, recovered: float, W: torch.Tensor, n_branches: int
    ) -> RecoveredNetwork:
        bound = self.objective(W)
        best, best_value = net, recovered
        if self.polish_epochs > 0:
            trial = copy.deepcopy(net)
            before, project = trial.constraint_callbacks()
            run = train_network(
                trial,
                self.inputs,
                self.targets,
                loss=self.loss,
                beta=self.beta,
                optimizer="adam",
                lr=self.polish_lr,
                epochs=self.polish_epochs,
                seed=self.polish_seed,
                project=project,
                before_step=before,
            )
            polished = network_objective(trial, self.inputs, self.targets, self.loss, self.beta)
            if math.isfinite(polished) and polished < best_value:
                best, best_value = trial, polished
            del run
        info = {
            "objective_is_lower_bound": True,
            "lower_bound": bound,
            "recovered_objective": recovered,
            "network_objective": best_value,
            "gap": best_value - bound,
            "relative_gap": (best_value - bound) / max(abs(best_value), 1e-300),
            "polish_epochs": self.polish_epochs,
        }
        return RecoveredNetwork(best, best_value, n_branches, info=info)

    # ----- exact-solver hooks --------------------------------------------------------
    def cvxpy_size(self) -> dict[str, int]:
        blocks = self.c * 2 * self.P
        rows = blocks * self.n
        return {
            "variables": blocks * self.h,
            "constraint_rows": rows,
            "nonzeros": rows * self.h + blocks * self.n * self.h + blocks * 2 * self.h * self.h,
        }

    def cvxpy_program(self, w: Any) -> tuple[Any, Any, list[Any]]:
        import cvxpy as cp
        import scipy.sparse as sp

        c, P, h, n = self.c, self.P, self.h, self.n
        X = self.X.detach().cpu().numpy()
        m = self._m().cpu().numpy()  # (P, n)
        A_row = (m[:, :, None] * X[None]).transpose(1, 0, 2).reshape(n, P * h)
        columns = []
        for j in range(c):
            blocks = [sp.csr_matrix((n, P * h))] * (2 * c)
            blocks[2 * j] = sp.csr_matrix(A_row)
            blocks[2 * j + 1] = sp.csr_matrix(-A_row)
            columns.append(sp.hstack(blocks, format="csr") @ w)
        prediction = cp.vstack(columns).T if c > 1 else cp.reshape(columns[0], (n, 1), order="C")
        signs = self._signs().cpu().numpy()
        G = sp.block_diag([sp.csr_matrix(signs[i][:, None] * X) for i in range(P)] * (2 * c))
        reg = self.scale * self.gauge.cvxpy(w, c * 2 * P)
        return prediction, reg, [sp.csr_matrix(G) @ w >= 0]


def _check_options(options: dict[str, Any], channels: int) -> dict[str, Any]:
    depth = options.get("depth", 3)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 3:
        raise ValueError(f"depth must be an integer ≥ 3 for architecture='circular'; got {depth!r}")
    inner_norm = options.get("inner_norm", "schatten")
    if inner_norm not in ("schatten", "l2"):
        raise ValueError(
            f"inner_norm must be 'schatten' (exact) or 'l2' (bound); got {inner_norm!r}"
        )
    if depth >= 4 and channels > 1:
        raise ValueError(
            f"architecture='circular' with depth ≥ 4 supports single-channel inputs only; got "
            f"C = {channels} channels (use depth=3, or one channel)"
        )
    epochs = options.get("polish_epochs", 1000)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"polish_epochs must be an integer ≥ 0; got {epochs!r}")
    lr = options.get("polish_lr", 1e-2)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"polish_lr must be a positive number; got {lr!r}")
    return {
        "depth": depth,
        "inner_norm": inner_norm,
        "polish_epochs": epochs,
        "polish_lr": float(lr),
        "polish_seed": int(options.get("polish_seed", 0)),
    }


def resolve_patterns(context: FitContext, X: torch.Tensor) -> PatternSet:
    """``patterns``: None (100 sampled filters), an int, ``"enumerate"`` (every pattern of X,
    exact enumeration) or a PatternSet on X flattened (n, C·d)."""
    from ..fit import DEFAULT_PATTERNS

    patterns = context.patterns
    n = X.shape[0]
    if isinstance(patterns, str) and patterns == "enumerate":
        return PatternSet.enumerate_patches(X.reshape(n, 1, -1))
    if patterns is None or (isinstance(patterns, int) and not isinstance(patterns, bool)):
        count = DEFAULT_PATTERNS if patterns is None else patterns
        pattern_set = sample_patch_patterns(
            X.reshape(n, 1, -1), count, seed=context.seed, kind=context.pattern_kind
        )
    elif isinstance(patterns, PatternSet):
        pattern_set = patterns
    else:
        raise ValueError(
            "patterns must be None, a number of generator filters, 'enumerate' or a PatternSet "
            f"(on X flattened to (n, C·d)); got {type(patterns).__name__}"
        )
    if len(pattern_set) == 0:
        raise ValueError("the pattern set is empty (every filter gave the all-zero pattern)")
    return pattern_set


def build(context: FitContext, options: dict[str, Any]) -> CircularReLU:
    """Builder for ``fit(architecture="circular", pooling="none", depth=..., inner_norm=...)``.

    kernel_size/stride/padding are ignored: the filters are full-size circular convolutions.
    """
    batch = context.batch
    opts = _check_options(options, int(batch.shape[1]))
    X = batch.reshape(batch.shape[0], -1)
    return CircularReLU(
        batch,
        resolve_patterns(context, X),
        context.targets,
        context.beta,
        context.loss,
        **opts,
    )
