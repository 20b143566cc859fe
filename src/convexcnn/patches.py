"""Patch geometry and extraction (SPEC §1).

A filter of spatial size f (1-D) or f×f (2-D) over C channels has ``h = C·f`` or ``h = C·f·f``
weights. :func:`extract_patches` returns the patch tensor of shape (n, K, h), flattened in the
(channel, row, col) order of a ``Conv1d``/``Conv2d`` kernel, so that ``patches[t, k] @ u`` equals
``conv(x_t, u.reshape(1, C, *kernel))`` at output position k (row-major over positions).

Input layout rule (applied once, by :func:`as_signal_batch`):

* (n, C, H, W) → images;
* (n, H, W)    → single-channel images, unless the spec is 1-D (``dims=1``): then (n, C, L) signals;
* (n, L)       → single-channel 1-D signals;
* (n, C, L) multi-channel signals must be declared with a 1-D spec, e.g. ``PatchSpec(3, dims=1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["PatchSpec", "as_signal_batch", "extract_patches", "patches_of"]


def _pair(value: int | tuple[int, ...], dims: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    if len(value) != dims:
        raise ValueError(f"{name}={value!r} has {len(value)} entries but the data is {dims}-D")
    return tuple(int(v) for v in value)


@dataclass(frozen=True)
class PatchSpec:
    """Convolution geometry: kernel size, stride, zero padding and dilation.

    ``dims`` is 1 or 2 to fix the dimensionality, or None to take it from the data (see module
    docstring). Integers apply to every spatial axis; tuples give one value per axis.
    """

    kernel_size: int | tuple[int, ...]
    stride: int | tuple[int, ...] = 1
    padding: int | tuple[int, ...] = 0
    dilation: int | tuple[int, ...] = 1
    dims: int | None = None

    def __post_init__(self) -> None:
        for name in ("kernel_size", "stride", "dilation"):
            value = getattr(self, name)
            values = (value,) if isinstance(value, int) else tuple(value)
            if not values or any((not isinstance(v, int)) or v < 1 for v in values):
                raise ValueError(f"{name} must be a positive integer (or tuple), got {value!r}")
        pad = self.padding
        pads = (pad,) if isinstance(pad, int) else tuple(pad)
        if not pads or any((not isinstance(v, int)) or v < 0 for v in pads):
            raise ValueError(f"padding must be a non-negative integer (or tuple), got {pad!r}")
        if self.dims not in (None, 1, 2):
            raise ValueError(f"dims must be 1, 2 or None, got {self.dims!r}")
        lengths = {
            len(v)
            for v in (self.kernel_size, self.stride, self.padding, self.dilation)
            if not isinstance(v, int)
        }
        if len(lengths) > 1:
            raise ValueError("kernel_size, stride, padding and dilation tuples differ in length")
        if lengths:
            (length,) = lengths
            if length not in (1, 2):
                raise ValueError("PatchSpec tuples must have 1 or 2 entries (1-D or 2-D)")
            if self.dims is not None and self.dims != length:
                raise ValueError(f"dims={self.dims} contradicts tuples of length {length}")

    @property
    def declared_dims(self) -> int | None:
        """Dimensionality fixed by ``dims`` or by tuple-valued fields, else None."""
        if self.dims is not None:
            return self.dims
        for v in (self.kernel_size, self.stride, self.padding, self.dilation):
            if not isinstance(v, int):
                return len(v)
        return None

    def resolved(self, dims: int) -> ResolvedSpec:
        """Per-axis integers for ``dims`` spatial axes."""
        return ResolvedSpec(
            kernel=_pair(self.kernel_size, dims, "kernel_size"),
            stride=_pair(self.stride, dims, "stride"),
            padding=_pair(self.padding, dims, "padding"),
            dilation=_pair(self.dilation, dims, "dilation"),
        )


@dataclass(frozen=True)
class ResolvedSpec:
    """A :class:`PatchSpec` with one integer per spatial axis."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]

    @property
    def dims(self) -> int:
        return len(self.kernel)

    def output_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        """Positions per axis: ⌊(S + 2p − d(f−1) − 1)/s⌋ + 1."""
        return tuple(
            (s + 2 * p - d * (f - 1) - 1) // st + 1
            for s, p, d, f, st in zip(
                spatial, self.padding, self.dilation, self.kernel, self.stride, strict=True
            )
        )


def as_signal_batch(X: torch.Tensor, spec: PatchSpec) -> tuple[torch.Tensor, ResolvedSpec]:
    """Reshape X to (n, C, H, W) or (n, C, L) by the layout rule; validate the geometry.

    Raises ValueError naming ``X`` or the spec field when the layout is ambiguous or the kernel
    does not fit.
    """
    declared = spec.declared_dims
    if X.ndim == 4:
        if declared == 1:
            raise ValueError(
                f"X has shape {tuple(X.shape)} (n, C, H, W images) but the PatchSpec is 1-D; "
                "use a 2-D kernel or pass (n, C, L) signals"
            )
        batch, dims = X, 2
    elif X.ndim == 3:
        if declared == 1:
            batch, dims = X, 1
        else:
            batch, dims = X.unsqueeze(1), 2
            kernel = _pair(spec.kernel_size, 2, "kernel_size")
            if declared is None and X.shape[1] < kernel[0] <= X.shape[2]:
                raise ValueError(
                    f"X of shape {tuple(X.shape)} is ambiguous: read as (n, H, W) images its "
                    f"height {X.shape[1]} is smaller than kernel_size {kernel[0]}; if these are "
                    "(n, C, L) multi-channel 1-D signals, pass PatchSpec(..., dims=1) "
                    "(or spec_dims=1 to fit)"
                )
    elif X.ndim == 2:
        if declared == 2:
            raise ValueError(
                f"X has shape {tuple(X.shape)} (n, L) 1-D signals but the PatchSpec is 2-D; "
                "pass images as (n, H, W) or (n, C, H, W)"
            )
        batch, dims = X.unsqueeze(1), 1
    else:
        raise ValueError(
            f"X must have shape (n, L), (n, H, W), (n, C, L) or (n, C, H, W); got {tuple(X.shape)}"
        )
    resolved = spec.resolved(dims)
    spatial = tuple(batch.shape[2:])
    for axis, (size, pad, dil, f) in enumerate(
        zip(spatial, resolved.padding, resolved.dilation, resolved.kernel, strict=True)
    ):
        if dil * (f - 1) + 1 > size + 2 * pad:
            raise ValueError(
                f"kernel_size {f} (dilation {dil}) is larger than the padded input "
                f"(size {size} + 2·padding {pad}) along spatial axis {axis}; "
                "use a smaller kernel_size or more padding"
            )
    return batch, resolved


def extract_patches(batch: torch.Tensor, spec: ResolvedSpec) -> torch.Tensor:
    """Patches of a (n, C, *spatial) batch → (n, K, h), h = C·Πkernel, K = Πpositions.

    ``patches[t, k] @ u == conv(batch[t:t+1], u.view(1, C, *kernel))`` at flattened position k.
    """
    if spec.dims == 1:
        cols = F.unfold(
            batch.unsqueeze(2),
            kernel_size=(1, spec.kernel[0]),
            dilation=(1, spec.dilation[0]),
            padding=(0, spec.padding[0]),
            stride=(1, spec.stride[0]),
        )
    else:
        cols = F.unfold(
            batch,
            kernel_size=spec.kernel,
            dilation=spec.dilation,
            padding=spec.padding,
            stride=spec.stride,
        )
    # cols: (n, C·Πf, K) → (n, K, h)
    return cols.transpose(1, 2).contiguous()


def patches_of(X: object, spec: PatchSpec, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Validated patch tensor (n, K, h) of data X in any accepted layout (module docstring)."""
    from .data import as_float_tensor

    batch, resolved = as_signal_batch(as_float_tensor(X, name="X", dtype=dtype), spec)
    return extract_patches(batch, resolved)
