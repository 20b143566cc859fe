"""Quickstart: fit a two-layer ReLU CNN on digits 3-vs-8 by its convex program, compare with Adam.

Run: .venv/bin/python examples/quickstart.py [n_train]
"""

from __future__ import annotations

import sys

import convexcnn
from convexcnn.data import load_dataset
from convexcnn.networks import train_sgd


def main(n_train: int = 40) -> None:
    data = load_dataset("digits", classes=(3, 8), limit=n_train)
    result = convexcnn.fit(data.X_train, data.y_train, kernel_size=3, beta=1e-3, patterns=40)
    print(
        f"convex objective     {result.objective:.6f}  ({result.status}, {result.solve_time:.1f} s)"
    )
    print(f"recovered network    {result.network_objective:.6f}  ({result.n_filters} filters)")
    accuracy = float((result.predict(data.X_test) == data.y_test).double().mean())
    print(f"test accuracy        {accuracy:.3f}")
    adam = train_sgd(data.X_train, data.y_train, width=result.n_filters, beta=1e-3, epochs=300)
    print(f"Adam, same network   {adam.objective:.6f}")
    print(result.network)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
