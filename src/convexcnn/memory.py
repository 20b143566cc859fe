"""Memory estimates computed *before* any large allocation (DESIGN: state every large size).

The two-layer program (SPEC §3) has n samples, K patch positions, filter size h, P patterns and
c outputs. Its tensors:

    patches M          n·K·h floats
    masks D            P·n·K bools (1 byte each)
    precomputed A_i    P·n·h floats           (optional; else recomputed chunk by chunk)
    variable W         c·2·P·h floats          (a first-order solver keeps ~8 copies)
    multipliers λ      B·n·K floats            (B = blocks that ever had a nonzero iterate, ≤ 2cP)
    chunk buffers      a few × chunk_bytes

:func:`check_fits` raises :class:`MemoryLimitError` naming the size and the knobs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "MemoryEstimate",
    "MemoryLimitError",
    "available_memory",
    "check_fits",
    "format_bytes",
    "two_layer_estimate",
]

#: Target size of one chunk buffer of the hand-written operators (fits the L2/L3 caches).
DEFAULT_CHUNK_BYTES = 4 * 2**20

#: Fraction of the available memory a fit may plan to use.
MEMORY_FRACTION = 0.6


class MemoryLimitError(ValueError):
    """A program would not fit in memory; the message names the size and the knobs."""


def format_bytes(size: float) -> str:
    """Human-readable size (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


def available_memory(device: torch.device | str | None = None) -> int:
    """Bytes usable on ``device``: free CUDA memory, or the host's available RAM."""
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 * 2**30


@dataclass
class MemoryEstimate:
    """Planned allocations in bytes, by name; ``total`` is their sum."""

    items: dict[str, int] = field(default_factory=dict)
    context: str = ""

    @property
    def total(self) -> int:
        return int(sum(self.items.values()))

    def describe(self) -> str:
        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in self.items.items() if v)
        return f"{format_bytes(self.total)} ({parts})"


def two_layer_estimate(
    n: int,
    K: int,
    h: int,
    P: int,
    c: int = 1,
    *,
    dtype: torch.dtype = torch.float64,
    precompute: bool = True,
    multiplier_blocks: int = 0,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    solver_copies: int = 8,
) -> MemoryEstimate:
    """Bytes a two-layer fit plans to hold (shapes in the module docstring).

    ``multiplier_blocks`` is the number of blocks whose (n, K) multipliers are stored (0 for
    unconstrained programs, up to 2·c·P for the augmented Lagrangian's worst case).
    """
    f = torch.empty((), dtype=dtype).element_size()
    items = {
        "patches": n * K * h * f,
        "masks": P * n * K,
        "A_i (precomputed)": P * n * h * f if precompute else 0,
        "iterates": solver_copies * c * 2 * P * h * f,
        "multipliers": multiplier_blocks * n * K * f,
        "chunk buffers": 4 * chunk_bytes,
    }
    return MemoryEstimate(items, context=f"two-layer program n={n}, K={K}, h={h}, P={P}, c={c}")


def check_fits(
    estimate: MemoryEstimate,
    *,
    limit: int | None = None,
    device: torch.device | str | None = None,
) -> None:
    """Raise :class:`MemoryLimitError` when ``estimate.total`` exceeds ``limit`` (default: 60 %
    of the available memory on ``device``)."""
    budget = int(MEMORY_FRACTION * available_memory(device)) if limit is None else int(limit)
    if estimate.total > budget:
        raise MemoryLimitError(
            f"{estimate.context} needs about {estimate.describe()}, more than the "
            f"{format_bytes(budget)} available. Knobs: fewer patterns (patterns=...), "
            "dtype=torch.float32 (halves every float), a smaller chunk size, a larger stride "
            "or smaller kernel (fewer patch positions K), or fewer training samples."
        )
