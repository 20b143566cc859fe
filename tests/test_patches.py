"""Patch extraction equals conv1d/conv2d at every position (property test)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from convexcnn.patches import PatchSpec, as_signal_batch, extract_patches, patches_of


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3),
    channels=st.integers(1, 3),
    height=st.integers(3, 9),
    width=st.integers(3, 9),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    seed=st.integers(0, 10_000),
)
def test_patches_match_conv2d(
    n: int,
    channels: int,
    height: int,
    width: int,
    kernel: int,
    stride: int,
    padding: int,
    dilation: int,
    seed: int,
) -> None:
    if dilation * (kernel - 1) + 1 > min(height, width) + 2 * padding:
        return
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, channels, height, width, generator=gen, dtype=torch.float64)
    spec = PatchSpec(kernel, stride=stride, padding=padding, dilation=dilation)
    batch, resolved = as_signal_batch(X, spec)
    patches = extract_patches(batch, resolved)
    u = torch.randn(channels * kernel * kernel, generator=gen, dtype=torch.float64)
    conv = F.conv2d(
        X, u.view(1, channels, kernel, kernel), stride=stride, padding=padding, dilation=dilation
    )
    assert patches.shape == (n, conv.shape[2] * conv.shape[3], channels * kernel * kernel)
    torch.testing.assert_close(patches @ u, conv.reshape(n, -1), rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3),
    channels=st.integers(1, 3),
    length=st.integers(2, 12),
    kernel=st.integers(1, 4),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    seed=st.integers(0, 10_000),
)
def test_patches_match_conv1d(
    n: int, channels: int, length: int, kernel: int, stride: int, padding: int, seed: int
) -> None:
    if kernel > length + 2 * padding:
        return
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, channels, length, generator=gen, dtype=torch.float64)
    spec = PatchSpec(kernel, stride=stride, padding=padding, dims=1)
    patches = extract_patches(*as_signal_batch(X, spec))
    u = torch.randn(channels * kernel, generator=gen, dtype=torch.float64)
    conv = F.conv1d(X, u.view(1, channels, kernel), stride=stride, padding=padding)
    torch.testing.assert_close(patches @ u, conv.reshape(n, -1), rtol=1e-12, atol=1e-12)


def test_layouts() -> None:
    assert patches_of(torch.zeros(4, 10), PatchSpec(3)).shape == (4, 8, 3)
    assert patches_of(torch.zeros(4, 6, 6), PatchSpec(3)).shape == (4, 16, 9)
    assert patches_of(torch.zeros(4, 2, 10), PatchSpec(3, dims=1)).shape == (4, 8, 6)
    assert patches_of(torch.zeros(4, 2, 6, 6), PatchSpec((3, 2))).shape == (4, 20, 12)


@pytest.mark.parametrize(
    ("shape", "spec", "word"),
    [
        ((4, 2, 30), PatchSpec(5), "ambiguous"),
        ((4, 10), PatchSpec(11), "kernel_size"),
        ((4, 10), PatchSpec((3, 3)), "2-D"),
        ((4, 1, 8, 8), PatchSpec(3, dims=1), "1-D"),
        ((4,), PatchSpec(3), "X must have shape"),
    ],
)
def test_layout_errors(shape: tuple[int, ...], spec: PatchSpec, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        patches_of(torch.zeros(shape), spec)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 0},
        {"kernel_size": 3, "stride": 0},
        {"kernel_size": 3, "padding": -1},
        {"kernel_size": (3, 3), "stride": (1, 1, 1)},
        {"kernel_size": 3, "dims": 3},
    ],
)
def test_spec_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PatchSpec(**kwargs)  # type: ignore[arg-type]
