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
