"""Linear CNNs (no ReLU) and their implicit regularizers (SPEC §6) — exact.

Three programs, each per output j (c outputs; each hidden filter feeds one output, SPEC §9):

* ``LinearSum`` (Conv → sum over positions → Linear), W (c, h), ``X̄ = Σ_k X_k`` (n, h):
  ``min ℓ(X̄ Wᵀ; Y) + β Σ_j ‖W_j‖₂``. One filter per output suffices.
* ``LinearFlatten`` (Conv → flatten → Linear), W (c, h, K):
  ``min ℓ([Σ_k X_k W_j[:, k]]_j; Y) + β Σ_j ‖W_j‖_*`` (nuclear norm). Prox: SVD
  soft-thresholding. Recovery from ``W_j = Σ σ_i a_i b_iᵀ``: filter √σ_i a_i, output weights
  √σ_i b_i over the K positions.
* ``LinearCircular`` (full-size circular conv → flatten → Linear), W (c, C·d), X flattened (n, C·d):
  ``min ℓ(X Wᵀ; Y) + (β/√d) Σ_j ρ(W_j)`` with ρ the spectral ℓ1 gauge of
  :mod:`convexcnn.spectral` (grouped over channels). Recovery as SPEC §7 (L = 3 split).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..losses import Loss
from ..networks import LinearCircularCNN, LinearCNN
from ..patches import ResolvedSpec
from ..spectral import SpectralL1, spectral_moduli
from .base import ConvexProblem, RecoveredNetwork
from .registry import FitContext
from .two_layer import ZERO_BLOCK_RTOL, group_soft_threshold, network_objective

__all__ = [
    "LinearCircular",
    "LinearFlatten",
    "LinearSum",
    "build_linear",
    "build_linear_circular",
    "circular_factor",
    "nuclear_prox",
]


def nuclear_prox(W: torch.Tensor, threshold: float) -> torch.Tensor:
    """Prox of threshold·Σ_j ‖W_j‖_* for W (c, h, K): soft-threshold each W_j's singular values."""
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return U @ torch.diag_embed((S - threshold).clamp_min(0)) @ Vh


def circular_factor(
    z: torch.Tensor, channels: int, spatial: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Cheapest factorization ``z = u ⊛ w̃`` (per channel, one shared w̃) with ‖u‖ = 1 and
    ‖w̃‖ = R = ρ(z)/√d (SPEC §7, channel-grouped): with ẑ = F z (C, freq), r_k = ‖ẑ[:, k]‖ and
    S = Σ_k r_k: û = ẑ/√(r S), ŵ = √(r S)/√d (0 where r = 0).

    Returns u (C, *spatial), w̃ (*spatial) and R.
    """
    d = math.prod(spatial)
    dims = tuple(range(-len(spatial), 0))
    zh = torch.fft.rfftn(z.reshape(channels, *spatial), dim=dims, norm="ortho")
    r = zh.abs().pow(2).sum(dim=0).sqrt()
    gauge = SpectralL1(channels, spatial)
    S = float(gauge.per_block(z.reshape(1, -1))[0])  # Σ over all d frequencies
    if S == 0.0:
        zero = torch.zeros(spatial, dtype=z.dtype)
        return torch.zeros((channels, *spatial), dtype=z.dtype), zero, 0.0
    root = (r * S).sqrt()
    uh = torch.where(root > 0, zh / root.clamp_min(1e-300), torch.zeros_like(zh))
    wh = (root / math.sqrt(d)).to(zh.dtype)
    u = torch.fft.irfftn(uh, s=spatial, dim=dims, norm="ortho")
    w = torch.fft.irfftn(wh, s=spatial, dim=dims, norm="ortho")
    return u, w, S / math.sqrt(d)


class _LinearBase(ConvexProblem):
    """Shared plumbing: targets (n, c), β, loss, the training inputs for recovery."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, beta: float, loss: Loss):
        self.inputs = inputs
        self.targets = targets
        self.beta = float(beta)
        self.loss = loss
        self.n = int(targets.shape[0])
        self.c = int(targets.shape[1])
        self.in_channels = int(inputs.shape[1])

    @property
    def patterns_complete(self) -> bool:
        """No activation patterns: the program is the whole training problem."""
        return True

    def dual_norm(self, G: torch.Tensor) -> torch.Tensor:
        return self.block_dual_norms(G).max()

    def _objective_of(self, net: torch.nn.Module) -> float:
        return network_objective(net, self.inputs, self.targets, self.loss, self.beta)

    def _prediction_from_matrix(self, A: np.ndarray, w: Any, per_output: int) -> Any:
        """(n, c) CVXPY prediction: column j = A @ w[j·per_output : (j+1)·per_output]."""
        import cvxpy as cp

        cols = [A @ w[j * per_output : (j + 1) * per_output] for j in range(self.c)]
        return cp.vstack(cols).T if self.c > 1 else cp.reshape(cols[0], (self.n, 1), order="C")


class LinearSum(_LinearBase):
    """SPEC §6 sum pooling: W (c, h); F = X̄ Wᵀ; ρ = Σ_j ‖W_j‖₂.

    Args: patches (n, K, h), targets (n, c), beta, loss; spec and inputs (n, C, *spatial) for
    the recovered :class:`~convexcnn.networks.LinearCNN`.
    """

    def __init__(
        self,
        patches: torch.Tensor,
        targets: torch.Tensor,
        beta: float,
        loss: Loss,
        *,
        spec: ResolvedSpec,
        inputs: torch.Tensor,
    ) -> None:
        super().__init__(inputs, targets, beta, loss)
        self.Xbar = patches.sum(dim=1)  # (n, h)
        self.h = int(patches.shape[2])
        self.spec = spec

    @property
    def variable_shape(self) -> tuple[int, ...]:
        return (self.c, self.h)

    def predict(self, W: torch.Tensor) -> torch.Tensor:
        return self.Xbar @ W.T

    def predict_adjoint(self, R: torch.Tensor) -> torch.Tensor:
        return R.T @ self.Xbar

    def regularizer(self, W: torch.Tensor) -> torch.Tensor:
        return self.beta * W.norm(dim=-1).sum()

    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        return group_soft_threshold(W, step * self.beta)

    def block_dual_norms(self, G: torch.Tensor) -> torch.Tensor:
        """‖G_j‖₂ per output (c,)."""
        return G.norm(dim=-1)

    def recover(self, W: torch.Tensor) -> RecoveredNetwork:
        """Output j's filter W_j/√‖W_j‖ with output weight √‖W_j‖ (zero outputs dropped)."""
        norms = W.norm(dim=-1)
        cutoff = ZERO_BLOCK_RTOL * float(norms.max()) if norms.numel() else 0.0
        keep = [j for j in range(self.c) if float(norms[j]) > cutoff]
        width = max(1, len(keep))
        net = LinearCNN(self.in_channels, width, self.spec, pooling="sum", n_outputs=self.c)
        net = net.to(W.dtype)
        filters = torch.zeros((width, self.h), dtype=W.dtype)
        out = torch.zeros((self.c, width), dtype=W.dtype)
        for b, j in enumerate(keep):
            r = norms[j].sqrt()
            filters[b] = W[j] / r
            out[j, b] = r
        with torch.no_grad():
            net.conv.weight.copy_(filters.reshape(net.conv.weight.shape))
            net.linear.weight.copy_(out)
        return RecoveredNetwork(net, self._objective_of(net), len(keep))

    def cvxpy_size(self) -> dict[str, int]:
        return {"variables": self.c * self.h, "constraint_rows": 0, "nonzeros": self.n * self.h}

    def cvxpy_program(self, w: Any) -> tuple[Any, Any, list[Any]]:
        import cvxpy as cp

        A = self.Xbar.detach().cpu().numpy()
        prediction = self._prediction_from_matrix(A, w, self.h)
        W2 = cp.reshape(w, (self.c, self.h), order="C")
        return prediction, self.beta * cp.sum(cp.norm(W2, 2, axis=1)), []


class LinearFlatten(_LinearBase):
    """SPEC §6 flatten: W (c, h, K); F[:, j] = Σ_k X_k W_j[:, k]; ρ = Σ_j ‖W_j‖_*."""

    def __init__(
        self,
        patches: torch.Tensor,
        targets: torch.Tensor,
        beta: float,
        loss: Loss,
        *,
        spec: ResolvedSpec,
        inputs: torch.Tensor,
    ) -> None:
        super().__init__(inputs, targets, beta, loss)
        self.patches = patches  # (n, K, h)
        _, self.K, self.h = (int(s) for s in patches.shape)
        self.spec = spec

    @property
    def variable_shape(self) -> tuple[int, ...]:
        return (self.c, self.h, self.K)

    def predict(self, W: torch.Tensor) -> torch.Tensor:
        return torch.einsum("tkq,jqk->tj", self.patches, W)

    def predict_adjoint(self, R: torch.Tensor) -> torch.Tensor:
        return torch.einsum("tkq,tj->jqk", self.patches, R)

    def regularizer(self, W: torch.Tensor) -> torch.Tensor:
        return self.beta * torch.linalg.svdvals(W).sum()

    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        return nuclear_prox(W, step * self.beta)

    def block_dual_norms(self, G: torch.Tensor) -> torch.Tensor:
        """Spectral norm ‖G_j‖₂ per output (c,)."""
        return torch.linalg.svdvals(G)[..., 0]

    def recover(self, W: torch.Tensor) -> RecoveredNetwork:
        """One branch per nonzero singular triple (σ, a, b) of W_j: filter √σ·a, output weights
        √σ·b on the K flattened positions of that filter."""
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)  # (c,h,r), (c,r), (c,r,K)
        cutoff = ZERO_BLOCK_RTOL * float(S.max()) if S.numel() else 0.0
        keep = [(j, i) for j in range(self.c) for i in range(S.shape[1]) if float(S[j, i]) > cutoff]
        width = max(1, len(keep))
        net = LinearCNN(
            self.in_channels,
            width,
            self.spec,
            pooling="flatten",
            n_positions=self.K,
            n_outputs=self.c,
        ).to(W.dtype)
        filters = torch.zeros((width, self.h), dtype=W.dtype)
        out = torch.zeros((self.c, width * self.K), dtype=W.dtype)
        for b, (j, i) in enumerate(keep):
            root = S[j, i].sqrt()
            filters[b] = root * U[j, :, i]
            out[j, b * self.K : (b + 1) * self.K] = root * Vh[j, i]
        with torch.no_grad():
            net.conv.weight.copy_(filters.reshape(net.conv.weight.shape))
            net.linear.weight.copy_(out)
        return RecoveredNetwork(net, self._objective_of(net), len(keep))

    def cvxpy_size(self) -> dict[str, int]:
        size = self.c * self.h * self.K
        return {"variables": size, "constraint_rows": 0, "nonzeros": self.n * self.h * self.K}

    def cvxpy_program(self, w: Any) -> tuple[Any, Any, list[Any]]:
        import cvxpy as cp

        hK = self.h * self.K
        # prediction_t = Σ_{q,k} patches[t, k, q] W_j[q, k]; W_j row-major (q, k)
        A = self.patches.detach().cpu().numpy().transpose(0, 2, 1).reshape(self.n, hK)
        prediction = self._prediction_from_matrix(A, w, hK)
        reg = sum(
            cp.normNuc(cp.reshape(w[j * hK : (j + 1) * hK], (self.h, self.K), order="C"))
            for j in range(self.c)
        )
        return prediction, self.beta * reg, []


class LinearCircular(_LinearBase):
    """SPEC §6 two-layer circular: W (c, C·d); F = X Wᵀ with X = inputs flattened (n, C·d);
    ρ = (1/√d) Σ_j ‖F W_j‖₁ (channel-grouped spectral ℓ1)."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, beta: float, loss: Loss):
        super().__init__(inputs, targets, beta, loss)
        self.spatial = tuple(int(s) for s in inputs.shape[2:])
        self.d = math.prod(self.spatial)
        self.X = inputs.reshape(self.n, -1)
        self.h = int(self.X.shape[1])
        self.gauge = SpectralL1(self.in_channels, self.spatial)
        self.scale = self.beta / math.sqrt(self.d)

    @property
    def variable_shape(self) -> tuple[int, ...]:
        return (self.c, self.h)

    def predict(self, W: torch.Tensor) -> torch.Tensor:
        return self.X @ W.T

    def predict_adjoint(self, R: torch.Tensor) -> torch.Tensor:
        return R.T @ self.X

    def regularizer(self, W: torch.Tensor) -> torch.Tensor:
        return self.scale * self.gauge.value(W)

    def prox(self, W: torch.Tensor, step: float) -> torch.Tensor:
        return self.gauge.prox(W, step * self.scale)

    def block_dual_norms(self, G: torch.Tensor) -> torch.Tensor:
        """√d·max_k ‖(F G_j)[:, k]‖ per output (c,)."""
        blocks = G.reshape(self.c, self.in_channels, *self.spatial)
        return spectral_moduli(blocks, self.spatial).flatten(1).amax(dim=1) * math.sqrt(self.d)

    def recover(self, W: torch.Tensor) -> RecoveredNetwork:
        """Output j: u = û-factor of W_j scaled by √R, w = w̃/√R (so ‖u‖² = ‖w‖² = R)."""
        norms = self.gauge.per_block(W)
        cutoff = ZERO_BLOCK_RTOL * float(norms.max()) if norms.numel() else 0.0
        keep = [j for j in range(self.c) if float(norms[j]) > cutoff]
        width = max(1, len(keep))
        net = LinearCircularCNN(self.in_channels, self.spatial, width, n_outputs=self.c)
        net = net.to(W.dtype)
        filters = torch.zeros((width, self.in_channels, *self.spatial), dtype=W.dtype)
        out = torch.zeros((self.c, width * self.d), dtype=W.dtype)
        for b, j in enumerate(keep):
            u, w, R = circular_factor(W[j], self.in_channels, self.spatial)
            filters[b] = u * math.sqrt(R)
            out[j, b * self.d : (b + 1) * self.d] = w.reshape(-1) / math.sqrt(R)
        with torch.no_grad():
            net.conv.weight.copy_(filters)
            net.linear.weight.copy_(out)
        return RecoveredNetwork(net, self._objective_of(net), len(keep))

    def cvxpy_size(self) -> dict[str, int]:
        return {
            "variables": self.c * self.h,
            "constraint_rows": 0,
            "nonzeros": self.n * self.h + self.c * 2 * self.h * self.h,
        }

    def cvxpy_program(self, w: Any) -> tuple[Any, Any, list[Any]]:
        A = self.X.detach().cpu().numpy()
        prediction = self._prediction_from_matrix(A, w, self.h)
        return prediction, self.scale * self.gauge.cvxpy(w, self.c), []


def _refuse_patterns(context: FitContext, architecture: str) -> None:
    """Linear models have no patterns: None or a sampling count (e.g. the CLI default) is
    ignored; an explicit pattern set is a mistake."""
    patterns = context.patterns
    if patterns is None or (isinstance(patterns, int) and not isinstance(patterns, bool)):
        return
    raise ValueError(
        f"architecture={architecture!r} is linear (no ReLU) and has no activation patterns; "
        "leave patterns=None"
    )


def build_linear(context: FitContext, options: dict[str, Any]) -> LinearSum | LinearFlatten:
    """Builder for ``fit(architecture="linear", pooling="sum" | "flatten")``."""
    _refuse_patterns(context, "linear")
    cls = LinearSum if context.pooling == "sum" else LinearFlatten
    return cls(
        context.patches,
        context.targets,
        context.beta,
        context.loss,
        spec=context.resolved,
        inputs=context.batch,
    )


def build_linear_circular(context: FitContext, options: dict[str, Any]) -> LinearCircular:
    """Builder for ``fit(architecture="linear_circular", pooling="none")`` (kernel_size,
    stride, padding are ignored: the filters are full-size circular convolutions)."""
    _refuse_patterns(context, "linear_circular")
    return LinearCircular(context.batch, context.targets, context.beta, context.loss)
