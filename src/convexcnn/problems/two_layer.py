"""Two-layer ReLU CNN with global sum/average pooling (SPEC §3) and its gated relaxation (§5).

Variable ``W`` of shape (c, 2, P, h): ``W[j, 0, i] = c_i`` and ``W[j, 1, i] = c'_i`` for output j
and pattern i. With ``A_i = Σ_k D_i^k X_k`` (n, h) and ``G_i = (2 diag(d_i) − I) M`` (nK, h):

    F[:, j] = Σ_i A_i (W[j,0,i] − W[j,1,i])                      (n, c)
    𝒢(W)[j, s, i] = G_i W[j, s, i] ≥ 0                            (c, 2, P, n, K)
    ρ(W) = Σ_{j,s,i} ‖W[j, s, i]‖₂                                 group ℓ2

Average pooling is sum pooling over patches scaled by 1/K. The gated program (``gated=True``)
drops 𝒢: it is the exact convex form of the gated network and a lower bound for the ReLU one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..losses import Loss
from ..networks import TwoLayerCNN
from ..operators import TwoLayerOperators
from ..patches import ResolvedSpec
from ..patterns import PatternSet, sample_patch_patterns
from .base import ConvexProblem, RecoveredNetwork
from .registry import FitContext

__all__ = [
    "TwoLayerReLU",
    "branches_from_blocks",
    "build",
    "group_soft_threshold",
    "network_objective",
]

#: Blocks with ‖c‖ ≤ this fraction of the largest block are treated as zero by recovery.
ZERO_BLOCK_RTOL = 1e-10


def group_soft_threshold(W: torch.Tensor, threshold: float) -> torch.Tensor:
    """Prox of threshold·Σ‖W[..., :]‖₂ over the last axis: scale each row by (1 − t/‖w‖)_+."""
    norms = W.norm(dim=-1, keepdim=True)
    scale = (1 - threshold / norms.clamp_min(1e-300)).clamp_min(0)
    return W * scale


class TwoLayerReLU(ConvexProblem):
    """SPEC §3 program over a fixed :class:`PatternSet`.

    Args:
        patches: (n, K, h) training patches (unscaled; pooling="avg" divides by K here).
        patterns: the P joint patterns; masks (P, n, K).
        targets: (n, c).
        beta: weight-decay strength β > 0.
        loss: a :class:`~convexcnn.losses.Loss`.
        pooling: "sum" or "avg".
        spec, in_channels: geometry, for building the recovered torch network.
        gated: drop the cone constraints (SPEC §5).
    """

    def __init__(
        self,
        patches: torch.Tensor,
        patterns: PatternSet,
        targets: torch.Tensor,
        beta: float,
        loss: Loss,
        *,
        pooling: str = "sum",
        spec: ResolvedSpec,
        in_channels: int,
        inputs: torch.Tensor,
        gated: bool = False,
    ) -> None:
        n, K, h = patches.shape
        if patterns.masks.shape[1:] != (n, K) or patterns.filter_size != h:
            raise ValueError(
                f"patterns were built for data with (n, K, h) = ({patterns.n_samples}, "
                f"{patterns.n_positions}, {patterns.filter_size}) but X gives ({n}, {K}, {h}); "
                "build the PatternSet from the same X and PatchSpec you fit"
            )
        self.raw_patches = patches
        self.patches = patches / K if pooling == "avg" else patches
        self.patterns = patterns
        self.masks = patterns.masks
        self.targets = targets
        self.beta = float(beta)
        self.loss = loss
        self.pooling = pooling
        self.spec = spec
        self.in_channels = in_channels
        self.inputs = inputs
        self.gated = gated
        self.n, self.K, self.h = n, K, h
        self.c = targets.shape[1]
        self.P = len(patterns)
        self._masked: torch.Tensor | None = None

    # ----- operators ------------------------------------------------------------------
    @property
    def variable_shape(self) -> tuple[int, ...]:
        return (self.c, 2, self.P, self.h)

    @property
    def operators(self) -> TwoLayerOperators:
        """The fast chunked operators (:mod:`convexcnn.operators`), built on first use after a
        memory estimate; A_i precomputed when it fits."""
        ops = getattr(self, "_operators", None)
        if ops is None:
            ops = TwoLayerOperators(
                self.patches, self.masks, n_outputs=self.c, generators=self.patterns.filters
            )
            self._operators: TwoLayerOperators | None = ops
        return ops

    @property
    def masked_patches(self) -> torch.Tensor:
        """A_i = Σ_k D_i^k X_k for every pattern, (P, n, h)."""
        if self._masked is None:
            self._masked = self.operators.masked_patches()
        return self._masked

    def predict(self, W: torch.Tensor) -> torch.Tensor:
        return self.operators.predict(W[:, 0] - W[:, 1])

    def predict_adjoint(self, R: torch.Tensor) -> torch.Tensor:
        g = self.operators.predict_adjoint(R)
        return torch.stack([g, -g], dim=1)

    @property
    def has_constraints(self) -> bool:
        return not self.gated

    def constraint(self, W: torch.Tensor) -> torch.Tensor | None:
        if self.gated:
            return None
        return self.operators.constraint(W)

    def constraint_adjoint(self, L: torch.Tensor) -> torch.Tensor:
        if self.gated:
            raise NotImplementedError("the gated program has no constraints")
        return self.operators.constraint_adjoint(L)

    # ----- plain reference implementations of the operators (tests compare) ---------------
    def _masked_patches_reference(self) -> torch.Tensor:
        m = self.masks.to(self.patches.dtype)
        return torch.einsum("ptk,tkh->pth", m, self.patches)

    def _predict_reference(self, W: torch.Tensor) -> torch.Tensor:
        V = W[:, 0] - W[:, 1]  # (c, P, h)
        return torch.einsum("pth,jph->tj", self._masked_patches_reference(), V)

    def _predict_adjoint_reference(self, R: torch.Tensor) -> torch.Tensor:
        g = torch.einsum("pth,tj->jph", self._masked_patches_reference(), R)
        return torch.stack([g, -g], dim=1)

    def _signs(self) -> torch.Tensor:
        return self.masks.to(self.patches.dtype) * 2 - 1  # (P, n, K)

    def _constraint_reference(self, W: torch.Tensor) -> torch.Tensor:
        MW = torch.einsum("tkh,jsph->jsptk", self.patches, W)
        return MW * self._signs()

    def _constraint_adjoint_reference(self, L: torch.Tensor) -> torch.Tensor:
        return torch.einsum("jsptk,ptk,tkh->jsph", L, self._signs(), self.patches)

    # ----- regularizer ----------------------------------------------------------------
    def regularizer(self, W: torch.Tensor) -> torch.Tensor:
        return self.beta * W.norm(dim=-1).sum()

    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        return group_soft_threshold(W, step * self.beta)

    def dual_norm(self, G: torch.Tensor) -> torch.Tensor:
        return G.norm(dim=-1).max()

    # ----- recovery -------------------------------------------------------------------
    def recover(self, W: torch.Tensor) -> RecoveredNetwork:
        """Each nonzero block c → filter c/√‖c‖, output weight ±√‖c‖ (SPEC §2.3)."""
        filters, out = branches_from_blocks(W)
        m = int(filters.shape[0])
        net = TwoLayerCNN(
            self.in_channels, m, self.spec, pooling=self.pooling, n_outputs=self.c
        ).to(W.dtype)
        net.set_weights(filters, out)
        value = network_objective(net, self.inputs, self.targets, self.loss, self.beta)
        gated_note = {"gated": True} if self.gated else {}
        live = int((out != 0).any(dim=0).sum())
        return RecoveredNetwork(net, value, live, info=gated_note)

    # ----- exact-solver hooks --------------------------------------------------------
    def cvxpy_size(self) -> dict[str, int]:
        blocks = self.c * 2 * self.P
        rows = 0 if self.gated else blocks * self.n * self.K
        return {
            "variables": blocks * self.h,
            "constraint_rows": rows,
            "nonzeros": rows * self.h + self.c * 2 * self.P * self.n * self.h,
        }

    def cvxpy_program(self, w: Any) -> tuple[Any, Any, list[Any]]:
        import cvxpy as cp
        import scipy.sparse as sp

        c, P, h, n = self.c, self.P, self.h, self.n
        A = self.masked_patches.detach().cpu().numpy()  # (P, n, h)
        A_row = np.transpose(A, (1, 0, 2)).reshape(n, P * h)  # columns (i, q)
        columns = []
        for j in range(c):
            blocks = [sp.csr_matrix((n, P * h))] * (2 * c)
            blocks[2 * j] = sp.csr_matrix(A_row)
            blocks[2 * j + 1] = sp.csr_matrix(-A_row)
            columns.append(sp.hstack(blocks, format="csr") @ w)
        prediction = cp.vstack(columns).T if c > 1 else cp.reshape(columns[0], (n, 1), order="C")
        W2 = cp.reshape(w, (c * 2 * P, h), order="C")
        reg = self.beta * cp.sum(cp.norm(W2, 2, axis=1))
        constraints: list[Any] = []
        if not self.gated:
            M = self.patches.reshape(n * self.K, h).detach().cpu().numpy()
            signs = self._signs().reshape(P, n * self.K).cpu().numpy()
            G_blocks = [sp.csr_matrix(signs[i][:, None] * M) for i in range(P)]
            G = sp.block_diag(G_blocks * (2 * c), format="csr")
            constraints.append(G @ w >= 0)
        return prediction, reg, constraints

    # ----- certificate and pattern-growth hooks (convexcnn.certificate / growth) ----------
    def block_dual_norms(self, G: torch.Tensor) -> torch.Tensor:
        """‖G[j, s, i]‖₂ per block, shape (c, 2, P)."""
        return G.norm(dim=-1)

    def block_constraint_matrix(self, index: tuple[int, ...]) -> torch.Tensor:
        """G_i = (2 diag(d_i) − I) M for block (j, s, i), shape (nK, h)."""
        if self.gated:
            raise NotImplementedError("the gated program has no constraints")
        i = index[2]
        signs = self.masks[i].reshape(-1).to(self.patches.dtype) * 2 - 1
        return signs[:, None] * self.patches.reshape(self.n * self.K, self.h)

    @property
    def patterns_complete(self) -> bool:
        return bool(getattr(self.patterns, "complete", False))

    def search_violations(
        self, V: torch.Tensor, *, starts: int = 64, steps: int = 100, seed: int = 0
    ) -> Any:
        """max_{‖u‖≤1} |V[:, j]ᵀ Σ_k (X_k u)_+| per output j by projected ascent from ``starts``
        filters (current generators, data patches, Gaussian): :func:`~convexcnn.certificate.
        search_filters`."""
        from ..certificate import search_filters

        return search_filters(
            self.patches,
            V,
            starts=starts,
            steps=steps,
            seed=seed,
            init_filters=self.patterns.filters,
        )

    def with_patterns(self, patterns: PatternSet) -> TwoLayerReLU:
        return TwoLayerReLU(
            self.raw_patches,
            patterns,
            self.targets,
            self.beta,
            self.loss,
            pooling=self.pooling,
            spec=self.spec,
            in_channels=self.in_channels,
            inputs=self.inputs,
            gated=self.gated,
        )

    def grown(self, filters: torch.Tensor) -> TwoLayerReLU:
        """This program plus the (new, non-zero) patterns of ``filters`` (m, h)."""
        new = PatternSet.from_patch_filters(self.raw_patches, filters, source="grown")
        return self.with_patterns(self.patterns.merged(new))

    def embed_solution(self, W: torch.Tensor, source: ConvexProblem) -> torch.Tensor:
        """Zero-pad a solution of ``source`` whose P₀ patterns are our first P₀ ones."""
        P0 = W.shape[2]
        if W.shape[:2] != (self.c, 2) or P0 > self.P or W.shape[3] != self.h:
            raise ValueError(f"cannot embed W of shape {tuple(W.shape)} into {self.variable_shape}")
        if not torch.equal(getattr(source, "masks", self.masks[:P0]), self.masks[:P0]):
            raise ValueError("the source program's patterns are not a prefix of this program's")
        out = torch.zeros(self.variable_shape, dtype=W.dtype, device=W.device)
        out[:, :, :P0] = W
        return out


def network_objective(
    net: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss: Loss, beta: float
) -> float:
    """ℓ(net(X); Y) + (β/2)·Σ‖θ‖² over the network's weight-decayed parameters, by running it."""
    with torch.no_grad():
        out = net(inputs)
        if out.ndim == 1:
            out = out[:, None]
        module: Any = net
        penalty = module.weight_penalty(beta) if hasattr(net, "weight_penalty") else 0.0
        return float(loss.value(out, targets) + penalty)


def build(context: FitContext, options: dict[str, Any]) -> ConvexProblem:
    """Builder for ``fit(architecture="two_layer")``: samples or checks the PatternSet.
    Max pooling and local pooling windows are built by :mod:`.local_pool` / :mod:`.max_pool`."""
    if context.pooling == "max" or options.get("pool_size") is not None:
        from .local_pool import build_pooled

        return build_pooled(context, options)
    if options.get("pool_stride") is not None:
        raise ValueError("pool_stride needs pool_size (the local pooling window); pass both")
    patterns = resolve_patterns(context)
    return TwoLayerReLU(
        context.patches,
        patterns,
        context.targets,
        context.beta,
        context.loss,
        pooling=context.pooling,
        spec=context.resolved,
        in_channels=context.batch.shape[1],
        inputs=context.batch,
        gated=bool(options.get("gated", False)),
    )


def resolve_patterns(context: FitContext) -> PatternSet:
    """The fit's ``patterns`` argument as a PatternSet on the training patches."""
    from ..fit import DEFAULT_PATTERNS

    patterns = context.patterns
    if patterns is None or (isinstance(patterns, int) and not isinstance(patterns, bool)):
        count = DEFAULT_PATTERNS if patterns is None else patterns
        pattern_set = sample_patch_patterns(
            context.patches, count, seed=context.seed, kind=context.pattern_kind
        )
    elif isinstance(patterns, PatternSet):
        pattern_set = patterns
    else:
        raise ValueError(
            "patterns must be None, a number of generator filters, or a PatternSet; got "
            f"{type(patterns).__name__}"
        )
    if len(pattern_set) == 0:
        raise ValueError("the pattern set is empty (every filter gave the all-zero pattern)")
    return pattern_set


def branches_from_blocks(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SPEC §2.3 for W (c, 2, P, h): every block with ‖c‖ > ZERO_BLOCK_RTOL·max becomes a
    branch, filter c/√‖c‖ and output weight ±√‖c‖ on its output. Returns filters (m, h) and
    output weights (c, m); an all-zero W gives one zero branch (m = 1: torch has no
    zero-width layers), whose network outputs 0 at no weight-decay cost."""
    norms = W.norm(dim=-1)
    cutoff = ZERO_BLOCK_RTOL * float(norms.max()) if norms.numel() else 0.0
    keep = (norms > cutoff).nonzero(as_tuple=False)
    m = max(1, int(keep.shape[0]))
    filters = torch.zeros((m, W.shape[-1]), dtype=W.dtype, device=W.device)
    out = torch.zeros((W.shape[0], m), dtype=W.dtype, device=W.device)
    for b, (j, s, i) in enumerate(keep.tolist()):
        r = norms[j, s, i].sqrt()
        filters[b] = W[j, s, i] / r
        out[j, b] = r if s == 0 else -r
    return filters, out
