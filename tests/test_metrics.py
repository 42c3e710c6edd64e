"""Known-truth oracles for msma_lens.analysis.metrics (CPU, float64, small n)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from msma_lens.analysis import metrics as M
from msma_lens.errors import ConfigError, NumericsError

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=_gen(seed), dtype=F64)


def rotation(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(randn(d, d, seed))
    return q * torch.sign(r.diagonal())


def dependent(n: int = 600, d: int = 40, noise: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Anisotropic X and a noisy linear image Y = X A + noise."""
    X = randn(n, d, seed) * torch.linspace(0.3, 3.0, d, dtype=F64)
    A = randn(d, d, seed + 1) / math.sqrt(d)
    return X, X @ A + noise * randn(n, d, seed + 2)


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.SampleSizeWarning)
        return fn(*a, **kw)


# ----- KL ------------------------------------------------------------------------------------------------------
def test_kl_self_is_exactly_zero():
    X = randn(300, 12, 0) * 5 + 2
    for direction in ("xy", "yx", "sym"):
        assert M.kl_diag(X, X, direction=direction) == 0.0
        assert M.kl_paper(X, X, direction=direction) == 0.0
    assert abs(M.kl_full(X, X)) < 1e-10
    assert abs(M.kl_full(X, X, shrinkage="ledoit_wolf")) < 1e-10


def test_kl_diag_two_samples_match_floor_and_2d_over_n():
    n, d = 1000, 64
    two = np.mean([M.kl_diag(randn(n, d, 2 * s), randn(n, d, 2 * s + 1)) for s in range(8)])
    floor = M.kl_floor(randn(n, d, 99), n_splits=8, seed=1)
    assert two == pytest.approx(2 * d / n, rel=0.15)
    assert floor == pytest.approx(2 * d / n, rel=0.2)
    half = M.kl_floor(randn(n, d, 99), n_splits=8, seed=1, method="split_half")
    assert M.kl_floor(randn(n, d, 99), n_splits=8, seed=1, rescale=False, method="split_half") == pytest.approx(2 * half)


def _spectrum_sample(n: int, d: int, decay: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A Gaussian sample [n, d] with eigenvalues k^-decay in a random basis, and its covariance square root."""
    L = rotation(d, seed) * torch.arange(1, d + 1, dtype=F64).pow(-decay / 2)[None, :]
    return randn(n, d, seed + 1) @ L.T, L


@pytest.mark.parametrize("kind", ["full", "diag"])
@pytest.mark.parametrize(("n", "d", "decay"), [(256, 64, 0.0), (512, 128, 0.0), (256, 128, 0.7)])
def test_kl_floor_matches_fresh_pairs_at_matched_n(kind, n, d, decay):
    # the floor is the KL between two independent size-n samples; the split-half rule (halve the n/2 value)
    # overstates the shrunk full KL by 20-50% at d/n = 0.25-0.5
    X, L = _spectrum_sample(n, d, decay, 10)
    fn = M.kl_full if kind == "full" else M.kl_diag
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.SampleSizeWarning)
        fresh = np.mean([fn(randn(n, d, 100 + 2 * s) @ L.T, randn(n, d, 101 + 2 * s) @ L.T) for s in range(32)])
    floor = M.kl_floor(X, kind=kind, n_splits=32, seed=3)
    assert floor == pytest.approx(fresh, rel=0.05)


def test_kl_diag_pure_mean_shift_is_analytic():
    n, d = 500, 6
    Z = randn(n, d, 3)
    Z = (Z - Z.mean(0)) / Z.std(0)  # exact sample mean 0 and variance 1 (ddof=1)
    sigma = torch.tensor([0.5, 1.0, 2.0, 3.0, 0.1, 7.0], dtype=F64)
    delta = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.01, 3.0], dtype=F64)
    X, Y = Z * sigma, Z * sigma + delta
    expected = 0.5 * float((delta**2 / sigma**2).sum())
    assert M.kl_diag(X, Y) == pytest.approx(expected, rel=1e-12)
    assert M.kl_diag(X, Y, direction="yx") == pytest.approx(expected, rel=1e-12)
    assert M.kl_diag(X, Y, direction="sym") == pytest.approx(2 * expected, rel=1e-12)
    # population variances are the same up to the factor (n-1)/n in both samples: the paper KL agrees up to 1e-6
    assert M.kl_paper(X, Y) == pytest.approx(expected * n / (n - 1), rel=1e-4)


def test_kl_paper_matches_the_authors_formula():
    X, Y = randn(200, 8, 4) * 2 + 1, randn(200, 8, 5) * 0.5
    x, y = X.numpy(), Y.numpy()
    v1, v2 = np.maximum(x.var(0) + 1e-6, 1e-6), np.maximum(y.var(0) + 1e-6, 1e-6)
    ref = 0.5 * np.sum(v1 / v2 + (x.mean(0) - y.mean(0)) ** 2 / v2 + np.log(v2) - np.log(v1) - 1)
    assert M.kl_paper(X, Y) == pytest.approx(ref, rel=1e-10)


def test_kl_full_matches_torch_distributions():
    X, Y = dependent(400, 8, seed=6)
    alpha = 0.3

    def shrunk(A):
        S = torch.cov(A.T)
        return (1 - alpha) * S + alpha * torch.trace(S) / A.shape[1] * torch.eye(A.shape[1], dtype=F64)

    P = torch.distributions.MultivariateNormal(X.mean(0), shrunk(X))
    Q = torch.distributions.MultivariateNormal(Y.mean(0), shrunk(Y))
    ref = float(torch.distributions.kl_divergence(P, Q))
    assert M.kl_full(X, Y, shrinkage=alpha) == pytest.approx(ref, rel=1e-9)
    assert M.kl_full(X, Y, shrinkage=alpha, direction="yx") == pytest.approx(
        float(torch.distributions.kl_divergence(Q, P)), rel=1e-9
    )


def test_kl_full_invariant_to_a_common_rotation_and_scale():
    X, Y = dependent(400, 10, seed=7)
    Q = rotation(10, 8)
    for shr in (0.1, "ledoit_wolf"):
        a = M.kl_full(X, Y, shrinkage=shr)
        assert M.kl_full(3.0 * X @ Q, 3.0 * Y @ Q, shrinkage=shr) == pytest.approx(a, rel=1e-8)


def test_ledoit_wolf_shrinkage_limits():
    iso = M.ledoit_wolf_shrinkage(randn(200, 50, 9))
    aniso = M.ledoit_wolf_shrinkage(randn(5000, 5, 10) * torch.tensor([1.0, 3.0, 10.0, 30.0, 100.0], dtype=F64))
    assert iso > 0.8
    assert 0.0 <= aniso < 0.01


def test_kl_full_warns_and_refuses():
    X, Y = randn(50, 10, 11), randn(50, 10, 12)
    with pytest.warns(M.SampleSizeWarning, match=r"n=50 < 10·d=100"):
        M.kl_full(X, Y)
    with pytest.raises(ConfigError, match=r"needs at least 11 samples.*singular"):
        M.kl_full(X[:10], Y[:10], shrinkage=0.0)
    with pytest.raises(ConfigError, match="width"):
        M.kl_diag(X, Y[:, :5])
    with pytest.raises(ConfigError, match="direction"):
        M.kl_diag(X, Y, direction="both")


# ----- distance correlation and CKA ---------------------------------------------------------------------------
def test_dcor_matches_dcor_package():
    dcor = pytest.importorskip("dcor")
    X, Y = dependent(60, 5, seed=13)
    Y = Y[:, :3] ** 2  # nonlinear dependence, different width
    x, y = X.numpy(), Y.numpy()
    assert M.dcor_v(X, Y) == pytest.approx(dcor.distance_correlation(x, y), abs=1e-6)
    assert M.dcor_u(X, Y) == pytest.approx(dcor.u_distance_correlation_sqr(x, y), abs=1e-6)


def test_dcor_row_blocks_equal_single_block():
    X, Y = dependent(97, 4, seed=14)
    small = 3 * 97 * 8 * 10  # ten-row blocks
    assert M.dcor_u(X, Y, max_bytes=small) == pytest.approx(M.dcor_u(X, Y), abs=1e-12)
    assert M.dcor_v(X, Y, max_bytes=small) == pytest.approx(M.dcor_v(X, Y), abs=1e-12)


def test_bias_corrected_metrics_vanish_on_independent_data():
    X, Y = randn(1000, 64, 15), randn(1000, 64, 16)
    assert abs(M.dcor_u(X, Y)) < 0.01
    assert abs(M.cka_debiased(X, Y)) < 0.01
    assert M.dcor_v(X, Y) > 0.3  # the V-statistic is badly biased in high dimension
    assert M.cka_linear(X, Y) > 0.03


def test_cka_debiased_equals_gram_space_reference():
    X, Y = dependent(50, 7, seed=17)
    Y = Y[:, :4]

    def hsic_u(K, L):
        n = K.shape[0]
        K, L = K.clone(), L.clone()
        K.fill_diagonal_(0)
        L.fill_diagonal_(0)
        one = torch.ones(n, dtype=F64)
        t = torch.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * (one @ K @ L @ one)
        return t / (n * (n - 3))

    K, L = X @ X.T, Y @ Y.T  # uncentred on purpose: unbiased HSIC ignores the mean
    ref = hsic_u(K, L) / torch.sqrt(hsic_u(K, K) * hsic_u(L, L))
    assert M.cka_debiased(X, Y) == pytest.approx(float(ref), abs=1e-10)


def test_self_similarity_is_one():
    X = randn(200, 12, 18)
    assert M.dcor_v(X, X) == pytest.approx(1.0, abs=1e-12)
    assert M.dcor_u(X, X) == pytest.approx(1.0, abs=1e-12)
    assert M.cka_linear(X, X) == pytest.approx(1.0, abs=1e-12)
    assert M.cka_debiased(X, X) == pytest.approx(1.0, abs=1e-12)
    assert M.svcca(X, X) == pytest.approx(1.0, abs=1e-10)
    assert M.pwcca(X, X) == pytest.approx(1.0, abs=1e-10)
    assert M.mutual_knn(X, X) == 1.0
    assert M.procrustes(X, X) == pytest.approx(0.0, abs=1e-12)
    assert M.residual(X, X) == 0.0


# ----- invariances ---------------------------------------------------------------------------------------------
INVARIANT = ["dcor_u", "dcor_v", "cka_linear", "cka_debiased", "svcca", "pwcca", "cca_mean", "mutual_knn", "mi_gaussian"]
INVARIANT += ["procrustes", "dcor_paper", "cca_paper"]


@pytest.fixture(scope="module")
def pair():
    return dependent(600, 40, seed=19)


@pytest.mark.parametrize("name", INVARIANT)
def test_invariant_under_rotation_and_isotropic_scaling(pair, name):
    X, Y = pair
    Q = rotation(40, 20)
    base = M.compute(name, X, Y)
    assert M.compute(name, X @ Q, Y) == pytest.approx(base, rel=1e-6, abs=1e-12)
    assert M.compute(name, 3.7 * X, 0.2 * Y) == pytest.approx(base, rel=1e-6, abs=1e-12)


def test_non_invariant_metrics_do_move(pair):
    X, Y = pair
    Q = rotation(40, 21)
    assert M.kl_diag(X @ Q, Y) != pytest.approx(M.kl_diag(X, Y), rel=1e-3)
    assert M.residual(X @ Q, Y) != pytest.approx(M.residual(X, Y), rel=1e-3)
    # the histogram MI bins over [min, max]: invariant to positive scaling and shifts, not to rotations
    assert M.mi_histogram(3.0 * X + 1.0, Y) == pytest.approx(M.mi_histogram(X, Y), rel=1e-9)


# ----- CCA family ----------------------------------------------------------------------------------------------
def test_cca_mean_matches_whitening_formula():
    X, Y = dependent(800, 6, seed=22)
    Y = Y[:, :4]
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)

    def isqrt(S):
        w, V = torch.linalg.eigh(S)
        return V @ torch.diag(w**-0.5) @ V.T

    rho = torch.linalg.svdvals(isqrt(Xc.T @ Xc) @ (Xc.T @ Yc) @ isqrt(Yc.T @ Yc))
    assert M.cca_mean(X, Y) == pytest.approx(float(rho.mean()), abs=1e-10)
    assert M.svcca(X, Y, k=50) == pytest.approx(float(rho.mean()), abs=1e-10)  # k >= width: all dimensions
    with pytest.warns(M.SampleSizeWarning, match="pca_dim=32"):
        assert M.cca_paper(X, Y) == pytest.approx(float(rho.max()), abs=1e-10)


def test_cca_paper_recovers_a_planted_canonical_pair():
    n, d = 2000, 40
    Z, E = randn(n, 1, 23), randn(n, 2 * d, 24)
    X = E[:, :d].clone()
    Y = E[:, d:].clone()
    # large variance keeps the planted pair inside the top 32 PCs of both sides
    X[:, 0], Y[:, 0] = 3 * Z[:, 0], 3 * (0.9 * Z[:, 0] + math.sqrt(1 - 0.81) * Y[:, 0])
    assert M.cca_paper(X @ rotation(d, 25), Y) == pytest.approx(0.9, abs=0.02)


def test_svcca_warns_when_k_exceeds_n_over_10():
    X, Y = dependent(200, 40, seed=26)
    with pytest.warns(M.SampleSizeWarning, match=r"40 components on n=200"):
        M.svcca(X, Y)
    with pytest.raises(ConfigError, match=r"svcca with k=40 components needs at least 42 samples"):
        M.svcca(X[:30], Y[:30])


def test_cca_mean_refuses_too_few_samples():
    X, Y = dependent(30, 40, seed=27)
    with pytest.raises(ConfigError, match=r"cca_mean needs at least 42 samples"):
        M.cca_mean(X, Y)


# ----- mutual kNN ----------------------------------------------------------------------------------------------
def test_mutual_knn_chance_level_on_independent_data():
    n, k = 1000, 10
    v = M.mutual_knn(randn(n, 16, 28), randn(n, 16, 29), k=k)
    assert abs(v - k / n) < 0.005
    assert M.mutual_knn(randn(n, 16, 28), randn(n, 16, 29), k=k, max_bytes=2 * n * 8 * 64) == v  # row blocks


# ----- Procrustes ----------------------------------------------------------------------------------------------
def test_procrustes_recovers_planted_similarity_and_matches_explicit_fit():
    X = randn(300, 8, 30)
    R = rotation(8, 31)
    assert M.procrustes(X, 2.5 * X @ R + 4.0) == pytest.approx(0.0, abs=1e-12)
    Y = 2.5 * X @ R + randn(300, 8, 32)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    U, S, Vh = torch.linalg.svd(Xc.T @ Yc)
    W, s = U @ Vh, float(S.sum() / (Xc**2).sum())
    expected = float(((s * Xc @ W - Yc) ** 2).sum() / (Yc**2).sum())
    assert M.procrustes(X, Y) == pytest.approx(expected, rel=1e-10)
    expected1 = float(((Xc @ W - Yc) ** 2).sum() / (Yc**2).sum())
    assert M.procrustes(X, Y, scale=False) == pytest.approx(expected1, rel=1e-10)
    pred = s * Xc @ W + Y.mean(0)
    assert M.residual(pred, Y) == pytest.approx(expected, rel=1e-10)
    assert M.residual(X, Y, f=lambda x: s * (x - X.mean(0)) @ W + Y.mean(0)) == pytest.approx(expected, rel=1e-10)


def test_procrustes_kabsch_excludes_reflections():
    X = randn(300, 6, 33)
    R = rotation(6, 34)
    if torch.linalg.slogdet(R)[0] > 0:
        R[:, 0] = -R[:, 0]  # make it a reflection
    Y = X @ R
    assert M.procrustes(X, Y) == pytest.approx(0.0, abs=1e-12)
    assert M.procrustes(X, Y, reflection=False) > 0.01
    with pytest.raises(ConfigError, match=r"dx <= dy \(got 6 > 3\)"):
        M.procrustes(X, Y[:, :3])


# ----- mutual information --------------------------------------------------------------------------------------
def correlated_gaussians(n: int, d: int, rho: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    X, E = randn(n, d, seed), randn(n, d, seed + 1)
    return X, rho * X + math.sqrt(1 - rho**2) * E


def test_gaussian_cca_mi_matches_analytic():
    d, rho = 4, 0.6
    X, Y = correlated_gaussians(4000, d, rho, 35)
    truth = -(d / 2) * math.log(1 - rho**2)
    assert M.mi_gaussian(X, Y) == pytest.approx(truth, rel=0.1)
    assert M.mi_gaussian(X @ rotation(d, 36), Y) == pytest.approx(M.mi_gaussian(X, Y), rel=1e-9)


def test_ksg_on_1d_correlated_gaussians():
    rho = 0.6
    X, Y = correlated_gaussians(2000, 1, rho, 37)
    truth = -0.5 * math.log(1 - rho**2)
    assert M.mi_ksg(X, Y) == pytest.approx(truth, abs=0.05)
    assert M.mi_ksg(X, Y, max_bytes=3 * 2000 * 8 * 100) == pytest.approx(M.mi_ksg(X, Y), abs=1e-12)
    assert abs(M.mi_ksg(X, randn(2000, 1, 39))) < 0.05


def test_histogram_mi_of_x_with_itself_is_binned_entropy():
    X = randn(500, 8, 40)
    x = X.numpy().reshape(-1)
    edges = np.linspace(x.min(), x.max(), 65)
    edges[-1] += 1e-6
    idx = np.clip(np.searchsorted(edges, x, side="left"), 0, 63)  # the authors' bucketize(right=False) + clamp
    p = np.bincount(idx, minlength=64) / x.size
    H = -np.sum(p[p > 0] * np.log(p[p > 0]))
    mi = M.mi_histogram(X, X, eps=0.0)
    assert mi == pytest.approx(H, abs=1e-12)
    assert mi <= math.log(64)
    assert M.mi_histogram(X, X) == pytest.approx(H, abs=1e-4)  # the authors' eps = 1e-9 in the logs
    assert M.mi_histogram(X, randn(500, 8, 41)) < 0.1 * mi
    assert M.mi_histogram(torch.ones(10, 3), torch.ones(10, 3)) == 0.0


def test_dcor_paper_is_dcor_v_on_a_subsample():
    X, Y = dependent(300, 10, seed=42)
    assert M.dcor_paper(X, Y) == pytest.approx(M.dcor_v(X, Y), abs=1e-12)  # n <= 1024: all rows
    idx = torch.randperm(300, generator=torch.Generator().manual_seed(3))[:100]
    assert M.dcor_paper(X, Y, n_sub=100, seed=3) == pytest.approx(M.dcor_v(X[idx], Y[idx]), abs=1e-12)


# ----- registry, evaluate --------------------------------------------------------------------------------------
def test_registry_and_sets():
    assert set(M.metric_set("corrected")) <= set(M.METRICS)
    assert set(M.metric_set("paper")) == {"kl_paper", "mi_histogram", "dcor_paper", "cca_paper"}
    with pytest.raises(ConfigError, match=r"unknown metric 'cka'; valid names: .*cka_linear.*mutual_knn"):
        M.compute("cka", randn(10, 2, 0), randn(10, 2, 1))
    with pytest.raises(ConfigError, match=r"unknown metric set 'fast'; valid: corrected, paper"):
        M.metric_set("fast")


@pytest.mark.parametrize("name", [m for m in M.METRICS if m != "mi_neural"])
def test_every_metric_runs_and_is_finite(pair, name):
    X, Y = pair
    assert math.isfinite(quiet(M.compute, name, X[:200], Y[:200]))


def test_permutation_pvalues():
    X, Y = dependent(150, 5, noise=2.0, seed=43)
    dep = M.evaluate("cka_linear", X, Y, n_perm=99, seed=1)
    ind = M.evaluate("cka_linear", X, randn(150, 5, 44), n_perm=99, seed=1)
    assert dep.p_value == pytest.approx(0.01)  # +1 correction: the smallest attainable value
    assert ind.p_value > 0.1
    assert dep.null_mean < dep.value
    res = M.evaluate("residual", X, X + 0.1 * randn(150, 5, 45), n_perm=19, seed=1)  # lower is closer
    assert res.p_value == pytest.approx(0.05)
    kl = M.evaluate("kl_diag", X, Y, n_perm=50)
    assert kl.p_value == 1.0 and kl.null_mean == kl.value and "marginals" in kl.warnings[-1]


def test_resampling_ci_contains_point_estimate():
    X, Y = dependent(200, 6, seed=46)
    for name in ("cka_linear", "dcor_u", "cka_debiased", "svcca", "mutual_knn"):
        r = M.evaluate(name, X, Y, n_boot=50, level=0.9, seed=2)
        assert r.ci_low <= r.value <= r.ci_high, name
        assert r.ci_high - r.ci_low > 0
        assert r.n == 200 and r.d == 6 and math.isnan(r.p_value)
    assert M.evaluate("cka_linear", X, Y, n_boot=10).ci_method == "rows"
    assert M.evaluate("mutual_knn", X, Y, n_boot=10).ci_method == "half"


def test_row_bootstrap_biases_knn_upwards():
    """Why evaluate() half-samples kNN metrics: duplicated rows are exact neighbours in both spaces."""
    X, Y = dependent(200, 6, seed=46)
    r = M.evaluate("mutual_knn", X, Y, n_boot=30, level=0.9, seed=2, ci_method="rows")
    assert r.ci_low > r.value
    assert "use ci_method='half'" in r.warnings[-1]


def test_evaluate_records_and_reissues_warnings():
    X, Y = dependent(200, 40, seed=47)
    with pytest.warns(M.SampleSizeWarning, match="components on n=200"):
        r = M.evaluate("svcca", X, Y)
    assert len(r.warnings) == 1 and "n/10" in r.warnings[0]
    assert r.as_dict()["name"] == "svcca"


# ----- input validation ---------------------------------------------------------------------------------------
def test_bad_inputs():
    X = randn(100, 3, 48)
    with pytest.raises(ConfigError, match="X has 100 rows, Y has 90: rows must be paired"):
        M.dcor_u(X, X[:90])
    with pytest.raises(ConfigError, match="X has 100 rows, Y has 90: rows must be paired"):
        M.evaluate("cka_linear", X, X[:90])
    with pytest.raises(ConfigError, match=r"Y must be 2-D .*got shape \(100,\).*Y\[:, None\]"):
        M.cka_linear(X, X[:, 0])
    with pytest.raises(ConfigError, match=r"X must be 2-D .*got shape \(2, 50, 3\)"):
        M.cka_linear(X.reshape(2, 50, 3), X)
    Xn = X.clone()
    Xn[17, 1] = float("nan")
    with pytest.raises(NumericsError, match=r"X contains NaN or Inf in row 17 \(1 row\(s\) affected\)"):
        M.svcca(Xn, X)
    Yi = X.clone()
    Yi[[5, 9], 0] = float("inf")
    with pytest.raises(NumericsError, match=r"Y contains NaN or Inf in row 5 \(2 row\(s\) affected\)"):
        M.kl_diag(X, Yi)
    with pytest.raises(ConfigError, match=r"dcor2_u needs at least 4 samples, got n=3"):
        M.dcor_u(X[:3], X[:3])
    with pytest.raises(ConfigError, match=r"mutual_knn needs at least 11 samples, got n=8"):
        M.mutual_knn(X[:8], X[:8])
    with pytest.raises(ConfigError, match=r"cca_paper needs at least 100 samples"):
        M.cca_paper(X[:99], X[:99])
    with pytest.raises(ConfigError, match=r"n_boot must be >= 10"):
        M.evaluate("cka_linear", X, X, n_boot=5)


def test_kl_full_two_samples_match_split_half_floor():
    n, d = 2000, 16
    two = np.mean([M.kl_full(randn(n, d, 60 + 2 * s), randn(n, d, 61 + 2 * s)) for s in range(6)])
    floor = M.kl_floor(randn(n, d, 70), kind="full", n_splits=6, seed=1)
    assert floor == pytest.approx(two, rel=0.3)


def test_mi_neural_is_held_out_and_validates_its_split():
    d, rho = 2, math.sqrt(1.0 - math.exp(-1.0))  # true MI = 1 nat
    X, Y = correlated_gaussians(3000, d, rho, 80)
    kw = dict(steps=300, batch_size=256, lr=1e-3, hidden=64, embed=32, eval_every=25, patience=6)
    v = M.mi_neural(X.float(), Y.float(), estimator="infonce", **kw)
    assert v == pytest.approx(1.0, rel=0.2)
    with pytest.raises(ConfigError, match="test_mask has 5 entries, X and Y have 3000 rows"):
        M.mi_neural(X, Y, test_mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ConfigError, match=r"val_fraction must be in \[0, 1\)"):
        M.mi_neural(X, Y, val_fraction=1.0)
    with pytest.raises(ConfigError, match="unknown MI estimator 'kde'; valid estimators"):
        M.mi_neural(X, Y, estimator="kde")


def test_dcor_names_say_which_is_squared():
    X = randn(64, 5, 30)
    Y = X @ randn(5, 3, 31) + 0.5 * randn(64, 3, 32)
    u2, v = M.dcor2_u(X, Y), M.dcor_v(X, Y)
    assert M.compute("dcor2_u", X, Y) == u2 and M.METRIC_LABELS["dcor2_u"] == "dCor² (U)"
    assert M.metric_label("dcor_v") == "dCor (V)" and M.metric_label("cka_linear") == "cka_linear"
    assert "dcor2_u" in M.metric_set() and "dcor_u" not in M.metric_names()
    # old key kept for one release: same function, same label, same evaluate treatment
    assert M.dcor_u is M.dcor2_u and M.compute("dcor_u", X, Y) == u2 and M.metric_label("dcor_u") == "dCor² (U)"
    assert M.METRIC_ALIASES == {"dcor_u": "dcor2_u"}
    assert M.evaluate("dcor_u", X, Y).value == M.evaluate("dcor2_u", X, Y).value
    # the U statistic is squared, the V one is not: on strongly dependent data dCor² (U) < dCor (V)
    assert 0 < u2 < v < 1
