"""Held-out statistics of a stratification: intrinsic dimension per stratum, gating entropy, inter-expert
distances, agreement with labels (NMI, ARI, permutation null) and cluster-separation indices (sklearn)."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg import subspace_angles
from sklearn import metrics

from msma_lens.report import twonn_dimension

__all__ = ["cluster_indices", "gating_entropy", "label_agreement", "mean_ci", "pca_dim_75", "principal_angles",
           "stratum_dimensions"]


def pca_dim_75(x: torch.Tensor, variance: float = 0.75) -> int:
    """The authors' rule: the fewest principal components whose cumulative explained variance reaches ``variance``
    (``searchsorted(cumvar, variance) + 1``); 1 for fewer than 2 points or constant data."""
    if x.shape[0] < 2:
        return 1
    c = x.double() - x.double().mean(0)
    ev = torch.linalg.svdvals(c) ** 2
    if ev.sum() <= 0:
        return 1
    cum = (ev / ev.sum()).cumsum(0).numpy()
    return int(min(np.searchsorted(cum, variance - 1e-12) + 1, ev.numel()))


def stratum_dimensions(x: torch.Tensor, assign: torch.Tensor, n_strata: int, variance: float = 0.75,
                       min_points: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(PCA dimension at ``variance``, TwoNN dimension, count) of the rows of ``x`` in each stratum ``0..n_strata-1``;
    NaN dimensions for strata with fewer than ``min_points`` rows."""
    pca, two, count = (torch.full((n_strata,), math.nan, dtype=torch.float64) for _ in range(3))
    for j in range(n_strata):
        xj = x[assign == j]
        count[j] = xj.shape[0]
        if xj.shape[0] >= max(min_points, 3):
            pca[j] = pca_dim_75(xj, variance)
            two[j] = twonn_dimension(xj)
    return pca, two, count


def gating_entropy(probs: torch.Tensor) -> dict[str, float]:
    """Entropies normalised by log K: per sample (mean, sd), of the mean gate, of the hard-assignment fractions."""
    k = probs.shape[1]
    p = probs.double().clamp_min(0)
    h = -(p * p.clamp_min(1e-300).log()).sum(1) / math.log(k)
    mean = p.mean(0)
    frac = torch.bincount(p.argmax(1), minlength=k).double() / p.shape[0]

    def ent(q: torch.Tensor) -> float:
        q = q[q > 0]
        return float(-(q * q.log()).sum() / math.log(k))

    return {"entropy_norm_mean": float(h.mean()), "entropy_norm_sd": float(h.std()) if h.numel() > 1 else math.nan,
            "entropy_of_mean_norm": ent(mean), "assignment_entropy_norm": ent(frac)}


def principal_angles(dicts: list[torch.Tensor]) -> torch.Tensor:
    """[K, K] mean principal angle (degrees) between the column spaces of the dictionaries (scipy subspace_angles)."""
    k = len(dicts)
    out = torch.zeros(k, k, dtype=torch.float64)
    for i in range(k):
        for j in range(i + 1, k):
            a = subspace_angles(dicts[i].double().numpy(), dicts[j].double().numpy())
            out[i, j] = out[j, i] = float(np.degrees(a).mean())
    return out


def label_agreement(assign: np.ndarray, labels: np.ndarray, n_perm: int, rng: np.random.Generator) -> dict[str, float]:
    """NMI and ARI of ``assign`` against ``labels``, and a permutation p-value for the NMI ((1 + #{null ≥ obs}) / (1 + n_perm))."""
    nmi = float(metrics.normalized_mutual_info_score(labels, assign))
    ari = float(metrics.adjusted_rand_score(labels, assign))
    if n_perm == 0:
        return {"nmi": nmi, "ari": ari, "p": math.nan}
    null = np.array([metrics.normalized_mutual_info_score(rng.permutation(labels), assign) for _ in range(n_perm)])
    return {"nmi": nmi, "ari": ari, "p": float((1 + (null >= nmi - 1e-12).sum()) / (1 + n_perm))}


def cluster_indices(x: np.ndarray, assign: np.ndarray) -> dict[str, float]:
    """Silhouette, Davies–Bouldin and Calinski–Harabasz of the partition ``assign`` of ``x`` (NaN unless 2 ≤ #clusters < n)."""
    n_used = len(np.unique(assign))
    if not 2 <= n_used < x.shape[0]:
        return {"silhouette": math.nan, "davies_bouldin": math.nan, "calinski_harabasz": math.nan}
    return {"silhouette": float(metrics.silhouette_score(x, assign)),
            "davies_bouldin": float(metrics.davies_bouldin_score(x, assign)),
            "calinski_harabasz": float(metrics.calinski_harabasz_score(x, assign))}


def mean_ci(values: np.ndarray | list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval over the finite values (NaN bounds with fewer than 2)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if v.size < 2:
        return m, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return m, m - half, m + half
