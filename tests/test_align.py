"""Closed-form Procrustes (msma_lens.align): planted recovery, reflections, Kabsch, rectangular maps, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msma_lens.align import ProcrustesFit, procrustes
from msma_lens.errors import ConfigError, NumericsError


def _orthogonal(d: int, det: int, g: torch.Generator) -> torch.Tensor:
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    if int(torch.linalg.slogdet(Q)[0]) != det:
        Q[:, 0] = -Q[:, 0]
    return Q


def _anisotropic(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(n, d, generator=g, dtype=torch.float64) / torch.arange(1, d + 1, dtype=torch.float64).sqrt() + 0.7


@pytest.mark.parametrize("det", [1, -1])
def test_planted_map_recovered_to_1e6(det):
    g = torch.Generator().manual_seed(det + 5)
    X = _anisotropic(400, 24, g)
    Q = _orthogonal(24, det, g)
    b = torch.randn(24, generator=g, dtype=torch.float64)
    fit = procrustes(X, 2.5 * X @ Q + b)
    assert isinstance(fit, ProcrustesFit)
    assert (fit.W - Q).abs().max() < 1e-6
    assert abs(fit.scale - 2.5) < 1e-6
    assert (fit.bias - b).abs().max() < 1e-6
    assert fit.residual < 1e-10
    assert fit.det_sign == det


def test_kabsch_returns_det_plus_one():
    g = torch.Generator().manual_seed(1)
    X = _anisotropic(300, 16, g)
    Q = _orthogonal(16, -1, g)
    Y = X @ Q + 0.1 * torch.randn(300, 16, generator=g, dtype=torch.float64)
    free = procrustes(X, Y)
    kabsch = procrustes(X, Y, allow_reflection=False)
    assert free.det_sign == -1 and kabsch.det_sign == 1
    assert torch.linalg.slogdet(kabsch.W)[0] == 1
    assert torch.allclose(kabsch.W.T @ kabsch.W, torch.eye(16, dtype=torch.float64), atol=1e-10)
    assert kabsch.residual > free.residual + 1e-3
    # the restricted fit is the best proper rotation: no random rotation near it does better
    rss = lambda W, s, b: float((s * X @ W + b - Y).square().sum())  # noqa: E731
    best = rss(kabsch.W, kabsch.scale, kabsch.bias)
    for k in range(5):
        A = torch.randn(16, 16, generator=g, dtype=torch.float64) * 1e-3
        R = torch.linalg.matrix_exp(A - A.T)
        assert rss(kabsch.W @ R, kabsch.scale, kabsch.bias) >= best - 1e-9, k
    # with a proper rotation planted, Kabsch and the free fit coincide
    Yp = X @ _orthogonal(16, 1, g)
    assert torch.allclose(procrustes(X, Yp).W, procrustes(X, Yp, allow_reflection=False).W, atol=1e-10)


def test_residual_is_normalised_and_matches_apply():
    g = torch.Generator().manual_seed(2)
    X = _anisotropic(500, 12, g).float()
    Y = (X.double() @ _orthogonal(12, 1, g)).float() * 0.5 + 0.4 * torch.randn(500, 12, generator=g)
    fit = procrustes(X, Y)
    pred = fit.apply(X)
    assert pred.dtype == torch.float32
    direct = float((pred.double() - Y.double()).square().sum() / (Y.double() - Y.double().mean(0)).square().sum())
    assert abs(fit.residual - direct) < 1e-6
    assert 0.0 < fit.residual < 1.0


def test_scale_and_bias_options():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(200, 8, generator=g, dtype=torch.float64)
    Q = _orthogonal(8, 1, g)
    fit = procrustes(X, 3.0 * X @ Q, scale=False, bias=False)
    assert fit.scale == 1.0 and torch.count_nonzero(fit.bias) == 0
    assert (fit.W - Q).abs().max() < 1e-10
    assert procrustes(X, 3.0 * X @ Q).residual < 1e-12 < fit.residual


def test_isometric_embedding_dx_lt_dy_is_exact():
    g = torch.Generator().manual_seed(4)
    W0 = _orthogonal(20, 1, g)[:6]  # [6, 20], orthonormal rows
    X = _anisotropic(300, 6, g)
    Y = 1.7 * X @ W0 - 0.3
    fit = procrustes(X, Y)
    assert fit.W.shape == (6, 20) and fit.det_sign is None
    assert torch.allclose(fit.W @ fit.W.T, torch.eye(6, dtype=torch.float64), atol=1e-10)
    assert (fit.W - W0).abs().max() < 1e-6 and abs(fit.scale - 1.7) < 1e-6 and fit.residual < 1e-10


def _mm_step(X: torch.Tensor, Y: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """One Kiers (1990) majorisation step for min ‖XW − Y‖ over St(dx, dy)."""
    lam = torch.linalg.eigvalsh(X.T @ X).max()
    U, _, Vh = torch.linalg.svd(X.T @ Y + (lam * torch.eye(X.shape[1], dtype=X.dtype) - X.T @ X) @ W, full_matrices=False)
    return U @ Vh


def test_projection_dx_gt_dy_whitening_exact_only_in_whitened_geometry():
    g = torch.Generator().manual_seed(5)
    X = _anisotropic(800, 24, g)
    Y = X[:, :6] @ _orthogonal(6, 1, g) + 0.2 * torch.randn(800, 6, generator=g, dtype=torch.float64)
    plain = procrustes(X, Y, scale=False)
    assert plain.W.shape == (24, 6)
    assert torch.allclose(plain.W.T @ plain.W, torch.eye(6, dtype=torch.float64), atol=1e-10)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    rss = lambda A, W: float((A @ W - Yc).square().sum())  # noqa: E731
    # raw anisotropic X: the polar solution is not optimal, majorisation improves it
    assert rss(Xc, _mm_step(Xc, Yc, plain.W)) < rss(Xc, plain.W) - 1e-6
    # whitened X: the polar solution is a fixed point of majorisation (exact in whitened geometry)
    white = procrustes(X, Y, scale=False, whiten=True)
    assert white.whitener is not None
    Xw = Xc @ white.whitener
    assert torch.allclose(Xw.T @ Xw / (Xw.T @ Xw).diagonal().mean(), torch.eye(24, dtype=torch.float64), atol=1e-8)
    assert abs(rss(Xw, _mm_step(Xw, Yc, white.W)) - rss(Xw, white.W)) < 1e-8 * rss(Xw, white.W)
    direct = float((white.apply(X) - Y).square().sum() / Yc.square().sum())
    assert abs(white.residual - direct) < 1e-10


def test_numpy_input_accepted():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 4))
    fit = procrustes(X, X @ np.diag([1.0, -1.0, 1.0, 1.0]))
    assert fit.det_sign == -1 and fit.residual < 1e-12


def test_errors():
    X = torch.randn(10, 4)
    with pytest.raises(ConfigError, match="same number of rows.*10.*9"):
        procrustes(X, torch.randn(9, 4))
    bad = X.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(NumericsError, match=r"X contains 1 NaN/Inf value\(s\) \(first in row 3\)"):
        procrustes(bad, X)
    inf = X.clone()
    inf[0, 0] = float("inf")
    with pytest.raises(NumericsError, match="Y contains"):
        procrustes(X, inf)
    with pytest.raises(ConfigError, match="at least 2 paired samples, got 1"):
        procrustes(X[:1], X[:1])
    with pytest.raises(ConfigError, match="2-D"):
        procrustes(torch.randn(10), torch.randn(10))
    with pytest.raises(NumericsError, match="X has zero variance"):
        procrustes(torch.ones(10, 4), X)
    with pytest.raises(ConfigError, match="expects source width 4, got 3"):
        procrustes(X, X).apply(torch.randn(2, 3))


def test_projection_scale_is_optimal_for_its_w():
    """dx > dy: ‖X_c W‖ < ‖X_c‖, so Gower's Σσ/‖X_c‖² is not the optimal scale; s must be tr(WᵀM)/‖X_c W‖²."""
    g = torch.Generator().manual_seed(6)
    X = _anisotropic(500, 24, g)
    Y = 2.0 * X[:, :6] + 0.1 * torch.randn(500, 6, generator=g, dtype=torch.float64)
    fit = procrustes(X, Y)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    XW = Xc @ fit.W
    assert fit.scale == pytest.approx(float((XW * Yc).sum() / XW.square().sum()), rel=1e-12)
    direct = float((fit.apply(X) - Y).square().sum() / Yc.square().sum())
    assert fit.residual == pytest.approx(direct, rel=1e-10)
    for s in (0.9 * fit.scale, 1.1 * fit.scale):  # any other scale does worse
        assert float((s * XW - Yc).square().sum() / Yc.square().sum()) > fit.residual
