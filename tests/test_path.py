"""fit_path: one FitResult per β, warm-started along the path, equal to independent fits."""

from __future__ import annotations

import pytest

import convexcnn
from _instances import reference_instance
from convexcnn import fit_path


def test_path_matches_independent_fits() -> None:
    X, y = reference_instance(8, 6, 1)
    betas = [0.2, 0.05, 0.1]  # any order; solved from the largest β down
    results = fit_path(
        X, y, betas=betas, kernel_size=2, patterns=20000, solver="al", certificate_starts=0
    )
    assert [r.beta for r in results] == betas
    assert [r.info["warm_started"] for r in results] == [False, True, True]
    first = results[0].patterns
    for result in results:
        assert result.patterns is first  # one pattern set: one program structure
        assert result.status == "optimal"
        exact = convexcnn.fit(
            X, y, kernel_size=2, beta=result.beta, patterns=first, certificate_starts=0
        )
        assert result.objective == pytest.approx(exact.objective, rel=1e-6)
        assert result.network_objective == pytest.approx(result.objective, rel=1e-6)
    objectives = [r.objective for r in sorted(results, key=lambda r: r.beta)]
    assert objectives == sorted(objectives)  # the optimum grows with β


def test_path_validation() -> None:
    X, y = reference_instance(8, 6, 1)
    for bad in ([], [0.1, -1.0], [True], "0.1", [float("nan")]):
        with pytest.raises(ValueError, match="betas"):
            fit_path(X, y, betas=bad, kernel_size=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta"):
        fit_path(X, y, betas=[0.1], beta=0.2, kernel_size=2)
