"""Unitary-DFT helpers for circular convolutions: the spectral ℓ1 gauge (SPEC §6, §7).

Conventions. A real signal ``x`` has shape (C, *spatial) with ``spatial = (L,)`` or ``(H, W)``
and ``d = Πspatial``. ``F`` is the unitary DFT over the spatial axes (``numpy.fft.fftn(·)/√d``;
for images the 2-D unitary DFT ``F_H ⊗ F_W`` on row-major flattening, i.e. ``fft2(x)/√(H·W)``).
For a circular convolution ``z = u ⊛ w`` it satisfies ``F z = √d · (F u) ⊙ (F w)``.

The (channel-grouped, weighted) spectral ℓ1 gauge of x is

    ρ(x) = Σ_k ω_k ‖(F x)[:, k]‖₂        (sum over all d frequencies k; C = 1: Σ_k ω_k |x̂_k|)

with ω_k = 1 on self-conjugate frequencies (every coordinate 0 or N_a/2) and ω_k = ``pair_weight``
elsewhere. It is computed from ``torch.fft.rfftn(·, norm="ortho")``: the half spectrum keeps the
last axis up to N/2, and a kept frequency stands for itself and its conjugate (multiplicity 2)
unless its last coordinate is 0 or N/2 (then both members of the conjugate pair are kept).
Because F is unitary and soft-thresholding preserves conjugate symmetry, the prox of t·ρ is
``x ↦ F⁻¹ soft(F x, t·ω)`` and is real; the dual gauge is ``max_k ‖(F g)[:, k]‖ / ω_k``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "SpectralL1",
    "dense_unitary_dft",
    "frequency_weights",
    "rfft_multiplicity",
    "self_conjugate_mask",
    "spectral_dual_norm",
    "spectral_l1",
    "spectral_l1_prox",
    "spectral_moduli",
    "unitary_irfft",
    "unitary_rfft",
]


def _dims(spatial: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(range(-len(spatial), 0))


def _half_shape(spatial: tuple[int, ...]) -> tuple[int, ...]:
    return (*spatial[:-1], spatial[-1] // 2 + 1)


def unitary_rfft(x: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Half spectrum of the unitary DFT over the trailing ``len(spatial)`` axes."""
    return torch.fft.rfftn(x, dim=_dims(spatial), norm="ortho")


def unitary_irfft(xh: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`unitary_rfft` (real output with trailing shape ``spatial``)."""
    return torch.fft.irfftn(xh, s=spatial, dim=_dims(spatial), norm="ortho")


def rfft_multiplicity(spatial: tuple[int, ...], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """How many full-spectrum frequencies each half-spectrum entry stands for (1 or 2)."""
    last = spatial[-1]
    m = torch.full((last // 2 + 1,), 2.0, dtype=dtype)
    m[0] = 1.0
    if last % 2 == 0:
        m[-1] = 1.0
    return m.expand(_half_shape(spatial)).clone()


def self_conjugate_mask(spatial: tuple[int, ...]) -> torch.Tensor:
    """Bool mask on the half spectrum: frequencies equal to their own conjugate (k ≡ −k)."""
    mask = torch.ones(_half_shape(spatial), dtype=torch.bool)
    for axis, size in enumerate(spatial):
        length = size // 2 + 1 if axis == len(spatial) - 1 else size
        idx = torch.arange(length)
        ok = (idx == 0) | ((size % 2 == 0) & (idx == size // 2))
        shape = [1] * len(spatial)
        shape[axis] = length
        mask = mask & ok.reshape(shape)
    return mask


def frequency_weights(
    spatial: tuple[int, ...], pair_weight: float = 1.0, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """ω on the half spectrum: 1 on self-conjugate frequencies, ``pair_weight`` elsewhere."""
    w = torch.full(_half_shape(spatial), float(pair_weight), dtype=dtype)
    w[self_conjugate_mask(spatial)] = 1.0
    return w


def spectral_moduli(x: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """‖(F x)[:, k]‖₂ over the channel axis, for x (..., C, *spatial) → (..., *half)."""
    xh = unitary_rfft(x, spatial)
    return xh.abs().pow(2).sum(dim=-len(spatial) - 1).sqrt()


def spectral_l1(
    x: torch.Tensor, spatial: tuple[int, ...], pair_weight: float = 1.0
) -> torch.Tensor:
    """ρ(x) = Σ_k ω_k ‖(F x)[:, k]‖ over all d frequencies; x (..., C, *spatial) → (...)."""
    mod = spectral_moduli(x, spatial)
    w = rfft_multiplicity(spatial, x.dtype) * frequency_weights(spatial, pair_weight, x.dtype)
    return (mod * w).sum(dim=_dims(spatial))


def spectral_l1_prox(
    x: torch.Tensor, threshold: float, spatial: tuple[int, ...], pair_weight: float = 1.0
) -> torch.Tensor:
    """argmin_z ½‖z − x‖² + threshold·ρ(z) (real z): group soft-thresholding of F x at
    threshold·ω_k per frequency (channels shrink together), then the inverse DFT."""
    xh = unitary_rfft(x, spatial)
    mod = xh.abs().pow(2).sum(dim=-len(spatial) - 1, keepdim=True).sqrt()
    t = threshold * frequency_weights(spatial, pair_weight, x.dtype)
    scale = (1 - t / mod.clamp_min(1e-300)).clamp_min(0)
    return unitary_irfft(xh * scale, spatial)


def spectral_dual_norm(
    g: torch.Tensor, spatial: tuple[int, ...], pair_weight: float = 1.0
) -> torch.Tensor:
    """ρ°(g) = max_k ‖(F g)[:, k]‖ / ω_k over every block and frequency (a scalar)."""
    mod = spectral_moduli(g, spatial)
    return (mod / frequency_weights(spatial, pair_weight, g.dtype)).max()


def dense_unitary_dft(spatial: tuple[int, ...]) -> np.ndarray:
    """The dense unitary DFT (d, d) acting on row-major flattened signals of shape ``spatial``
    (``F_H ⊗ F_W`` for images): ``F @ x.ravel() == fftn(x).ravel() / √d``."""
    F = np.ones((1, 1), dtype=complex)
    for size in spatial:
        F = np.kron(F, np.fft.fft(np.eye(size)) / np.sqrt(size))
    return F


def _full_weights(spatial: tuple[int, ...], pair_weight: float) -> np.ndarray:
    """ω on the full spectrum, row-major flattened (d,)."""
    grids = np.meshgrid(*[np.arange(s) for s in spatial], indexing="ij")
    selfconj = np.ones(spatial, dtype=bool)
    for g, s in zip(grids, spatial, strict=True):
        selfconj &= (g == 0) | ((s % 2 == 0) & (g == s // 2))
    return np.where(selfconj, 1.0, float(pair_weight)).ravel()


@dataclass(frozen=True)
class SpectralL1:
    """The gauge ρ on blocks of C·d real numbers (a block = one signal (C, *spatial) flattened).

    Methods act on tensors (..., C·d) and sum/max over every leading axis.
    """

    channels: int
    spatial: tuple[int, ...]
    pair_weight: float = 1.0

    @property
    def d(self) -> int:
        return int(np.prod(self.spatial))

    def _blocks(self, W: torch.Tensor) -> torch.Tensor:
        return W.reshape(*W.shape[:-1], self.channels, *self.spatial)

    def per_block(self, W: torch.Tensor) -> torch.Tensor:
        """ρ of each block, shape W.shape[:-1]."""
        return spectral_l1(self._blocks(W), self.spatial, self.pair_weight)

    def value(self, W: torch.Tensor) -> torch.Tensor:
        return self.per_block(W).sum()

    def prox(self, W: torch.Tensor, threshold: float) -> torch.Tensor:
        out = spectral_l1_prox(self._blocks(W), threshold, self.spatial, self.pair_weight)
        return out.reshape(W.shape)

    def dual(self, G: torch.Tensor) -> torch.Tensor:
        return spectral_dual_norm(self._blocks(G), self.spatial, self.pair_weight)

    def cvxpy(self, w: Any, n_blocks: int) -> Any:
        """Σ over blocks of ρ for a flat CVXPY variable of n_blocks·C·d entries (row-major):
        stacks Re F and Im F (dense) per channel and takes the norm per (block, frequency)."""
        import cvxpy as cp

        C, d = self.channels, self.d
        F = dense_unitary_dft(self.spatial)
        # rows ordered (k, part, c): T[b, (k, part, c)] = part-of (F x_{b,c})_k
        A = np.zeros((d, 2, C, C * d))
        for c in range(C):
            A[:, 0, c, c * d : (c + 1) * d] = F.real
            A[:, 1, c, c * d : (c + 1) * d] = F.imag
        A2 = A.reshape(d * 2 * C, C * d)
        W2 = cp.reshape(w, (n_blocks, C * d), order="C")
        T = W2 @ A2.T
        moduli = cp.norm(cp.reshape(T, (n_blocks * d, 2 * C), order="C"), 2, axis=1)
        weights = np.tile(_full_weights(self.spatial, self.pair_weight), n_blocks)
        return weights @ moduli
