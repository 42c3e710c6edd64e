"""Small statistics toolkit: effect sizes, bootstrap confidence intervals, paired tests, Holm correction.

All functions take 1-d array-likes (numpy, torch or lists) and return floats or numpy arrays; they are
used by the alignment ablations and the steering experiments alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import ConfigError


def _vec(x, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ConfigError(f"{name} is empty")
    if not np.all(np.isfinite(a)):
        raise ConfigError(f"{name} contains NaN or Inf")
    return a


def cohens_d(treated, baseline) -> float:
    """(mean(treated) - mean(baseline)) / pooled SD (ddof=1). 0 for identical samples."""
    a, b = _vec(treated, "treated"), _vec(baseline, "baseline")
    if a.size < 2 or b.size < 2:
        raise ConfigError(f"cohens_d needs >= 2 values per group, got {a.size} and {b.size}")
    diff = a.mean() - b.mean()
    pooled = np.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2))
    if pooled == 0.0:
        return 0.0 if diff == 0.0 else float(np.sign(diff) * np.inf)
    return float(diff / pooled)


def hedges_g(treated, baseline) -> float:
    """Cohen's d with the small-sample correction J = 1 - 3 / (4(n_a + n_b) - 9)."""
    n = np.asarray(treated).size + np.asarray(baseline).size
    return cohens_d(treated, baseline) * (1.0 - 3.0 / (4.0 * n - 9.0))


def percent_change(treated, baseline) -> float:
    """100 * (mean(treated) - mean(baseline)) / |mean(baseline)|; NaN when the baseline mean is 0."""
    a, b = _vec(treated, "treated"), _vec(baseline, "baseline")
    m = b.mean()
    return float("nan") if m == 0.0 else float(100.0 * (a.mean() - m) / abs(m))


def bootstrap_ci(
    stat: Callable[..., float],
    *samples,
    n_boot: int = 1000,
    level: float = 0.95,
    paired: bool = False,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``stat(*samples)``; samples are resampled independently unless ``paired``."""
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level must be in (0, 1), got {level}")
    if n_boot < 10:
        raise ConfigError(f"n_boot must be >= 10, got {n_boot}")
    arrs = [_vec(s, f"sample {i}") for i, s in enumerate(samples)]
    rng = np.random.default_rng(seed)
    vals = np.empty(n_boot)
    for k in range(n_boot):
        if paired:
            idx = rng.integers(0, arrs[0].size, arrs[0].size)
            vals[k] = stat(*[a[idx] for a in arrs])
        else:
            vals[k] = stat(*[a[rng.integers(0, a.size, a.size)] for a in arrs])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval (mean, lo, hi). With one value the CI is (nan, nan)."""
    from scipy import stats as st

    a = _vec(values, "values")
    m = float(a.mean())
    if a.size < 2:
        return m, float("nan"), float("nan")
    half = float(st.t.ppf(0.5 + level / 2, a.size - 1) * a.std(ddof=1) / np.sqrt(a.size))
    return m, m - half, m + half


def paired_t_test(a, b) -> float:
    """Two-sided paired t-test p-value of a vs b (NaN when all differences are equal)."""
    from scipy import stats as st

    x, y = _vec(a, "a"), _vec(b, "b")
    if x.size != y.size:
        raise ConfigError(f"paired samples differ in length: {x.size} vs {y.size}")
    d = x - y
    if x.size < 2 or np.all(d == d[0]):
        return float("nan") if np.all(d == 0) or x.size < 2 else 0.0
    return float(st.ttest_rel(x, y).pvalue)


def welch_t_test(a, b) -> float:
    """Two-sided Welch t-test p-value."""
    from scipy import stats as st

    x, y = _vec(a, "a"), _vec(b, "b")
    if x.size < 2 or y.size < 2:
        return float("nan")
    if x.var() == 0 and y.var() == 0:
        return 1.0 if x.mean() == y.mean() else 0.0
    return float(st.ttest_ind(x, y, equal_var=False).pvalue)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (NaNs are passed through and not counted)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok])]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out
