"""Effect sizes, CIs, paired tests and Holm correction on hand-checked values."""

import numpy as np
import pytest

from msma_lens import ConfigError
from msma_lens.analysis import stats


def test_cohens_d_and_hedges_g():
    a, b = [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]
    assert stats.cohens_d(a, b) == 0.0
    # means 3 vs 2, both sample SDs sqrt(2/3*...): x = [2,3,4], y = [1,2,3] -> pooled SD 1, d = 1
    assert stats.cohens_d([2, 3, 4], [1, 2, 3]) == pytest.approx(1.0)
    assert stats.cohens_d([1, 2, 3], [2, 3, 4]) == pytest.approx(-1.0)  # sign follows (treated - baseline)
    assert stats.hedges_g([2, 3, 4], [1, 2, 3]) == pytest.approx(1.0 * (1 - 3 / (4 * 6 - 9)))
    with pytest.raises(ConfigError, match="needs >= 2 values per group"):
        stats.cohens_d([1.0], [1.0, 2.0])
    with pytest.raises(ConfigError, match="treated contains NaN"):
        stats.cohens_d([1.0, float("nan")], [1.0, 2.0])


def test_percent_change_and_mean_ci():
    assert stats.percent_change([3, 3], [2, 2]) == pytest.approx(50.0)
    assert np.isnan(stats.percent_change([1, 1], [0, 0]))
    m, lo, hi = stats.mean_ci([1.0, 2.0, 3.0])
    # t_{0.975, 2} = 4.3027; sd = 1; half-width = 4.3027 / sqrt(3)
    assert m == 2.0 and hi - m == pytest.approx(4.302653 / np.sqrt(3), rel=1e-5) and lo < m < hi


def test_bootstrap_ci_contains_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, 200)
    lo, hi = stats.bootstrap_ci(np.mean, x, n_boot=500, seed=1)
    assert lo < x.mean() < hi and hi - lo < 0.5
    assert (lo, hi) == stats.bootstrap_ci(np.mean, x, n_boot=500, seed=1)
    with pytest.raises(ConfigError, match="level must be in"):
        stats.bootstrap_ci(np.mean, x, level=1.5)


def test_paired_and_welch_tests_match_scipy():
    from scipy import stats as st

    a, b = [1.0, 2.5, 3.1, 4.8, 5.0], [0.9, 2.0, 3.0, 4.0, 4.1]
    assert stats.paired_t_test(a, b) == pytest.approx(st.ttest_rel(a, b).pvalue)
    assert stats.welch_t_test(a, b) == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue)
    with pytest.raises(ConfigError, match="paired samples differ in length: 5 vs 2"):
        stats.paired_t_test(a, b[:2])


def test_holm_known_values():
    # p = [0.01, 0.04, 0.03, nan]: sorted 0.01*3=0.03, 0.03*2=0.06, 0.04*1 -> max(0.06, 0.04)=0.06
    out = stats.holm([0.01, 0.04, 0.03, float("nan")])
    np.testing.assert_allclose(out[:3], [0.03, 0.06, 0.06])
    assert np.isnan(out[3])
    assert (stats.holm([0.5, 0.9]) <= 1.0).all()


# ----- paired effect size d_z and its BCa CI (the steering design) -------------------------------------------
# Hand example: differences d = b - a = [1, 2, 0, 1, 2, 0, 1, 2] over a baseline with spread.
HAND_BASE = [2.0, 4.0, 1.0, 3.0, 5.0, 0.0, 2.0, 3.0]
HAND_DIFF = [1.0, 2.0, 0.0, 1.0, 2.0, 0.0, 1.0, 2.0]


def test_cohens_dz_hand_example_and_scipy():
    from scipy import stats as st

    b = np.array(HAND_BASE)
    a = b + np.array(HAND_DIFF)
    # mean(d) = 9/8 = 1.125; SD(d, ddof=1) = sqrt(sum((d - 1.125)^2) / 7) = sqrt(4.875 / 7)
    dz = 1.125 / np.sqrt(4.875 / 7)
    assert stats.cohens_dz(a, b) == pytest.approx(dz) == pytest.approx(1.3481, abs=1e-4)
    # d_z = t_paired / sqrt(n)
    assert stats.cohens_dz(a, b) == pytest.approx(st.ttest_rel(a, b).statistic / np.sqrt(8))
    assert stats.hedges_gz(a, b) == pytest.approx(dz * (1 - 3 / (4 * 7 - 1)))
    # the pooled-SD g of independent groups understates the paired effect here (the issue's 0.69 vs 1.03)
    assert stats.hedges_g(a, b) < 0.7 < stats.cohens_dz(a, b)
    assert stats.cohens_dz(b, b) == 0.0 and stats.cohens_dz(b + 1, b) == np.inf
    with pytest.raises(ConfigError, match="paired samples differ in length: 8 vs 7"):
        stats.cohens_dz(a, b[:7])


def test_issue_numbers_pooled_g_069_vs_paired_dz_103():
    """Pairs built to the issue's numbers: pooled Hedges' g ≈ 0.69 while paired d_z ≈ 1.03."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=16)
    d = (z - z.mean()) / z.std(ddof=1) + 1.03  # differences with d_z = 1.03 exactly
    e = rng.normal(size=16)
    e -= e.mean() + np.polyfit(d, e, 1)[0] * (d - d.mean())  # baseline uncorrelated with d
    b = e / e.std(ddof=1) * 1.3
    a = b + d
    assert stats.cohens_dz(a, b) == pytest.approx(1.03)
    assert stats.hedges_g(a, b) == pytest.approx(0.69, abs=0.02)


def test_paired_bca_ci_is_seeded_contains_estimate_and_matches_scipy():
    from scipy import stats as st

    rng = np.random.default_rng(3)
    b = rng.normal(size=20)
    a = b + rng.normal(0.6, 1.0, 20)
    lo, hi = stats.paired_bca_ci(stats.cohens_dz, a, b, n_boot=2000, seed=5)
    assert lo < stats.cohens_dz(a, b) < hi
    assert (lo, hi) == stats.paired_bca_ci(stats.cohens_dz, a, b, n_boot=2000, seed=5)
    # same as scipy's BCa with pairs resampled (non-vectorised path, a generic paired statistic)
    ref = st.bootstrap((a, b), lambda x, y: stats.cohens_dz(x, y), paired=True, vectorized=False, method="BCa",
                       n_resamples=2000, rng=np.random.default_rng(5)).confidence_interval
    glo, ghi = stats.paired_bca_ci(lambda x, y: stats.cohens_dz(x, y), a, b, n_boot=2000, seed=5)
    assert (glo, ghi) == pytest.approx((ref.low, ref.high))
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=0.05)  # fast path: resampling differences


@pytest.mark.parametrize(("a", "b", "n"), [(np.arange(7.0) + 1, np.arange(7.0), 7),          # n < 8
                                           ([1.0] + [0.0] * 9, [0.0] * 10, 10),               # one non-zero difference
                                           ([2.0] * 10, [1.0] * 10, 10)])                     # all differences equal
def test_paired_bca_ci_warns_and_returns_nan_when_meaningless(a, b, n):
    with pytest.warns(UserWarning, match=f"n={n} pairs"):
        lo, hi = stats.paired_bca_ci(stats.cohens_dz, a, b, n_boot=100)
    assert np.isnan(lo) and np.isnan(hi)


@pytest.mark.parametrize("true_dz", [0.0, 0.5])
def test_paired_bca_ci_coverage_at_n16(true_dz):
    """1000 datasets of 16 normal differences with known d_z: the nominal 95% BCa CI covers >= 0.93
    (measured 0.947 at d_z = 0, 0.938-0.942 at 0.5; it drops to ~0.91 at d_z = 1, see the next test)."""
    rng = np.random.default_rng(7)
    hits = 0
    for k in range(1000):
        d = rng.normal(true_dz, 1.0, 16)
        lo, hi = stats.paired_bca_ci(stats.cohens_dz, d, np.zeros(16), n_boot=1000, seed=k)
        hits += lo <= true_dz <= hi
    assert hits / 1000 >= 0.93


def test_paired_bca_ci_coverage_known_shortfall_at_large_dz():
    """Recorded limitation: at d_z = 1, n = 16 BCa undercovers (measured 0.91 over 2000 datasets)."""
    rng = np.random.default_rng(11)
    hits = sum(lo <= 1.0 <= hi for lo, hi in (stats.paired_bca_ci(stats.cohens_dz, rng.normal(1.0, 1.0, 16), np.zeros(16),
                                                                    n_boot=1000, seed=k) for k in range(1000)))
    assert 0.89 <= hits / 1000 < 0.95


# ----- the exact noncentral-t CI of δ_z (the default paired CI) ----------------------------------------------
def test_paired_nct_ci_inverts_the_noncentral_t_cdf():
    from scipy import stats as st

    b = np.array(HAND_BASE)
    a = b + np.array(HAND_DIFF)
    lo, hi = stats.paired_nct_ci(a, b)
    t = stats.cohens_dz(a, b) * np.sqrt(8)  # the paired t statistic
    # the bounds are the δ_z at which the observed t sits at the 97.5th / 2.5th percentile of nct(7, √8 δ_z)
    assert st.nct.cdf(t, 7, lo * np.sqrt(8)) == pytest.approx(0.975, abs=1e-9)
    assert st.nct.cdf(t, 7, hi * np.sqrt(8)) == pytest.approx(0.025, abs=1e-9)
    assert lo < stats.cohens_dz(a, b) < hi
    lo90, hi90 = stats.paired_nct_ci(a, b, level=0.90)
    assert lo < lo90 < hi90 < hi
    # sign symmetry: swapping treated and baseline mirrors the interval
    assert stats.paired_nct_ci(b, a) == pytest.approx((-hi, -lo))
    # large n: the normal approximation d ± z·sqrt(1/n + d²/(2n)) (Hedges & Olkin) agrees
    rng = np.random.default_rng(4)
    d = rng.normal(0.8, 1.0, 4000)
    dz = stats.cohens_dz(d, np.zeros_like(d))
    half = 1.959964 * np.sqrt(1 / 4000 + dz**2 / 8000)
    assert stats.paired_nct_ci(d, np.zeros_like(d)) == pytest.approx((dz - half, dz + half), abs=2e-3)
    with pytest.raises(ConfigError, match="level must be in"):
        stats.paired_nct_ci(a, b, level=1.0)


@pytest.mark.parametrize("true_dz", [0.0, 0.5, 1.0])
def test_default_paired_ci_covers_at_n16(true_dz):
    """2000 datasets of 16 normal differences with known δ_z: the default 95% CI covers >= 0.93 (exact under
    normality; measured 0.954 / 0.954 / 0.949 for δ_z = 0 / 0.5 / 1, simulation SE 0.005) and is not trivially
    wide (median width 0.99 / 1.04 / 1.22 ≈ 2·1.96·sqrt(1/16 + δ²/32))."""
    rng = np.random.default_rng(0)
    hits, widths = 0, []
    for _ in range(2000):
        d = rng.normal(true_dz, 1.0, 16)
        lo, hi = stats.paired_effect_ci(d, np.zeros(16))  # defaults: d_z, nct
        hits += lo <= true_dz <= hi
        widths.append(hi - lo)
    assert 0.93 <= hits / 2000 <= 0.97
    assert np.median(widths) < 1.1 * 2 * 1.96 * np.sqrt(1 / 16 + true_dz**2 / 32)


def test_paired_effect_ci_dispatch_and_errors():
    rng = np.random.default_rng(3)
    b = rng.normal(size=20)
    a = b + rng.normal(0.6, 1.0, 20)
    nct = stats.paired_nct_ci(a, b)
    assert stats.paired_effect_ci(a, b) == nct == stats.paired_effect_ci(a, b, "g_z")  # one interval for δ_z
    assert stats.paired_effect_ci(a, b, "g_z", method="bca", n_boot=500, seed=2) == \
        stats.paired_bca_ci(stats.hedges_gz, a, b, n_boot=500, seed=2)
    assert set(stats.PAIRED_CI_METHODS) == {"nct", "bca"}
    with pytest.raises(ConfigError, match=r"paired CI method must be one of \['nct', 'bca'\], got 'percentile'"):
        stats.paired_effect_ci(a, b, method="percentile")
    with pytest.raises(ConfigError, match=r"effect must be one of \['d_z', 'g_z'\], got 'hedges_g'"):
        stats.paired_effect_ci(a, b, "hedges_g")
    for method in ("nct", "bca"):
        with pytest.warns(UserWarning, match="n=7 pairs"):
            lo, hi = stats.paired_effect_ci(np.arange(7.0) + rng.normal(size=7), np.arange(7.0), method=method, n_boot=50)
        assert np.isnan(lo) and np.isnan(hi)
