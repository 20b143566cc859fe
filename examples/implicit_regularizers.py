"""What each architecture's implicit convex regularizer does, one figure per model.

Fits every architecture of docs/architectures.md on small data by its exact convex program and
plots the structure its regularizer induces (group sparsity, low rank, spectral sparsity, and the
gap of the ℓ2-bounded deep circular network). Writes PNGs to docs/img/ (or ``--out``).

    python examples/implicit_regularizers.py [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from convexcnn import PatternSet, fit, implicit_regularizer
from convexcnn.data import load_digits_binary
from convexcnn.losses import get_loss
from convexcnn.networks import CircularCNN, train_network

ROOT = Path(__file__).resolve().parents[1]


def signals(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """1-D signals whose target is a two-branch ReLU of two pure frequencies."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    t = np.arange(d)
    a, b = np.cos(2 * np.pi * 2 * t / d), np.sin(2 * np.pi * 5 * t / d)
    y = np.maximum(X @ a, 0) - np.maximum(X @ b, 0) + 0.1 * rng.standard_normal(n)
    return X, y


def title(ax: plt.Axes, architecture: str, pooling: str | None = None, **options: object) -> None:
    reg = implicit_regularizer(architecture, pooling, **options)
    kind = "exact" if reg.exact else "lower bound"
    ax.set_title(
        f"{architecture} ({reg.pooling}): {reg.name}\n{reg.formula[:70]} [{kind}]", fontsize=8
    )


def two_layer_group_l2(out: Path) -> None:
    X, y = signals(40, 12, 0)
    result = fit(X, y, architecture="two_layer", kernel_size=3, beta=0.5, patterns=40)
    norms = result.solution.W.norm(dim=-1).flatten().sort(descending=True).values.numpy()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.semilogy(np.arange(1, len(norms) + 1), np.maximum(norms, 1e-12), "o-", ms=3)
    ax.set_xlabel("block (sorted)")
    ax.set_ylabel("‖c_i‖₂")
    title(ax, "two_layer", "sum")
    big = int((norms > 1e-6 * norms.max()).sum())
    ax.text(0.4, 0.85, f"{big} of {len(norms)} blocks > 1e-6·max", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(out / "two_layer_group_l2.png", dpi=120)
    plt.close(fig)


def linear_sum_l2(out: Path) -> None:
    X, y = signals(40, 12, 1)
    betas = np.geomspace(0.1, 300, 12)
    filters = []
    for beta in betas:
        W = fit(X, y, architecture="linear", pooling="sum", kernel_size=5, beta=beta).solution.W
        filters.append(W[0].numpy())
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.semilogx(betas, np.array(filters), "-")
    ax.set_xlabel("β")
    ax.set_ylabel("filter entries z")
    title(ax, "linear", "sum")
    fig.tight_layout()
    fig.savefig(out / "linear_sum_l2.png", dpi=120)
    plt.close(fig)


def linear_flatten_nuclear(out: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = digits
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for beta in (0.1, 1.0, 5.0):
        result = fit(X, y, architecture="linear", pooling="flatten", kernel_size=3, beta=beta)
        sigma = torch.linalg.svdvals(result.solution.W[0]).numpy()
        ax.semilogy(
            np.arange(1, len(sigma) + 1),
            np.maximum(sigma, 1e-12),
            "o-",
            ms=3,
            label=f"β={beta:g}: rank {int((sigma > 1e-6 * sigma.max()).sum())}",
        )
    ax.set_xlabel("singular value index of Z (9 × 36)")
    ax.set_ylabel("σ_i")
    ax.legend(fontsize=7)
    title(ax, "linear", "flatten")
    fig.tight_layout()
    fig.savefig(out / "linear_flatten_nuclear.png", dpi=120)
    plt.close(fig)


def linear_circular_spectrum(out: Path) -> None:
    rng = np.random.default_rng(2)
    d = 32
    X = rng.standard_normal((60, d))
    t = np.arange(d)
    y = X @ (np.cos(2 * np.pi * 3 * t / d) + 0.5 * np.sin(2 * np.pi * 7 * t / d))
    y = y + 0.5 * rng.standard_normal(60)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for beta in (0.0, 20.0, 100.0):
        if beta == 0.0:
            z = np.linalg.lstsq(X, y, rcond=None)[0]
            label = "least squares"
        else:
            result = fit(X, y, architecture="linear_circular", pooling="none", beta=beta)
            z = result.solution.W[0].numpy()
            label = f"β={beta:g}"
        ax.plot(np.abs(np.fft.fft(z)) / math.sqrt(d), "o-", ms=3, label=label)
    ax.set_xlabel("frequency k")
    ax.set_ylabel("|F z|_k")
    ax.legend(fontsize=7)
    title(ax, "linear_circular")
    fig.tight_layout()
    fig.savefig(out / "linear_circular_spectrum.png", dpi=120)
    plt.close(fig)


def circular_spectra(out: Path) -> None:
    """Target (xᵀa)_+ − (xᵀb)_+ with a, b pure frequencies 2 and 5; the patterns of a and b are
    among the 42 used. The spectral-ℓ1 program picks exactly two blocks with sparse spectra."""
    rng = np.random.default_rng(3)
    n, d = 40, 16
    X = rng.standard_normal((n, d))
    t = np.arange(d)
    a, b = np.cos(2 * np.pi * 2 * t / d), np.sin(2 * np.pi * 5 * t / d)
    y = np.maximum(X @ a, 0) - np.maximum(X @ b, 0) + 0.05 * rng.standard_normal(n)
    generators = torch.as_tensor(np.vstack([a, b, rng.standard_normal((40, d))]))
    patterns = PatternSet.from_patch_filters(torch.as_tensor(X).reshape(n, 1, d), generators)
    result = fit(X, y, architecture="circular", pooling="none", beta=0.5, patterns=patterns)
    W = result.solution.W[0].reshape(-1, d).numpy()  # c_i and c'_i of every pattern
    spectra = np.abs(np.fft.fft(W, axis=1)) / math.sqrt(d)
    sizes = spectra.sum(axis=1)
    keep = sizes > 0.01 * sizes.max()
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.2), gridspec_kw={"width_ratios": [1, 2]})
    axes[0].semilogy(np.sort(sizes)[::-1] + 1e-16, "o", ms=3)
    axes[0].set_xlabel("block (sorted)")
    axes[0].set_ylabel("‖F c‖₁")
    axes[0].set_title(f"{int(keep.sum())} of {len(sizes)} blocks > 1 % of max", fontsize=8)
    for row in spectra[keep]:
        axes[1].plot(row, "o-", ms=3)
    axes[1].set_xlabel("frequency k (target: k = 2, 5 and conjugates 14, 11)")
    axes[1].set_ylabel("|F c_i|_k")
    title(axes[1], "circular")
    fig.tight_layout()
    fig.savefig(out / "circular_spectra.png", dpi=120)
    plt.close(fig)


def circular_digits(out: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = digits
    result = fit(X, y, architecture="circular", pooling="none", beta=0.5, patterns=30)
    W = result.solution.W[0].reshape(-1, 8, 8).numpy()
    norms = np.abs(np.fft.fft2(W)).sum(axis=(1, 2))
    top = np.argsort(norms)[::-1][:4]
    fig, axes = plt.subplots(2, 4, figsize=(7, 3.8))
    for col, i in enumerate(top):
        axes[0, col].imshow(W[i], cmap="RdBu_r")
        axes[0, col].set_title(f"c_{i}", fontsize=8)
        axes[1, col].imshow(np.fft.fftshift(np.abs(np.fft.fft2(W[i]))) / 8, cmap="magma")
        axes[1, col].set_title("|F₂ c| (centred)", fontsize=8)
        for row in (0, 1):
            axes[row, col].axis("off")
    reg = implicit_regularizer("circular")
    fig.suptitle(f"circular on digits 3 vs 8: {reg.name}, {reg.formula} (d = 8·8)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "circular_digits_filters.png", dpi=120)
    plt.close(fig)


def circular_depth4(out: Path) -> None:
    """REFERENCE_VALUES instance n = d = 6, β = 0.1, seed 3, every pattern present."""
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((6, 6)), rng.standard_normal(6)
    Xt = torch.as_tensor(X)
    signs = torch.tensor(list(itertools.product([1.0, -1.0], repeat=6)), dtype=Xt.dtype)[:-1]
    patterns = PatternSet.from_patch_filters(Xt.reshape(6, 1, 6), signs @ torch.linalg.pinv(Xt).T)
    schatten = fit(
        X, y, architecture="circular", pooling="none", beta=0.1, patterns=patterns, depth=4
    )
    l2 = fit(
        X,
        y,
        architecture="circular",
        pooling="none",
        beta=0.1,
        patterns=patterns,
        depth=4,
        inner_norm="l2",
        polish_epochs=2000,
    )
    best = math.inf
    for seed in range(4):
        torch.manual_seed(seed)
        net = CircularCNN(1, (6,), 12, depth=4, inner_norm="l2").double()
        before, project = net.constraint_callbacks()
        run = train_network(
            net,
            Xt[:, None, :],
            torch.as_tensor(y)[:, None],
            loss=get_loss("squared"),
            beta=0.1,
            epochs=2000,
            project=project,
            before_step=before,
        )
        best = min(best, run.objective)
    labels = [
        "Schatten-4\nexact optimum",
        "ℓ2: convex\nlower bound",
        "ℓ2: recovered\nnetwork",
        "ℓ2: polished\nnetwork",
        "ℓ2: best of 4\nAdam runs",
    ]
    values = [
        schatten.objective,
        l2.objective,
        l2.info["recovered_objective"],
        l2.network_objective,
        best,
    ]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(labels, values, color=["C2", "C0", "C1", "C1", "C3"])
    ax.axhspan(0.083255, 0.083283, color="k", alpha=0.3, label="ℓ2 optimum bracket")
    ax.set_ylabel("objective")
    ax.legend(fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    title(ax, "circular", depth=4, inner_norm="l2")
    fig.tight_layout()
    fig.savefig(out / "circular_depth4_bound.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "img"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny problems: extra threads only add overhead
    data = load_digits_binary()
    digits = (data.X_train[:60], data.y_train[:60])
    two_layer_group_l2(out)
    linear_sum_l2(out)
    linear_flatten_nuclear(out, digits)
    linear_circular_spectrum(out)
    circular_spectra(out)
    circular_digits(out, digits)
    circular_depth4(out)
    written = sorted(out.glob("*.png"))
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
