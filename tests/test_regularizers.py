"""Spectral-ℓ1 helpers against the dense unitary DFT, and the implicit-regularizer table."""

from __future__ import annotations

import math
from pathlib import Path

import cvxpy as cp
import numpy as np
import pytest
import torch

from convexcnn import implicit_regularizer
from convexcnn.problems.registry import ARCHITECTURES
from convexcnn.regularizers import ImplicitRegularizer, known_regularizers
from convexcnn.spectral import (
    SpectralL1,
    dense_unitary_dft,
    frequency_weights,
    rfft_multiplicity,
    self_conjugate_mask,
    spectral_dual_norm,
    spectral_l1,
    spectral_l1_prox,
)

SHAPES = [(6,), (7,), (4, 6), (3, 5)]


def numpy_dft(spatial: tuple[int, ...]) -> np.ndarray:
    """F (d, d) with F @ x.ravel() = fftn(x).ravel()/√d, built column by column."""
    d = math.prod(spatial)
    return np.stack(
        [np.fft.fftn(np.eye(d)[k].reshape(spatial)).ravel() for k in range(d)], axis=1
    ) / np.sqrt(d)


def self_conjugate(spatial: tuple[int, ...]) -> np.ndarray:
    """Full-grid flags of k ≡ −k, from the DFT rows being real."""
    F = numpy_dft(spatial)
    return np.array([np.allclose(F[k].imag, 0) for k in range(F.shape[0])])


@pytest.mark.parametrize("spatial", SHAPES)
def test_dense_dft_is_unitary_and_matches_numpy(spatial: tuple[int, ...]) -> None:
    F = dense_unitary_dft(spatial)
    d = math.prod(spatial)
    np.testing.assert_allclose(F, numpy_dft(spatial), atol=1e-12)
    np.testing.assert_allclose(F.conj().T @ F, np.eye(d), atol=1e-12)


@pytest.mark.parametrize("spatial", SHAPES)
@pytest.mark.parametrize("pair_weight", [1.0, math.sqrt(2)])
def test_spectral_l1_equals_dense_dft_sum_of_moduli(
    spatial: tuple[int, ...], pair_weight: float
) -> None:
    rng = np.random.default_rng(0)
    d, C = math.prod(spatial), 2
    x = rng.standard_normal((3, C, *spatial))
    F = numpy_dft(spatial)
    xh = np.einsum("kd,bcd->bck", F, x.reshape(3, C, d))
    omega = np.where(self_conjugate(spatial), 1.0, pair_weight)
    expected = (np.sqrt((np.abs(xh) ** 2).sum(axis=1)) * omega).sum(axis=1)
    got = spectral_l1(torch.as_tensor(x), spatial, pair_weight).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("spatial", SHAPES)
def test_half_spectrum_bookkeeping(spatial: tuple[int, ...]) -> None:
    d = math.prod(spatial)
    assert float(rfft_multiplicity(spatial).sum()) == d
    n_self = int(self_conjugate(spatial).sum())
    assert int(self_conjugate_mask(spatial).sum()) == n_self
    w = frequency_weights(spatial, 3.0)
    assert int((w == 1.0).sum()) == n_self


@pytest.mark.parametrize("spatial", SHAPES)
@pytest.mark.parametrize("pair_weight", [1.0, 2.0])
def test_prox_matches_dense_complex_soft_threshold_and_cvxpy(
    spatial: tuple[int, ...], pair_weight: float
) -> None:
    """prox_{t·ρ}(x) = Fᴴ soft(F x, t·ω) with the dense unitary F (the constant check), and the
    same point solves the real prox problem in CVXPY."""
    rng = np.random.default_rng(1)
    d = math.prod(spatial)
    x = rng.standard_normal(spatial)
    t = 0.3
    F = numpy_dft(spatial)
    xh = F @ x.ravel()
    omega = np.where(self_conjugate(spatial), 1.0, pair_weight)
    shrunk = xh * np.maximum(0, 1 - t * omega / np.abs(xh))
    dense = F.conj().T @ shrunk
    assert np.abs(dense.imag).max() <= 1e-12
    got = spectral_l1_prox(torch.as_tensor(x)[None], t, spatial, pair_weight)[0].numpy()
    np.testing.assert_allclose(got.ravel(), dense.real, atol=1e-12)
    z = cp.Variable(d)
    moduli = cp.norm(cp.vstack([F.real @ z, F.imag @ z]), 2, axis=0)
    cp.Problem(cp.Minimize(0.5 * cp.sum_squares(z - x.ravel()) + t * omega @ moduli)).solve(
        solver="CLARABEL"
    )
    np.testing.assert_allclose(got.ravel(), z.value, atol=1e-6)


@pytest.mark.parametrize("spatial", SHAPES)
def test_dual_norm_is_the_gauge_dual(spatial: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(2)
    gauge = SpectralL1(1, spatial, pair_weight=1.5)
    d = math.prod(spatial)
    g = torch.randn((1, d), generator=gen, dtype=torch.float64)
    dual = float(gauge.dual(g))
    for _ in range(50):
        x = torch.randn((1, d), generator=gen, dtype=torch.float64)
        assert float((g * x).sum()) <= float(gauge.value(x)) * dual * (1 + 1e-12)
    # attained by a single real frequency atom (a conjugate pair or a self-conjugate frequency)
    gh = np.fft.fftn(g.numpy().reshape(spatial)).ravel() / np.sqrt(d)
    omega = np.where(self_conjugate(spatial), 1.0, 1.5)
    k = int(np.argmax(np.abs(gh) / omega))
    atom = (numpy_dft(spatial)[k].conj() * np.exp(1j * np.angle(gh[k]))).real
    atom_t = torch.as_tensor(atom)[None]
    ratio = float((g * atom_t).sum()) / float(gauge.value(atom_t))
    assert ratio == pytest.approx(dual, rel=1e-9)
    assert float(spectral_dual_norm(g.reshape(1, 1, *spatial), spatial, 1.5)) == dual


def test_cvxpy_form_of_the_gauge_matches_torch() -> None:
    rng = np.random.default_rng(3)
    spatial, C, blocks = (3, 4), 2, 3
    gauge = SpectralL1(C, spatial, pair_weight=1.7)
    W = rng.standard_normal((blocks, C * 12))
    w = cp.Variable(W.size)
    w.value = W.ravel()
    assert float(gauge.cvxpy(w, blocks).value) == pytest.approx(
        float(gauge.value(torch.as_tensor(W))), rel=1e-12
    )


# ----- implicit regularizer table -------------------------------------------------------------


def test_every_registered_architecture_has_a_regularizer() -> None:
    for name, entry in ARCHITECTURES.items():
        for pooling in entry.poolings:
            reg = implicit_regularizer(name, pooling)
            assert isinstance(reg, ImplicitRegularizer)
            assert (reg.architecture, reg.pooling) == (name, pooling)
            assert reg.name and reg.formula and reg.pattern_set and reg.program
    for name, poolings in known_regularizers().items():
        assert implicit_regularizer(name).pooling in poolings


@pytest.mark.parametrize(
    ("args", "options", "name", "formula_part", "exact"),
    [
        (("two_layer", "sum"), {}, "group ℓ2", "‖c_i‖₂", True),
        (("two_layer", "max"), {}, "group ℓ2", "‖c_i‖₂", True),
        (("two_layer", "avg"), {"gated": True}, "group ℓ2", "‖c_i‖₂", True),
        (("linear", "sum"), {}, "ℓ2 norm", "β ‖z‖₂", True),
        (("linear", "flatten"), {}, "nuclear norm", "‖Z‖_*", True),
        (("linear_circular", None), {}, "spectral ℓ1", "(β/√d) ‖F z‖₁", True),
        (("circular", None), {}, "spectral ℓ1", "(β/√d)", True),
        (("circular", "none"), {"depth": 4}, "spectral ℓ1", "(β/d)", True),
        (("circular", "none"), {"depth": 5}, "spectral ℓ1", "(β/d^{3/2})", True),
        (("circular", "none"), {"depth": 4, "inner_norm": "l2"}, "weighted", "1.414", False),
        (("three_layer", "sum"), {"regularization": "unit"}, "group ℓ2", "Σ_τ", True),
    ],
)
def test_table_entries(
    args: tuple[str, str | None],
    options: dict[str, object],
    name: str,
    formula_part: str,
    exact: bool,
) -> None:
    reg = implicit_regularizer(*args, **options)
    assert name in reg.name
    assert formula_part in reg.formula
    assert reg.exact is exact
    assert ("lower bound" in str(reg)) is (not exact)


def test_pattern_sets_differ_by_architecture() -> None:
    assert "patterns of X itself" in implicit_regularizer("circular").pattern_set
    assert "every (sample, patch)" in implicit_regularizer("two_layer").pattern_set
    assert "winning patch" in implicit_regularizer("two_layer", "max").pattern_set
    assert "no patterns" in implicit_regularizer("linear", "flatten").pattern_set


@pytest.mark.parametrize(
    ("args", "options", "message"),
    [
        (("convnext",), {}, "architecture must be one of"),
        (("linear", "max"), {}, "pooling must be one of"),
        (("circular",), {"depth": 2}, "depth"),
        (("circular",), {"inner_norm": "nuclear"}, "inner_norm"),
        (("circular",), {"gated": True}, "unknown option"),
        (("two_layer", "max"), {"gated": True}, "gated"),
    ],
)
def test_bad_arguments_are_refused(
    args: tuple[str, ...], options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        implicit_regularizer(*args, **options)


@pytest.mark.slow
def test_example_script_writes_one_figure_per_model(tmp_path: Path) -> None:
    import runpy

    root = Path(__file__).resolve().parents[1]
    module = runpy.run_path(str(root / "examples" / "implicit_regularizers.py"))
    written = module["main"](["--out", str(tmp_path)])
    assert len(written) == 7
    assert all(path.stat().st_size > 10_000 for path in written)
