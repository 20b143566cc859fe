"""Circular CNN with one ReLU (SPEC §7): exact spectral-ℓ1 programs and the ℓ2 lower bound.

Every exact model is checked on tiny instances with all patterns present against an independent
CVXPY formulation written here (dense numpy DFT), against shared/REFERENCE_VALUES.md, against
its recovered network's own objective, and against 8 projected Adam restarts of the network.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import cvxpy as cp
import numpy as np
import pytest
import torch

from convexcnn import fit
from convexcnn.losses import get_loss
from convexcnn.networks import CircularCNN, train_network
from convexcnn.patterns import PatternSet
from convexcnn.problems.circular import CircularReLU

REL = 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")


def instance(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.standard_normal(n)


def all_patterns(X: np.ndarray) -> PatternSet:
    """Every nonzero sign pattern of a full-row-rank X (n, h): g = X⁺(2s − 1) realizes s."""
    Xt = torch.as_tensor(X.reshape(X.shape[0], -1))
    n = Xt.shape[0]
    assert int(torch.linalg.matrix_rank(Xt)) == n
    signs = torch.tensor(list(itertools.product([1.0, -1.0], repeat=n)), dtype=Xt.dtype)[:-1]
    patterns = PatternSet.from_patch_filters(Xt.reshape(n, 1, -1), signs @ torch.linalg.pinv(Xt).T)
    assert len(patterns) == 2**n - 1
    return patterns


def dense_dft(spatial: tuple[int, ...]) -> np.ndarray:
    """Unitary DFT on row-major flattened signals, column by column from numpy's fftn."""
    d = math.prod(spatial)
    cols = [np.fft.fftn(np.eye(d)[k].reshape(spatial)).ravel() for k in range(d)]
    return np.stack(cols, axis=1) / np.sqrt(d)


def cvxpy_circular(
    X: np.ndarray,
    y: np.ndarray,
    beta: float,
    masks: np.ndarray,
    spatial: tuple[int, ...],
    channels: int = 1,
    depth: int = 3,
    pair_weight: float = 1.0,
) -> float:
    """Independent SPEC §7 program: X (n, C·d), masks (P, n)."""
    d = math.prod(spatial)
    F = dense_dft(spatial)
    # self-conjugate frequencies: the row of F equals its own complex conjugate
    selfconj = np.array([np.allclose(F[k], F[k].conj()) for k in range(d)])
    omega = np.where(selfconj, 1.0, pair_weight)
    P = masks.shape[0]
    c = cp.Variable((P, channels * d))
    c2 = cp.Variable((P, channels * d))
    pred = 0
    reg = 0
    cons = []
    for i in range(P):
        D = np.diag(masks[i].astype(float))
        S = np.diag(2 * masks[i].astype(float) - 1)
        pred = pred + D @ X @ (c[i] - c2[i])
        for v in (c[i], c2[i]):
            parts = []
            for ch in range(channels):
                block = v[ch * d : (ch + 1) * d]
                parts += [F.real @ block, F.imag @ block]
            reg = reg + omega @ cp.norm(cp.vstack(parts), 2, axis=0)
            cons.append(S @ X @ v >= 0)
    weight = beta / d ** ((depth - 2) / 2)
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(pred - y) + weight * reg), cons)
    problem.solve(solver="CLARABEL")
    return float(problem.value)


def adam_restarts(
    X: np.ndarray,
    y: np.ndarray,
    beta: float,
    depth: int,
    inner_norm: str,
    *,
    width: int,
    restarts: int = 8,
    epochs: int = 2000,
    lr: float = 1e-2,
) -> np.ndarray:
    """Best objective of each of ``restarts`` independent projected-Adam runs of the network
    f = Σ_j w2_j (xᵀ circ(u_1j)⋯circ(u_(L−2)j) w1_j)_+, written here with the convolution
    theorem (independent of the library's modules), all restarts in one batch. Every iterate
    is feasible (‖u‖₂ ≤ 1, or on the Schatten p-sphere ‖F u‖_p = 1)."""
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    d = Xt.shape[1]
    gen = torch.Generator().manual_seed(0)
    R, m, L = restarts, width, depth
    p = 2.0 * (L - 2) if inner_norm == "schatten" else 2.0
    sphere = inner_norm == "schatten" and L >= 4

    def pnorm(u: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft(u, norm="ortho").abs().pow(p).sum(-1, keepdim=True).pow(1 / p)

    us = [torch.randn(R, m, d, generator=gen, dtype=Xt.dtype) for _ in range(L - 2)]
    with torch.no_grad():
        for u in us:
            u /= pnorm(u) if sphere else pnorm(u).clamp_min(1.0)
    w1 = torch.randn(R, m, d, generator=gen, dtype=Xt.dtype) / math.sqrt(d)
    w2 = torch.randn(R, m, generator=gen, dtype=Xt.dtype) / math.sqrt(m)
    params = [*us, w1, w2]
    for t in params:
        t.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    best = torch.full((R,), math.inf, dtype=Xt.dtype)
    for _ in range(epochs):
        zh = torch.fft.rfft(w1)
        for u in us:
            zh = zh * torch.fft.rfft(u)
        z = torch.fft.irfft(zh, n=d)  # u_1 ⊛ ⋯ ⊛ w1, (R, m, d)
        pre = torch.einsum("td,rmd->rtm", Xt, z)
        out = torch.einsum("rtm,rm->rt", torch.relu(pre), w2)
        obj = 0.5 * (out - yt).pow(2).sum(1) + 0.5 * beta * (
            w1.pow(2).sum((1, 2)) + w2.pow(2).sum(1)
        )
        best = torch.minimum(best, obj.detach())
        opt.zero_grad()
        obj.sum().backward()
        with torch.no_grad():
            if sphere:
                for u in us:
                    uh = torch.fft.fft(u, norm="ortho")
                    normal = torch.fft.ifft(uh.abs().pow(p - 2) * uh, norm="ortho").real
                    coef = (normal * u.grad).sum(-1, keepdim=True) / normal.pow(2).sum(
                        -1, keepdim=True
                    )
                    u.grad -= coef * normal
        opt.step()
        with torch.no_grad():
            for u in us:
                u /= pnorm(u) if sphere else pnorm(u).clamp_min(1.0)
    return best.numpy()


REFERENCE = [
    # (n, d, beta, seed, depth, optimum) from shared/REFERENCE_VALUES.md
    (6, 6, 0.1, 3, 3, 0.149014),
    (6, 6, 0.1, 3, 4, 0.061763),
    (8, 8, 0.05, 5, 4, 0.014164),
    (6, 6, 0.1, 3, 5, 0.025371),
]


@pytest.mark.parametrize(("n", "d", "beta", "seed", "depth", "optimum"), REFERENCE)
def test_exact_models_match_cvxpy_reference_and_network(
    n: int, d: int, beta: float, seed: int, depth: int, optimum: float
) -> None:
    X, y = instance(n, d, seed)
    patterns = all_patterns(X)
    result = fit(
        X, y, architecture="circular", pooling="none", beta=beta, patterns=patterns, depth=depth
    )
    masks = patterns.masks[:, :, 0].numpy()
    reference = cvxpy_circular(X, y, beta, masks, (d,), depth=depth)
    assert abs(result.objective - reference) <= REL * abs(reference)
    assert abs(result.objective - optimum) <= 5e-7
    assert abs(result.network_objective - result.objective) <= REL * abs(result.objective)
    assert result.info["objective_is_lower_bound"] is False
    net = result.network
    assert isinstance(net, CircularCNN)
    assert net.depth == depth
    assert net.max_filter_norm() <= 1 + 1e-9
    # the module really is the network: its objective recomputed by hand
    with torch.no_grad():
        out = net(torch.as_tensor(X)[:, None, :])
        manual = 0.5 * float((out - torch.as_tensor(y)).pow(2).sum()) + float(
            net.weight_penalty(beta)
        )
    assert abs(manual - result.network_objective) <= 1e-12 * max(1.0, manual)


@pytest.mark.parametrize(
    ("n", "d", "beta", "seed", "depth", "optimum"),
    [pytest.param(*case, marks=pytest.mark.slow) if case[0] == 8 else case for case in REFERENCE],
)
def test_adam_restarts_do_not_beat_exact_optimum(
    n: int, d: int, beta: float, seed: int, depth: int, optimum: float
) -> None:
    X, y = instance(n, d, seed)
    best = adam_restarts(X, y, beta, depth, "schatten", width=2 * n)
    assert best.min() >= optimum * (1 - 1e-5)
    # and the restarts are meaningful: the best one is close to the optimum
    assert best.min() <= optimum * 1.25


def test_l2_inner_bound_is_a_lower_bound_and_reported_as_such() -> None:
    X, y = instance(6, 6, 3)
    patterns = all_patterns(X)
    result = fit(
        X,
        y,
        architecture="circular",
        pooling="none",
        beta=0.1,
        patterns=patterns,
        depth=4,
        inner_norm="l2",
        polish_epochs=300,
        polish_lr=1e-2,
    )
    bound = result.objective
    info = result.info
    assert info["objective_is_lower_bound"] is True
    assert info["lower_bound"] == bound
    # weighted spectral ℓ1 (ω = √2 on conjugate pairs), independent formulation
    masks = patterns.masks[:, :, 0].numpy()
    reference = cvxpy_circular(X, y, 0.1, masks, (6,), depth=4, pair_weight=math.sqrt(2))
    assert abs(bound - reference) <= REL * reference
    # tighter than the plain spectral-ℓ1 bound, below the true optimum bracket
    assert 0.061763 - 1e-6 <= bound <= 0.083255
    assert bound <= info["recovered_objective"]
    assert bound <= result.network_objective <= info["recovered_objective"]
    assert info["gap"] == pytest.approx(result.network_objective - bound)
    assert result.network.max_filter_norm() <= 1 + 1e-9
    best = adam_restarts(X, y, 0.1, 4, "l2", width=12)
    assert bound <= best.min()
    assert best.min() >= 0.083255 * (1 - 1e-5)  # nothing beats the known optimum bracket


def test_two_dimensional_images_use_the_2d_unitary_dft() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, 3, 4))  # images 3×4, d = 12
    y = rng.standard_normal(5)
    patterns = all_patterns(X.reshape(5, -1))
    masks = patterns.masks[:, :, 0].numpy()
    for depth in (3, 4):
        result = fit(
            X, y, architecture="circular", pooling="none", beta=0.2, patterns=patterns, depth=depth
        )
        reference = cvxpy_circular(X.reshape(5, -1), y, 0.2, masks, (3, 4), depth=depth)
        assert abs(result.objective - reference) <= REL * reference
        assert abs(result.network_objective - result.objective) <= REL * result.objective
        assert result.network.max_filter_norm() <= 1 + 1e-9


def test_multichannel_depth3_groups_channels_per_frequency() -> None:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((5, 2, 4))  # 2 channels, L = 4 (1-D, declared by spec_dims)
    y = rng.standard_normal(5)
    patterns = all_patterns(X.reshape(5, -1))
    masks = patterns.masks[:, :, 0].numpy()
    result = fit(
        X,
        y,
        architecture="circular",
        pooling="none",
        beta=0.1,
        patterns=patterns,
        spec_dims=1,
    )
    reference = cvxpy_circular(X.reshape(5, -1), y, 0.1, masks, (4,), channels=2)
    assert abs(result.objective - reference) <= REL * reference
    assert abs(result.network_objective - result.objective) <= REL * result.objective
    assert result.network.max_filter_norm() <= 1 + 1e-9


def test_circular_cnn_module_computes_x_circ_u_w() -> None:
    """The torch module (padding_mode="circular" convs) against explicit circulant matrices:
    branch j gives (xᵀ circ(u_1)⋯circ(u_(L−2)) w1)_+ · w2, circ(u)[i, k] = u[(i − k) mod d]."""
    torch.manual_seed(0)
    d, m = 7, 3
    net = CircularCNN(1, (d,), m, depth=5).double()
    x = torch.randn(4, 1, d, dtype=torch.float64)
    idx = (np.arange(d)[:, None] - np.arange(d)[None, :]) % d
    expected = np.zeros(4)
    with torch.no_grad():
        for j in range(m):
            M = np.eye(d)
            for u in net.inner_filters():
                M = M @ u[j, 0].numpy()[idx]
            pre = x[:, 0].numpy() @ M @ net.w1[j].numpy()
            expected += np.maximum(pre, 0) * float(net.linear.weight[0, j])
        got = net(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_baseline_callbacks_keep_filters_feasible() -> None:
    X, y = instance(6, 6, 3)
    Xt, Yt = torch.as_tensor(X)[:, None, :], torch.as_tensor(y)[:, None]
    for depth, inner, on_sphere in (
        (3, "schatten", False),
        (4, "schatten", True),
        (4, "l2", False),
    ):
        torch.manual_seed(1)
        net = CircularCNN(1, (6,), 5, depth=depth, inner_norm=inner).double()
        before, project = net.constraint_callbacks()
        assert (before is not None) == on_sphere
        run = train_network(
            net,
            Xt,
            Yt,
            loss=get_loss("squared"),
            beta=0.1,
            lr=1e-2,
            epochs=200,
            project=project,
            before_step=before,
        )
        assert run.history[-1] < run.history[0]
        with torch.no_grad():
            norms = torch.cat([net.filter_norms(u) for u in net.inner_filters()])
        assert float(norms.max()) <= 1 + 1e-9
        if on_sphere:
            assert float((norms - 1).abs().max()) <= 1e-9


def test_tangent_gradient_is_orthogonal_to_the_sphere_normal() -> None:
    torch.manual_seed(2)
    net = CircularCNN(1, (6,), 4, depth=4).double()
    u = net.inner_filters()[0]
    u.grad = torch.randn_like(u)
    net.tangent_gradients()
    # directional derivative of ‖F u‖_4^4 along the projected gradient vanishes
    for j in range(4):
        uj = u[j, 0].detach().clone().requires_grad_(True)
        phi = torch.fft.fft(uj, norm="ortho").abs().pow(4).sum()
        (normal,) = torch.autograd.grad(phi, uj)
        g = u.grad[j, 0].detach()
        assert abs(float(normal @ g)) <= 1e-10 * float(normal.norm()) * float(g.norm())


def test_fit_on_digits_images() -> None:
    from convexcnn.data import load_digits_binary

    data = load_digits_binary()
    X, y = data.X_train[:40], data.y_train[:40]
    result = fit(
        X, y, architecture="circular", pooling="none", beta=0.1, patterns=12, loss="squared"
    )
    assert result.problem.spatial == (8, 8)
    assert abs(result.network_objective - result.objective) <= 1e-5 * result.objective
    assert result.network.max_filter_norm() <= 1 + 1e-9
    accuracy = float((np.sign(result.decision_function(X).numpy()) == y).mean())
    assert accuracy >= 0.9


def test_problem_operators_are_adjoint() -> None:
    X, y = instance(5, 6, 0)
    patterns = all_patterns(X)
    problem = CircularReLU(
        torch.as_tensor(X)[:, None, :],
        patterns,
        torch.as_tensor(y)[:, None],
        0.1,
        get_loss("squared"),
        depth=4,
    )
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(problem.variable_shape, generator=gen, dtype=torch.float64)
    R = torch.randn((5, 1), generator=gen, dtype=torch.float64)
    assert float((problem.predict(W) * R).sum()) == pytest.approx(
        float((W * problem.predict_adjoint(R)).sum()), rel=1e-12
    )
    G = problem.constraint(W)
    Lm = torch.randn(G.shape, generator=gen, dtype=torch.float64)
    assert float((G * Lm).sum()) == pytest.approx(
        float((W * problem.constraint_adjoint(Lm)).sum()), rel=1e-12
    )
    # prox: optimality of the prox point against random feasible perturbations
    P = problem.prox(W, 0.7)

    def prox_obj(Z: torch.Tensor) -> float:
        return 0.5 * float((Z - W).pow(2).sum()) + 0.7 * float(problem.regularizer(Z))

    base = prox_obj(P)
    for _ in range(20):
        assert prox_obj(P + 1e-3 * torch.randn(W.shape, generator=gen, dtype=W.dtype)) >= base
    # dual norm is the gauge's dual: ⟨G, W⟩ ≤ ρ(W)·ρ°(G)
    reg = float(problem.regularizer(W)) / problem.beta
    assert float((W * Lm.sum(-1, keepdim=True)).sum()) <= reg * float(
        problem.dual_norm(Lm.sum(-1, keepdim=True).expand_as(W))
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"depth": 2}, "depth"),
        ({"depth": 4, "inner_norm": "frobenius"}, "inner_norm"),
        ({"polish_epochs": -1}, "polish_epochs"),
        ({"unknown": 1}, "unknown option"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    X, y = instance(6, 6, 3)
    with pytest.raises(ValueError, match=message):
        fit(X, y, architecture="circular", pooling="none", patterns=4, **options)


def test_deep_multichannel_and_mismatched_patterns_are_refused() -> None:
    rng = np.random.default_rng(0)
    X2 = rng.standard_normal((5, 2, 4))
    y = rng.standard_normal(5)
    with pytest.raises(ValueError, match="single-channel"):
        fit(X2, y, architecture="circular", pooling="none", spec_dims=1, patterns=4, depth=4)
    X, _ = instance(5, 6, 0)
    wrong = PatternSet.from_patch_filters(
        torch.as_tensor(X).reshape(5, 2, 3), torch.randn(4, 3, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="patterns must be built on X"):
        fit(X, y, architecture="circular", pooling="none", patterns=wrong)


def test_networks_round_trip_through_save_and_load(tmp_path: Path) -> None:
    from convexcnn.io import load_network, save_network

    X, y = instance(6, 6, 3)
    for options in ({"depth": 3}, {"depth": 4}):
        result = fit(X, y, architecture="circular", pooling="none", patterns=8, **options)
        save_network(tmp_path / str(options["depth"]), result.network, {})
        loaded, _ = load_network(tmp_path / str(options["depth"]))
        assert isinstance(loaded, CircularCNN)
        Xt = torch.as_tensor(X)[:, None, :]
        with torch.no_grad():
            torch.testing.assert_close(loaded.to(torch.float64)(Xt), result.network(Xt))


def test_more_samples_than_dimensions_with_enumerated_patterns() -> None:
    """n > d: not every sign vector is a pattern; the exact enumeration supplies all of them,
    and the certificate is then a proof."""
    X, y = instance(8, 4, 0)
    patterns = PatternSet.enumerate_patches(torch.as_tensor(X).reshape(8, 1, 4))
    assert len(patterns) == 2 * sum(math.comb(7, i) for i in range(4))  # general position
    result = fit(X, y, architecture="circular", pooling="none", beta=0.1, patterns=patterns)
    reference = cvxpy_circular(X, y, 0.1, patterns.masks[:, :, 0].numpy(), (4,))
    assert abs(result.objective - reference) <= REL * reference
    assert abs(result.network_objective - result.objective) <= REL * result.objective
    assert result.certificate.scope == "enumerated"
    assert result.certificate.relative_gap <= 1e-6
    best = adam_restarts(X, y, 0.1, 3, "schatten", width=12, epochs=1500)
    assert best.min() >= result.objective * (1 - 1e-5)
