"""The non-convex torch networks and their SGD/Adam baseline trainer.

:class:`TwoLayerCNN` is the network of SPEC §3: ``Conv(C → m, bias=False) → ReLU → sum/avg over
positions → Linear(m → c, bias=False)``; its training objective is
``ℓ(f(X); Y) + (β/2)(‖conv.weight‖² + ‖linear.weight‖²)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .losses import Loss, get_loss
from .patches import PatchSpec, ResolvedSpec, as_signal_batch

__all__ = ["BaselineResult", "PooledCNN", "TwoLayerCNN", "train_sgd"]


class TwoLayerCNN(nn.Module):
    """Conv → ReLU → global sum/avg pooling → Linear, no biases. Input (n, C, *spatial).

    Output (n,) when ``n_outputs == 1``, else (n, c).
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        spec: ResolvedSpec,
        *,
        pooling: str = "sum",
        n_outputs: int = 1,
    ) -> None:
        super().__init__()
        if pooling not in ("sum", "avg"):
            raise ValueError(f"pooling must be 'sum' or 'avg' for TwoLayerCNN; got {pooling!r}")
        conv_cls = nn.Conv1d if spec.dims == 1 else nn.Conv2d
        geometry: dict[str, Any] = {
            "kernel_size": spec.kernel,
            "stride": spec.stride,
            "padding": spec.padding,
            "dilation": spec.dilation,
        }
        self.conv = conv_cls(in_channels, width, bias=False, **geometry)
        self.linear = nn.Linear(width, n_outputs, bias=False)
        self.pooling = pooling
        self.spec = spec
        self.n_outputs = n_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.conv(x)).flatten(2)  # (n, m, K)
        pooled = z.sum(dim=2) if self.pooling == "sum" else z.mean(dim=2)
        out = self.linear(pooled)
        return out[:, 0] if self.n_outputs == 1 else out

    def set_weights(self, filters: torch.Tensor, output_weights: torch.Tensor) -> None:
        """Load flattened filters (m, h) and output weights (c, m)."""
        with torch.no_grad():
            self.conv.weight.copy_(filters.reshape(self.conv.weight.shape))
            self.linear.weight.copy_(output_weights)

    def weight_penalty(self, beta: float) -> torch.Tensor:
        """(β/2)(‖conv.weight‖² + ‖linear.weight‖²)."""
        return 0.5 * beta * (self.conv.weight.pow(2).sum() + self.linear.weight.pow(2).sum())

    @property
    def width(self) -> int:
        return int(self.conv.out_channels)

    def config(self) -> dict[str, object]:
        """Constructor arguments, JSON-able (saved beside the weights by convexcnn.io)."""
        return {
            "in_channels": int(self.conv.in_channels),
            "width": self.width,
            "spec": {
                "kernel": list(self.spec.kernel),
                "stride": list(self.spec.stride),
                "padding": list(self.spec.padding),
                "dilation": list(self.spec.dilation),
            },
            "pooling": self.pooling,
            "n_outputs": self.n_outputs,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TwoLayerCNN:
        """Inverse of :meth:`config` (weights uninitialized until loaded)."""
        spec = ResolvedSpec(**{k: tuple(v) for k, v in config["spec"].items()})
        return cls(
            config["in_channels"],
            config["width"],
            spec,
            pooling=config["pooling"],
            n_outputs=config["n_outputs"],
        )


class PooledCNN(TwoLayerCNN):
    """Conv → ReLU → pooling → Linear, no biases (SPEC §4). Input (n, C, *spatial).

    ``pool_size=None``: global pooling over all positions ("max", "avg" or "sum").
    Otherwise local windows of ``pool_size`` every ``pool_stride`` positions on the conv output
    grid (torch's ``max_pool``/``avg_pool``: no padding, floor mode; "sum" = avg·|window|),
    followed by a sum over the windows. Objective and weight penalty as :class:`TwoLayerCNN`.
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        spec: ResolvedSpec,
        *,
        pooling: str = "max",
        pool_size: tuple[int, ...] | None = None,
        pool_stride: tuple[int, ...] | None = None,
        n_outputs: int = 1,
    ) -> None:
        if pooling not in ("max", "avg", "sum"):
            raise ValueError(f"pooling must be 'max', 'avg' or 'sum'; got {pooling!r}")
        super().__init__(in_channels, width, spec, pooling="sum", n_outputs=n_outputs)
        self.pooling = pooling
        self.pool_size = pool_size
        self.pool_stride = pool_size if pool_stride is None else pool_stride

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled hidden features (n, m): Σ over windows of each window's max/avg/sum."""
        z = torch.relu(self.conv(x))  # (n, m, *grid)
        if self.pool_size is None:
            flat = z.flatten(2)
            if self.pooling == "max":
                return flat.amax(dim=2)
            return flat.sum(dim=2) if self.pooling == "sum" else flat.mean(dim=2)
        one_d = self.spec.dims == 1
        stride = self.pool_stride or self.pool_size
        if self.pooling == "max":
            pool = nn.functional.max_pool1d if one_d else nn.functional.max_pool2d
            windows = pool(z, self.pool_size, stride)
        else:
            avg = nn.functional.avg_pool1d if one_d else nn.functional.avg_pool2d
            windows = avg(z, self.pool_size, stride)
            if self.pooling == "sum":
                windows = windows * math.prod(self.pool_size)
        return windows.flatten(2).sum(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(self.pooled(x))
        return out[:, 0] if self.n_outputs == 1 else out

    def config(self) -> dict[str, object]:
        """Constructor arguments, JSON-able (saved beside the weights by convexcnn.io)."""
        return {
            "in_channels": int(self.conv.in_channels),
            "width": self.width,
            "spec": {
                "kernel": list(self.spec.kernel),
                "stride": list(self.spec.stride),
                "padding": list(self.spec.padding),
                "dilation": list(self.spec.dilation),
            },
            "pooling": self.pooling,
            "pool_size": None if self.pool_size is None else list(self.pool_size),
            "pool_stride": None if self.pool_stride is None else list(self.pool_stride),
            "n_outputs": self.n_outputs,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PooledCNN:
        """Inverse of :meth:`config` (weights uninitialized until loaded)."""
        spec = ResolvedSpec(**{k: tuple(v) for k, v in config["spec"].items()})
        size, stride = config["pool_size"], config["pool_stride"]
        return cls(
            config["in_channels"],
            config["width"],
            spec,
            pooling=config["pooling"],
            pool_size=None if size is None else tuple(size),
            pool_stride=None if stride is None else tuple(stride),
            n_outputs=config["n_outputs"],
        )


@dataclass
class BaselineResult:
    """One gradient-descent run on the non-convex objective.

    ``history[e]`` is the full training objective after epoch e (``history[0]``: at init),
    ``times[e]`` the wall-clock seconds at that point (objective evaluation excluded).
    """

    network: nn.Module
    optimizer: str
    lr: float
    seed: int
    history: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    @property
    def objective(self) -> float:
        return self.history[-1]

    def time_to_within(self, rel: float) -> float:
        """Seconds until the objective first came within ``rel`` (relative) of its final value."""
        target = self.objective * (1 + rel) + 1e-15
        for value, t in zip(self.history, self.times, strict=True):
            if value <= target:
                return t
        return self.times[-1]


def full_objective(
    net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss: Loss, beta: float
) -> torch.Tensor:
    """ℓ(net(X); Y) + net.weight_penalty(β), differentiable."""
    out = net(inputs)
    if out.ndim == 1:
        out = out[:, None]
    return loss.value(out, targets) + net.weight_penalty(beta)  # type: ignore[operator]


def train_network(
    net: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    loss: Loss,
    beta: float,
    optimizer: str = "adam",
    lr: float = 1e-2,
    epochs: int = 500,
    batch_size: int | None = None,
    seed: int = 0,
    project: Callable[[nn.Module], None] | None = None,
    time_budget: float | None = None,
    before_step: Callable[[nn.Module], None] | None = None,
    threads: int | None = None,
) -> BaselineResult:
    """Minimize the full objective of ``net`` by Adam/SGD (momentum 0.9), recording history.

    ``threads``: torch intra-op threads during training (restored after). None picks 1 for
    small problems (inputs × parameters < 10⁷), where thread hand-off costs far more than the
    arithmetic (measured here: 40× slower with 2 threads on the tiny reference instance).

    The optimizer works on objective/n (same minimizers, learning rates independent of n).
    ``project`` is applied after every step (e.g. to keep filters on a norm ball);
    ``before_step`` after the backward pass, before the step (e.g. to project gradients onto
    the tangent space of a constraint manifold).
    """
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd'; got {optimizer!r}")
    if threads is None:
        size = inputs.numel() * sum(p.numel() for p in net.parameters())
        threads = 1 if size < 10**7 else torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train_loop(
            net,
            inputs,
            targets,
            loss,
            beta,
            optimizer,
            lr,
            epochs,
            batch_size,
            seed,
            project,
            time_budget,
            before_step,
        )
    finally:
        torch.set_num_threads(previous)


def _train_loop(
    net: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss: Loss,
    beta: float,
    optimizer: str,
    lr: float,
    epochs: int,
    batch_size: int | None,
    seed: int,
    project: Callable[[nn.Module], None] | None,
    time_budget: float | None,
    before_step: Callable[[nn.Module], None] | None,
) -> BaselineResult:
    n = inputs.shape[0]
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in net.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer = (
        torch.optim.Adam(params, lr=lr)
        if optimizer == "adam"
        else torch.optim.SGD(params, lr=lr, momentum=0.9)
    )
    result = BaselineResult(network=net, optimizer=optimizer, lr=lr, seed=seed)
    with torch.no_grad():
        result.history.append(float(full_objective(net, inputs, targets, loss, beta)))
    result.times.append(0.0)
    elapsed = 0.0
    bs = n if batch_size is None else min(batch_size, n)
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(n, generator=gen) if bs < n else None
        for b in range(0, n, bs):
            idx = order[b : b + bs] if order is not None else slice(None)
            opt.zero_grad(set_to_none=True)
            xb, yb = inputs[idx], targets[idx]
            out = net(xb)
            if out.ndim == 1:
                out = out[:, None]
            # mini-batch estimate of objective/n
            value = loss.value(out, yb) / xb.shape[0] + net.weight_penalty(beta) / n  # type: ignore[operator]
            value.backward()
            if before_step is not None:
                with torch.no_grad():
                    before_step(net)
            opt.step()
            if project is not None:
                with torch.no_grad():
                    project(net)
        elapsed += time.perf_counter() - start
        with torch.no_grad():
            current = float(full_objective(net, inputs, targets, loss, beta))
        result.history.append(current)
        result.times.append(elapsed)
        if not torch.isfinite(torch.tensor(current)):
            break
        if time_budget is not None and elapsed > time_budget:
            break
    return result


def train_sgd(
    X: object,
    y: object,
    *,
    width: int,
    optimizer: str = "adam",
    lr: float = 1e-2,
    epochs: int = 500,
    beta: float = 1e-3,
    seed: int = 0,
    kernel_size: int | tuple[int, ...] = 3,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] = 0,
    pooling: str = "sum",
    loss: str | Loss = "squared",
    batch_size: int | None = None,
    spec_dims: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> BaselineResult:
    """Train the two-layer CNN of SPEC §3 by gradient descent on the same objective as
    :func:`convexcnn.fit` (weight decay (β/2)Σ‖·‖² on both layers), from a seeded default init.

    X in any layout :func:`convexcnn.fit` accepts; y as for fit (±1 for binary, (n,) or (n, c)).
    """
    from .data import as_float_tensor

    loss_obj = get_loss(loss)
    if not beta > 0:
        raise ValueError(f"beta must be > 0; got {beta!r}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer; got {width!r}")
    spec = PatchSpec(kernel_size, stride=stride, padding=padding, dims=spec_dims)
    batch, resolved = as_signal_batch(as_float_tensor(X, name="X", dtype=dtype), spec)
    Y = as_float_tensor(y, name="y", dtype=dtype)
    Y = Y[:, None] if Y.ndim == 1 else Y
    if Y.shape[0] != batch.shape[0]:
        raise ValueError(f"y has {Y.shape[0]} rows but X has {batch.shape[0]} samples")
    torch.manual_seed(seed)  # nn.Module init uses the global generator
    net = TwoLayerCNN(batch.shape[1], width, resolved, pooling=pooling, n_outputs=Y.shape[1]).to(
        dtype
    )
    return train_network(
        net,
        batch,
        Y,
        loss=loss_obj,
        beta=beta,
        optimizer=optimizer,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
    )


# ----- three-layer CNN with two ReLU layers (SPEC §8) ------------------------------------

__all__ += ["ThreeLayerCNN"]


class ThreeLayerCNN(nn.Module):
    """Conv(C → m·m1) → ReLU → sum/avg pool → block-diagonal Linear(m·m1 → m) → ReLU →
    Linear(m → c), no biases (SPEC §8, "branch-owned filters"). Input (n, C, *spatial).

    Branch j owns conv channels j·m1 … j·m1+m1−1 (its filters U_j = (u_j1, …, u_jm1)); the
    block-diagonal layer is a grouped 1×1 convolution (groups = m, weight (m, m1, 1) = w1).
    ``output_mask`` (c, m) restricts which outputs a branch feeds (block-structured multi-output;
    all ones by default). Objective: ℓ(f(X); Y) + (β/2)(‖w1‖² + ‖w2‖²) subject to
    ``‖U_j‖_F ≤ 1`` ("path") or ``‖u_jl‖ ≤ 1`` ("unit"), kept by :meth:`project`.
    Output (n,) when ``n_outputs == 1``, else (n, c).
    """

    output_mask: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        width: int,
        branch_width: int,
        spec: ResolvedSpec,
        *,
        pooling: str = "sum",
        regularization: str = "path",
        n_outputs: int = 1,
    ) -> None:
        super().__init__()
        if pooling not in ("sum", "avg"):
            raise ValueError(f"pooling must be 'sum' or 'avg' for ThreeLayerCNN; got {pooling!r}")
        if regularization not in ("path", "unit"):
            raise ValueError(f"regularization must be 'path' or 'unit'; got {regularization!r}")
        conv_cls = nn.Conv1d if spec.dims == 1 else nn.Conv2d
        geometry: dict[str, Any] = {
            "kernel_size": spec.kernel,
            "stride": spec.stride,
            "padding": spec.padding,
            "dilation": spec.dilation,
        }
        self.conv = conv_cls(in_channels, width * branch_width, bias=False, **geometry)
        self.block = nn.Conv1d(width * branch_width, width, 1, groups=width, bias=False)
        self.linear = nn.Linear(width, n_outputs, bias=False)
        self.register_buffer("output_mask", torch.ones(n_outputs, width))
        self.pooling = pooling
        self.regularization = regularization
        self.spec = spec
        self.width = width
        self.branch_width = branch_width
        self.n_outputs = n_outputs

    def branch_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled first-layer activations a(u_jl), shape (n, m·m1)."""
        z = torch.relu(self.conv(x)).flatten(2)
        return z.sum(dim=2) if self.pooling == "sum" else z.mean(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.branch_inputs(x)
        hidden = torch.relu(self.block(pooled[:, :, None])[:, :, 0])  # (n, m)
        out = hidden @ (self.linear.weight * self.output_mask).T
        return out[:, 0] if self.n_outputs == 1 else out

    @property
    def w1(self) -> torch.Tensor:
        """Second-layer weights (m, m1)."""
        return self.block.weight[:, :, 0]

    def filters(self) -> torch.Tensor:
        """First-layer filters, (m, m1, h) with h = C·Πkernel."""
        return self.conv.weight.reshape(self.width, self.branch_width, -1)

    def weight_penalty(self, beta: float) -> torch.Tensor:
        """(β/2)(‖w1‖² + ‖w2‖²) (w2 masked); the filters are constrained instead."""
        w2 = self.linear.weight * self.output_mask
        return 0.5 * beta * (self.block.weight.pow(2).sum() + w2.pow(2).sum())

    def path_penalty(self, beta: float) -> torch.Tensor:
        """β Σ_j Σ_l ‖w2_j‖·|w1_jl|·‖u_jl‖, the ℓ2 path norm the "path" constraint encodes."""
        w2 = (self.linear.weight * self.output_mask).norm(dim=0)  # (m,)
        return beta * (w2[:, None] * self.w1.abs() * self.filters().norm(dim=2)).sum()

    def constraint_norms(self) -> torch.Tensor:
        """‖U_j‖_F per branch (m,) for "path", ‖u_jl‖ per filter (m, m1) for "unit"."""
        norms = self.filters().norm(dim=2)
        return norms.norm(dim=1) if self.regularization == "path" else norms

    def project(self) -> None:
        """Rescale filters onto the constraint set (‖U_j‖_F ≤ 1 or ‖u_jl‖ ≤ 1), in place."""
        with torch.no_grad():
            U = self.filters()
            if self.regularization == "path":
                scale = U.flatten(1).norm(dim=1).clamp_min(1.0)[:, None, None]
            else:
                scale = U.norm(dim=2, keepdim=True).clamp_min(1.0)
            self.conv.weight.copy_((U / scale).reshape(self.conv.weight.shape))

    def config(self) -> dict[str, object]:
        """Constructor arguments, JSON-able (for :func:`convexcnn.io.save_network`)."""
        return {
            "in_channels": int(self.conv.in_channels),
            "width": self.width,
            "branch_width": self.branch_width,
            "spec": {
                "kernel": list(self.spec.kernel),
                "stride": list(self.spec.stride),
                "padding": list(self.spec.padding),
                "dilation": list(self.spec.dilation),
            },
            "pooling": self.pooling,
            "regularization": self.regularization,
            "n_outputs": self.n_outputs,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ThreeLayerCNN:
        """Inverse of :meth:`config` (weights uninitialized until loaded)."""
        spec = ResolvedSpec(**{k: tuple(v) for k, v in config["spec"].items()})
        return cls(
            config["in_channels"],
            config["width"],
            config["branch_width"],
            spec,
            pooling=config["pooling"],
            regularization=config["regularization"],
            n_outputs=config["n_outputs"],
        )

    def set_weights(
        self,
        filters: torch.Tensor,
        w1: torch.Tensor,
        w2: torch.Tensor,
        output_mask: torch.Tensor | None = None,
    ) -> None:
        """Load filters (m, m1, h), w1 (m, m1), w2 (c, m) and optionally the output mask."""
        with torch.no_grad():
            self.conv.weight.copy_(filters.reshape(self.conv.weight.shape))
            self.block.weight.copy_(w1.reshape(self.block.weight.shape))
            self.linear.weight.copy_(w2)
            if output_mask is not None:
                self.output_mask.copy_(output_mask)


# ----- linear and circular CNNs (SPEC §6, §7) ---------------------------------------------

__all__ += ["CircularCNN", "CircularConv", "LinearCNN", "LinearCircularCNN"]


class LinearCNN(nn.Module):
    """Conv (no ReLU) → sum over positions or flatten → Linear, no biases (SPEC §6).

    ``pooling="sum"``: ``f = W_out · Σ_k conv(x)[:, k]``; ``"flatten"``: one output weight per
    (filter, position), ``Linear(width·K → c)`` on the flattened conv output (n, m·K).
    Objective ``ℓ + (β/2)(‖conv.weight‖² + ‖linear.weight‖²)``. Output (n,) or (n, c).
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        spec: ResolvedSpec,
        *,
        pooling: str = "sum",
        n_positions: int = 1,
        n_outputs: int = 1,
    ) -> None:
        super().__init__()
        if pooling not in ("sum", "flatten"):
            raise ValueError(f"pooling must be 'sum' or 'flatten' for LinearCNN; got {pooling!r}")
        conv_cls: Any = nn.Conv1d if spec.dims == 1 else nn.Conv2d
        geometry: dict[str, Any] = {
            "kernel_size": spec.kernel,
            "stride": spec.stride,
            "padding": spec.padding,
            "dilation": spec.dilation,
        }
        self.conv = conv_cls(in_channels, width, bias=False, **geometry)
        features = width if pooling == "sum" else width * n_positions
        self.linear = nn.Linear(features, n_outputs, bias=False)
        self.pooling = pooling
        self.n_outputs = n_outputs
        self.spec = spec
        self.n_positions = n_positions

    def config(self) -> dict[str, object]:
        """Constructor arguments, JSON-able (for :func:`convexcnn.io.save_network`)."""
        return {
            "in_channels": int(self.conv.in_channels),
            "width": int(self.conv.out_channels),
            "spec": {
                "kernel": list(self.spec.kernel),
                "stride": list(self.spec.stride),
                "padding": list(self.spec.padding),
                "dilation": list(self.spec.dilation),
            },
            "pooling": self.pooling,
            "n_positions": self.n_positions,
            "n_outputs": self.n_outputs,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LinearCNN:
        """Inverse of :meth:`config` (weights uninitialized until loaded)."""
        spec = ResolvedSpec(**{k: tuple(v) for k, v in config["spec"].items()})
        return cls(
            config["in_channels"],
            config["width"],
            spec,
            pooling=config["pooling"],
            n_positions=config["n_positions"],
            n_outputs=config["n_outputs"],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x).flatten(2)  # (n, m, K)
        features = z.sum(dim=2) if self.pooling == "sum" else z.flatten(1)
        out = self.linear(features)
        return out[:, 0] if self.n_outputs == 1 else out

    def weight_penalty(self, beta: float) -> torch.Tensor:
        """(β/2)(‖conv.weight‖² + ‖linear.weight‖²)."""
        return 0.5 * beta * (self.conv.weight.pow(2).sum() + self.linear.weight.pow(2).sum())


class CircularConv(nn.Module):
    """Full-size circular cross-correlation ``out[k] = Σ_m u[m]·x[(k + m) mod spatial]``
    (multi-indices k, m; sum over input channels too): the row vector ``xᵀ·circ(u)`` of SPEC §7.

    A ``Conv{1,2}d(kernel_size=spatial, padding=spatial//2, padding_mode="circular")``, cropped
    to ``spatial`` and rolled back by the padding. Weight (out, in/groups, *spatial). Depthwise
    layers (groups > 1) compute the same correlation by FFT, ``F⁻¹(conj(F u)·F x)``: torch's
    grouped float64 CPU convolution loops over groups and is ~100× slower.
    """

    def __init__(
        self, in_channels: int, out_channels: int, spatial: tuple[int, ...], *, groups: int = 1
    ) -> None:
        super().__init__()
        conv_cls: Any = nn.Conv1d if len(spatial) == 1 else nn.Conv2d
        self.spatial = tuple(spatial)
        self.pads = tuple(s // 2 for s in spatial)
        self.conv = conv_cls(
            in_channels,
            out_channels,
            kernel_size=self.spatial,
            padding=self.pads,
            padding_mode="circular",
            groups=groups,
            bias=False,
        )

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(-len(self.spatial), 0))
        if self.conv.groups > 1:
            if self.conv.groups != x.shape[1] or self.conv.groups != self.conv.out_channels:
                raise ValueError("grouped CircularConv supports depthwise layers only")
            xh = torch.fft.rfftn(x, dim=dims)
            uh = torch.fft.rfftn(self.conv.weight[:, 0], dim=dims)
            return torch.fft.irfftn(xh * uh.conj(), s=self.spatial, dim=dims)
        out = self.conv(x)
        if len(self.spatial) == 1:
            out = out[..., : self.spatial[0]]
        else:
            out = out[..., : self.spatial[0], : self.spatial[1]]
        return torch.roll(out, shifts=tuple(-p for p in self.pads), dims=dims)


class LinearCircularCNN(nn.Module):
    """Two-layer linear circular CNN (SPEC §6): ``f = Σ_j xᵀ circ(u_j) w_j``.

    :class:`CircularConv` (C → m) → flatten (n, m·d) → ``Linear(m·d → c)``; objective
    ``ℓ + (β/2)(‖u‖² + ‖w‖²)``.
    """

    def __init__(
        self, in_channels: int, spatial: tuple[int, ...], width: int, *, n_outputs: int = 1
    ) -> None:
        super().__init__()
        d = math.prod(spatial)
        self.conv = CircularConv(in_channels, width, spatial)
        self.linear = nn.Linear(width * d, n_outputs, bias=False)
        self.n_outputs = n_outputs
        self.in_channels, self.spatial, self.width = in_channels, tuple(spatial), width

    def config(self) -> dict[str, object]:
        """Constructor arguments, JSON-able (for :func:`convexcnn.io.save_network`)."""
        return {
            "in_channels": self.in_channels,
            "spatial": list(self.spatial),
            "width": self.width,
            "n_outputs": self.n_outputs,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LinearCircularCNN:
        """Inverse of :meth:`config`."""
        return cls(
            config["in_channels"],
            tuple(config["spatial"]),
            config["width"],
            n_outputs=config["n_outputs"],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(self.conv(x).flatten(1))
        return out[:, 0] if self.n_outputs == 1 else out

    def weight_penalty(self, beta: float) -> torch.Tensor:
        return 0.5 * beta * (self.conv.weight.pow(2).sum() + self.linear.weight.pow(2).sum())


class CircularCNN(nn.Module):
    """Circular CNN with one ReLU (SPEC §7), depth L ≥ 3, width m:

        f(x) = Σ_j w2_j · (xᵀ circ(u_1j) ⋯ circ(u_(L−2)j) w1_j)_+      (one output per class)

    Layers: :class:`CircularConv` (C → m), then L − 3 depthwise ones (m → m, groups=m), a
    per-filter dot product with ``w1`` (m, d), ReLU, ``Linear(m → c)`` holding w2. The inner
    filters are constrained, not decayed: ``inner_norm="l2"``: ‖u_l‖₂ ≤ 1; ``"schatten"``:
    ‖F u_l‖_p ≤ 1 with p = 2(L − 2) (unitary DFT; the same as ℓ2 for L = 3). Weight penalty
    ``(β/2)(‖w1‖² + ‖w2‖²)``.
    """

    def __init__(
        self,
        in_channels: int,
        spatial: tuple[int, ...],
        width: int,
        *,
        depth: int = 3,
        inner_norm: str = "schatten",
        n_outputs: int = 1,
    ) -> None:
        super().__init__()
        if depth < 3:
            raise ValueError(f"depth must be ≥ 3 for CircularCNN; got {depth!r}")
        if inner_norm not in ("schatten", "l2"):
            raise ValueError(f"inner_norm must be 'schatten' or 'l2'; got {inner_norm!r}")
        self.spatial = tuple(spatial)
        self.depth = depth
        self.inner_norm = inner_norm
        self.n_outputs = n_outputs
        convs = [CircularConv(in_channels, width, self.spatial)]
        convs += [CircularConv(width, width, self.spatial, groups=width) for _ in range(depth - 3)]
        self.convs = nn.ModuleList(convs)
        d = math.prod(self.spatial)
        self.w1 = nn.Parameter(torch.randn(width, d) / math.sqrt(d))
        self.linear = nn.Linear(width, n_outputs, bias=False)
        self.in_channels, self.width = in_channels, width
        with torch.no_grad():
            self.project_filters()

    def config(self) -> dict[str, object]:
        """Constructor arguments, JSON-able (for :func:`convexcnn.io.save_network`)."""
        return {
            "in_channels": self.in_channels,
            "spatial": list(self.spatial),
            "width": self.width,
            "depth": self.depth,
            "inner_norm": self.inner_norm,
            "n_outputs": self.n_outputs,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CircularCNN:
        """Inverse of :meth:`config`."""
        return cls(
            config["in_channels"],
            tuple(config["spatial"]),
            config["width"],
            depth=config["depth"],
            inner_norm=config["inner_norm"],
            n_outputs=config["n_outputs"],
        )

    @property
    def p(self) -> float:
        """Exponent of the inner-filter bound: 2(L − 2) for "schatten", 2 for "l2"."""
        return 2.0 * (self.depth - 2) if self.inner_norm == "schatten" else 2.0

    def inner_filters(self) -> list[torch.Tensor]:
        """The L − 2 constrained filter tensors, each (m, C_in, *spatial)."""
        return [conv.weight for conv in self.convs]  # type: ignore[misc]

    def filter_norms(self, u: torch.Tensor) -> torch.Tensor:
        """Per-filter constraint value (m,): ‖u‖₂ or ‖F u‖_p."""
        if self.p == 2.0:
            return u.flatten(1).norm(dim=1)
        dims = tuple(range(-len(self.spatial), 0))
        uh = torch.fft.fftn(u, dim=dims, norm="ortho")
        return uh.abs().pow(self.p).flatten(1).sum(dim=1).pow(1.0 / self.p)

    def max_filter_norm(self) -> float:
        with torch.no_grad():
            return max(float(self.filter_norms(u).max()) for u in self.inner_filters())

    def project_filters(self) -> None:
        """Rescale every inner filter into its ball (u ← u / max(1, norm)). Call under no_grad."""
        for u in self.inner_filters():
            scale = self.filter_norms(u).clamp_min(1.0)
            u.div_(scale.reshape(-1, *([1] * (u.ndim - 1))))

    def retract_filters(self) -> None:
        """Radial retraction onto the sphere (u ← u / norm). Call under no_grad."""
        for u in self.inner_filters():
            scale = self.filter_norms(u).clamp_min(1e-300)
            u.div_(scale.reshape(-1, *([1] * (u.ndim - 1))))

    def tangent_gradients(self) -> None:
        """Project each inner filter's gradient onto the tangent space of its p-sphere
        {‖F u‖_p = 1}: remove the component along ∇‖F u‖_p^p ∝ Re F⁻¹(|û|^{p−2} û)."""
        dims = tuple(range(-len(self.spatial), 0))
        for u in self.inner_filters():
            if u.grad is None:
                continue
            uh = torch.fft.fftn(u, dim=dims, norm="ortho")
            normal = torch.fft.ifftn(uh.abs().pow(self.p - 2) * uh, dim=dims, norm="ortho").real
            n_flat, g_flat = normal.flatten(1), u.grad.flatten(1)
            coef = (n_flat * g_flat).sum(dim=1) / n_flat.pow(2).sum(dim=1).clamp_min(1e-300)
            u.grad.sub_(coef.reshape(-1, *([1] * (u.ndim - 1))) * normal)

    def constraint_callbacks(
        self,
    ) -> tuple[Callable[[nn.Module], None] | None, Callable[[nn.Module], None]]:
        """(before_step, project) for :func:`train_network`: tangent-space gradient + retraction
        onto the p-sphere for Schatten-bounded deep stacks (L ≥ 4), else projection onto the
        ball (‖u‖ ≤ 1)."""
        if self.inner_norm == "schatten" and self.depth >= 4:
            return (
                lambda net: net.tangent_gradients(),
                lambda net: net.retract_filters(),
            )
        return None, lambda net: net.project_filters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in self.convs:
            h = conv(h)
        pre = torch.einsum("nmd,md->nm", h.flatten(2), self.w1)
        out = self.linear(torch.relu(pre))
        return out[:, 0] if self.n_outputs == 1 else out

    def weight_penalty(self, beta: float) -> torch.Tensor:
        """(β/2)(‖w1‖² + ‖w2‖²); the inner filters are constrained instead."""
        return 0.5 * beta * (self.w1.pow(2).sum() + self.linear.weight.pow(2).sum())

    def set_weights(self, filters: list[torch.Tensor], w1: torch.Tensor, w2: torch.Tensor) -> None:
        """Load the L − 2 inner filter tensors, w1 (m, d) and w2 (c, m)."""
        with torch.no_grad():
            for u, value in zip(self.inner_filters(), filters, strict=True):
                u.copy_(value.reshape(u.shape))
            self.w1.copy_(w1)
            self.linear.weight.copy_(w2)
