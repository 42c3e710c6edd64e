"""Alignment metrics between paired samples ``X [n, dx]`` and ``Y [n, dy]`` (row i of X pairs with row i of Y).

Pure torch, float64, on the device of the inputs. Families (methods.md §2–3, §5.5):

* divergences (smaller = closer; compare moments, so they change under a map): :func:`kl_diag`,
  :func:`kl_full` (shrinkage, Cholesky), the split-half :func:`kl_floor`, and the normalised residuals
  :func:`residual` (of a given map) and :func:`procrustes` (closed-form orthogonal Procrustes);
* dependence (larger = more dependent; invariant to orthogonal maps): :func:`dcor2_u` (bias-corrected dCor², squared;
  old name ``dcor_u``), :func:`dcor_v` (V-statistic dCor, not squared), :func:`cka_linear`, :func:`cka_debiased`, :func:`svcca`, :func:`pwcca`, :func:`cca_mean`,
  :func:`mutual_knn`, :func:`mi_ksg`, :func:`mi_gaussian`, :func:`mi_neural`;
* the MSMA authors' definitions (papers.md §A.6), for parity: :func:`kl_paper`, :func:`mi_histogram`,
  :func:`dcor_paper`, :func:`cca_paper`.

:data:`METRICS` maps names to functions; :func:`compute` calls one by name; :func:`evaluate` adds a row-permutation
null and a resampling CI (rows of X and Y resampled jointly) and records sample-size warnings in a
:class:`MetricResult`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..analysis.stats import bootstrap_ci
from ..errors import ConfigError, NumericsError

__all__ = [
    "LOWER_IS_CLOSER",
    "METRICS",
    "MetricResult",
    "SampleSizeWarning",
    "cca_mean",
    "cca_paper",
    "cka_debiased",
    "cka_linear",
    "compute",
    "METRIC_ALIASES",
    "METRIC_LABELS",
    "dcor2_u",
    "dcor_paper",
    "dcor_u",
    "dcor_v",
    "evaluate",
    "kl_diag",
    "kl_floor",
    "kl_full",
    "kl_paper",
    "ledoit_wolf_shrinkage",
    "metric_set",
    "mi_gaussian",
    "mi_histogram",
    "mi_ksg",
    "mi_neural",
    "metric_label",
    "metric_names",
    "mutual_knn",
    "procrustes",
    "pwcca",
    "residual",
    "svcca",
]

_F64 = torch.float64
_MAX_BYTES = 2**31  # working-memory budget of the O(n²) metrics before they switch to row blocks


class SampleSizeWarning(UserWarning):
    """The estimator runs, but n is too small for the dimension to trust its value."""


# ----- input handling ---------------------------------------------------------------------------------------
def _matrix(a, name: str) -> torch.Tensor:
    t = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    if t.ndim != 2:
        hint = f" (use {name}[:, None] for a single feature)" if t.ndim == 1 else ""
        raise ConfigError(f"{name} must be 2-D [n_samples, width], got shape {tuple(t.shape)}{hint}")
    if t.shape[1] == 0:
        raise ConfigError(f"{name} has no columns (shape {tuple(t.shape)})")
    if t.is_complex():
        raise ConfigError(f"{name} is complex; metrics need real inputs")
    return t


def _finite(t: torch.Tensor, name: str) -> torch.Tensor:
    t = t.detach().to(_F64)
    bad = ~torch.isfinite(t).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()
        raise NumericsError(f"{name} contains NaN or Inf in row {int(rows[0])} ({rows.numel()} row(s) affected)")
    return t


def _need(n: int, min_n: int, what: str, why: str = "") -> None:
    if n < min_n:
        raise ConfigError(f"{what} needs at least {min_n} samples{why}, got n={n}")


def _pair(X, Y, what: str, min_n: int = 2, same_width: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a paired sample: 2-D, same row count and device, finite, at least ``min_n`` rows; float64 copies."""
    X, Y = _matrix(X, "X"), _matrix(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise ConfigError(f"X has {X.shape[0]} rows, Y has {Y.shape[0]}: rows must be paired")
    if X.device != Y.device:
        raise ConfigError(f"X is on {X.device} but Y is on {Y.device}; move both to one device")
    if same_width and X.shape[1] != Y.shape[1]:
        raise ConfigError(f"{what} compares coordinates: X has width {X.shape[1]}, Y has width {Y.shape[1]}")
    X, Y = _finite(X, "X"), _finite(Y, "Y")
    _need(X.shape[0], min_n, what)
    return X, Y


def _warn(msg: str) -> None:
    warnings.warn(msg, SampleSizeWarning, stacklevel=3)


def _centre(A: torch.Tensor) -> torch.Tensor:
    return A - A.mean(dim=0, keepdim=True)


def _directed(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], X, Y, direction: str) -> float:
    if direction == "xy":
        return float(fn(X, Y))
    if direction == "yx":
        return float(fn(Y, X))
    if direction == "sym":
        return float(fn(X, Y) + fn(Y, X))
    raise ConfigError(f"direction must be 'xy' (KL(X‖Y)), 'yx' or 'sym' (sum of both), got {direction!r}")


# ----- Gaussian KL ------------------------------------------------------------------------------------------
def _kl_diag_moments(mp, vp, mq, vq) -> torch.Tensor:
    return 0.5 * (vp / vq + (mq - mp) ** 2 / vq - 1.0 + torch.log(vq) - torch.log(vp)).sum()


def _diag_moments(A: torch.Tensor, ddof: int, var_floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    var = A.var(dim=0, correction=ddof)
    floor = var_floor * max(float(var.mean()), 1e-300)
    return A.mean(dim=0), var.clamp_min(floor)


def kl_diag(X, Y, direction: str = "xy", ddof: int = 1, var_floor: float = 1e-12) -> float:
    """Diagonal-Gaussian KL(N_X ‖ N_Y) in nats, summed over dimensions.

    ``direction``: ``"xy"`` = KL(X‖Y), ``"yx"``, ``"sym"`` = the sum of both. Variances use ``ddof`` and are
    floored at ``var_floor`` × their mean. Two samples of one distribution give ≈ 2d/n (see :func:`kl_floor`).
    """
    X, Y = _pair(X, Y, "kl_diag", min_n=ddof + 1, same_width=True)
    mx, vx = _diag_moments(X, ddof, var_floor)
    my, vy = _diag_moments(Y, ddof, var_floor)
    return _directed(lambda a, b: _kl_diag_moments(*a, *b), (mx, vx), (my, vy), direction)


def _lw(Xc: torch.Tensor) -> float:
    n, d = Xc.shape
    X2 = Xc * Xc
    emp_trace = X2.sum(dim=0) / n
    mu = emp_trace.sum() / d
    beta_ = (X2.T @ X2).sum()
    delta_ = ((Xc.T @ Xc) ** 2).sum() / n**2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * emp_trace.sum() + d * mu**2) / d
    beta = torch.minimum(beta, delta)
    return 0.0 if float(beta) <= 0.0 else float((beta / delta).clamp(0.0, 1.0))


def ledoit_wolf_shrinkage(X) -> float:
    """Ledoit–Wolf (2004) optimal shrinkage intensity towards ``(tr S / d)·I`` (sklearn's formula), in [0, 1]."""
    X = _finite(_matrix(X, "X"), "X")
    _need(X.shape[0], 2, "ledoit_wolf_shrinkage")
    return _lw(_centre(X))


def _shrunk_moments(A: torch.Tensor, shrinkage, ddof: int) -> tuple[torch.Tensor, torch.Tensor]:
    n, d = A.shape
    Ac = _centre(A)
    S = Ac.T @ Ac / (n - ddof)
    alpha = _lw(Ac) if isinstance(shrinkage, str) else float(shrinkage)
    if alpha > 0:
        mu = float(torch.trace(S)) / d
        S = (1.0 - alpha) * S
        S.diagonal().add_(alpha * mu)
    return A.mean(dim=0), S


def _chol(S: torch.Tensor, which: str) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(S)
    if int(info) != 0:
        raise NumericsError(f"covariance of {which} is not positive definite (Cholesky failed); use shrinkage > 0")
    return L


def _kl_full_moments(mp, Sp, mq, Sq, names=("X", "Y")) -> torch.Tensor:
    Lp, Lq = _chol(Sp, names[0]), _chol(Sq, names[1])
    d = Sp.shape[0]
    M = torch.linalg.solve_triangular(Lq, Lp, upper=False)  # Lq⁻¹ Lp: tr(Sq⁻¹ Sp) = ‖M‖²_F
    z = torch.linalg.solve_triangular(Lq, (mq - mp)[:, None], upper=False)
    logdet = 2.0 * (torch.log(Lq.diagonal()).sum() - torch.log(Lp.diagonal()).sum())
    return 0.5 * ((M * M).sum() + (z * z).sum() - d + logdet)


def kl_full(X, Y, direction: str = "xy", shrinkage: float | str = 0.1, ddof: int = 1) -> float:
    """Full-covariance Gaussian KL(N_X ‖ N_Y) in nats with shrunk covariances, Cholesky in float64.

    Each covariance becomes ``(1 − α) S + α (tr S / d) I`` with ``α = shrinkage`` (fixed, default 0.1) or the
    Ledoit–Wolf intensity of that sample (``shrinkage="ledoit_wolf"``). The floor grows like d²/2n; warns when
    n < 10·d. Without shrinkage it needs n > d.
    """
    if isinstance(shrinkage, str):
        if shrinkage not in ("ledoit_wolf", "lw"):
            raise ConfigError(f"shrinkage must be a number in [0, 1] or 'ledoit_wolf', got {shrinkage!r}")
    elif not 0.0 <= float(shrinkage) <= 1.0:
        raise ConfigError(f"shrinkage must be in [0, 1], got {shrinkage}")
    X, Y = _pair(X, Y, "kl_full", min_n=ddof + 1, same_width=True)
    n, d = X.shape
    if not isinstance(shrinkage, str) and float(shrinkage) == 0.0:
        _need(n, d + ddof, "kl_full without shrinkage", f" (sample covariance is singular for n <= d={d}; use shrinkage > 0)")
    if n < 10 * d:
        _warn(f"kl_full: n={n} < 10·d={10 * d}; the full-covariance KL floor (≈ d²/2n = {d * d / (2 * n):.3g}) is large")
    mx, Sx = _shrunk_moments(X, shrinkage, ddof)
    my, Sy = _shrunk_moments(Y, shrinkage, ddof)
    return _directed(lambda a, b: _kl_full_moments(*a, *b), (mx, Sx), (my, Sy), direction)


KL_FLOOR_METHODS = ("parametric", "split_half")


def _gaussian_sampler(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and a square root R (R Rᵀ = Σ̂) of the Ledoit–Wolf-shrunk covariance of X, via eigh (PSD-safe)."""
    n, d = X.shape
    Xc = _centre(X)
    S = Xc.T @ Xc / (n - 1)
    alpha = _lw(Xc)
    if alpha > 0:
        mu = float(torch.trace(S)) / d
        S = (1.0 - alpha) * S
        S.diagonal().add_(alpha * mu)
    lam, V = torch.linalg.eigh(S)
    return X.mean(dim=0), V * lam.clamp_min(0.0).sqrt()[None, :]


def kl_floor(
    X,
    kind: str = "diag",
    n_splits: int = 8,
    seed: int = 0,
    rescale: bool = True,
    method: str = "parametric",
    **kw,
) -> float:
    """Estimation floor of a KL metric: its expected value between two independent size-n samples of X's distribution.

    ``kind`` is ``"diag"``, ``"full"`` or ``"paper"``; ``kw`` go to that KL function (``direction``, ``shrinkage``…).

    ``method="parametric"`` (default): fit a Gaussian to X (sample mean, Ledoit–Wolf-shrunk covariance), draw
    ``n_splits`` pairs of fresh size-n samples from it and average the KL of each pair. This is the floor at the
    evaluation's n for any d/n; it assumes X is roughly Gaussian (heavier tails raise the true floor). The LW
    fit matters: the raw sample covariance is over-dispersed at d/n ≳ 0.1 and underestimates the shrunk-KL floor.

    ``method="split_half"`` (the earlier default): KL between random halves of X averaged over ``n_splits``
    splits, halved when ``rescale`` as if the floor scaled like 1/n. Right for the diagonal KL (≈ 2d/n), but the
    shrunk full KL does not scale like 1/n at d/n ≈ 0.3–0.6: at d = 576, n = 2048 it reads 104.9 where two
    fresh samples give 81.9.
    """
    fns = {"diag": kl_diag, "full": kl_full, "paper": kl_paper}
    if kind not in fns:
        raise ConfigError(f"kind must be one of {sorted(fns)}, got {kind!r}")
    if method not in KL_FLOOR_METHODS:
        raise ConfigError(f"method must be one of {KL_FLOOR_METHODS}, got {method!r}")
    if n_splits < 1:
        raise ConfigError(f"n_splits must be >= 1, got {n_splits}")
    X = _finite(_matrix(X, "X"), "X")
    n = X.shape[0]
    _need(n, 4, "kl_floor", " (two samples of >= 2 rows)")
    gen = torch.Generator().manual_seed(seed)
    vals = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleSizeWarning)
        if method == "split_half":
            for _ in range(n_splits):
                p = torch.randperm(n, generator=gen).to(X.device)
                h = n // 2
                vals.append(fns[kind](X[p[:h]], X[p[h : 2 * h]], **kw))
            return float(np.mean(vals)) * (0.5 if rescale else 1.0)
        mean, R = _gaussian_sampler(X)
        d = X.shape[1]
        for _ in range(n_splits):
            A, B = (mean + torch.randn(n, d, generator=gen, dtype=_F64).to(X.device) @ R.T for _ in range(2))
            vals.append(fns[kind](A, B, **kw))
    return float(np.mean(vals))


# ----- distance correlation ----------------------------------------------------------------------------------
def _dist_rows(A: torch.Tensor, sq: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Euclidean distances of rows lo:hi of A to all rows (matmul form), exact zeros on the diagonal."""
    D = A[lo:hi] @ A.T
    D.mul_(-2.0).add_(sq[lo:hi, None]).add_(sq[None, :]).clamp_(min=0.0).sqrt_()
    r = torch.arange(hi - lo, device=A.device)
    D[r, r + lo] = 0.0
    return D


def _dcov_terms(X: torch.Tensor, Y: torch.Tensor, unbiased: bool, max_bytes: int) -> tuple[float, float, float]:
    """⟨A,B⟩, ⟨A,A⟩, ⟨B,B⟩ of the double-centred (V) or U-centred distance matrices, in row blocks if large."""
    n = X.shape[0]
    Xc, Yc = _centre(X), _centre(Y)
    sx, sy = (Xc * Xc).sum(1), (Yc * Yc).sum(1)
    step = n if 3 * n * n * 8 <= max_bytes else max(1, max_bytes // (3 * n * 8))
    blocks = [(lo, min(lo + step, n)) for lo in range(0, n, step)]
    cache = None
    if len(blocks) == 1:
        cache = (_dist_rows(Xc, sx, 0, n), _dist_rows(Yc, sy, 0, n))
        Ra, Rb = cache[0].sum(1), cache[1].sum(1)
    else:
        Ra = torch.cat([_dist_rows(Xc, sx, lo, hi).sum(1) for lo, hi in blocks])
        Rb = torch.cat([_dist_rows(Yc, sy, lo, hi).sum(1) for lo, hi in blocks])
    Ta, Tb = Ra.sum(), Rb.sum()
    if unbiased:
        ra, rb, ga, gb = Ra / (n - 2), Rb / (n - 2), Ta / ((n - 1) * (n - 2)), Tb / ((n - 1) * (n - 2))
    else:
        ra, rb, ga, gb = Ra / n, Rb / n, Ta / n**2, Tb / n**2
    xy = xx = yy = torch.zeros((), dtype=_F64, device=X.device)
    for lo, hi in blocks:
        a, b = cache if cache is not None else (_dist_rows(Xc, sx, lo, hi), _dist_rows(Yc, sy, lo, hi))
        for M, r, g in ((a, ra, ga), (b, rb, gb)):
            M.sub_(r[lo:hi, None]).sub_(r[None, :]).add_(g)
            if unbiased:
                i = torch.arange(hi - lo, device=X.device)
                M[i, i + lo] = 0.0
        a, b = a.reshape(-1), b.reshape(-1)
        xy, xx, yy = xy + a @ b, xx + a @ a, yy + b @ b
    return float(xy), float(xx), float(yy)


def dcor2_u(X, Y, max_bytes: int = _MAX_BYTES) -> float:
    """Bias-corrected *squared* distance correlation dCor²_U (Székely & Rizzo 2014); ≈ 0 under independence.

    Label "dCor² (U)". Compare with :func:`dcor_v` (not squared) only after squaring that one or taking
    the square root of this one. ``dcor_u`` is the old name, kept as an alias for one release.

    Equals ``dcor.u_distance_correlation_sqr``; may be slightly negative. Memory ≈ 3 n² floats, processed in
    row blocks (two passes) beyond ``max_bytes``. Returns 0 when X or Y is constant.
    """
    X, Y = _pair(X, Y, "dcor2_u", min_n=4)
    xy, xx, yy = _dcov_terms(X, Y, True, max_bytes)
    den = xx * yy
    return xy / math.sqrt(den) if den > 0 else 0.0


dcor_u = dcor2_u  # old name of dcor2_u (it is squared): kept for one release


def dcor_v(X, Y, max_bytes: int = _MAX_BYTES) -> float:
    """Distance correlation dCor (V-statistic, *not* squared; equals ``dcor.distance_correlation``). Label "dCor (V)".

    Strongly biased upwards in high dimension (0.6 for independent data at n=4096, d=576): prefer :func:`dcor2_u`.
    """
    X, Y = _pair(X, Y, "dcor_v", min_n=2)
    xy, xx, yy = _dcov_terms(X, Y, False, max_bytes)
    den = xx * yy
    return math.sqrt(max(xy, 0.0) / math.sqrt(den)) if den > 0 else 0.0


# ----- CKA -----------------------------------------------------------------------------------------------------
def _cross_fro2(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """‖AᵀB‖²_F = ⟨AAᵀ, BBᵀ⟩, in feature or sample space, whichever is cheaper."""
    n, da, db = A.shape[0], A.shape[1], B.shape[1]
    if n * da * db <= n * n * (da + db):
        M = A.T @ B
        return (M * M).sum()
    return ((A @ A.T) * (B @ B.T)).sum()


def cka_linear(X, Y) -> float:
    """Linear CKA (Kornblith et al. 2019): ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on centred data. Biased up for small n/d."""
    X, Y = _pair(X, Y, "cka_linear", min_n=2)
    Xc, Yc = _centre(X), _centre(Y)
    den = torch.sqrt(_cross_fro2(Xc, Xc) * _cross_fro2(Yc, Yc))
    return float(_cross_fro2(Xc, Yc) / den) if float(den) > 0 else 0.0


def _hsic_u(A: torch.Tensor, B: torch.Tensor, AB: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC (Song et al. 2012) of the linear kernels of centred A, B, without forming n×n Grams."""
    n = A.shape[0]
    ka, kb = (A * A).sum(1), (B * B).sum(1)  # Gram diagonals
    ra = A @ A.sum(0) - ka  # row sums of the Gram with zeroed diagonal
    rb = B @ B.sum(0) - kb
    tr = AB - (ka * kb).sum()
    return (tr + ra.sum() * rb.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (ra * rb).sum()) / (n * (n - 3))


def cka_debiased(X, Y) -> float:
    """Debiased linear CKA: CKA with the unbiased HSIC estimator (Song et al. 2012); ≈ 0 under independence.

    Computed in feature space from ‖XᵀY‖²_F and row norms, O(n·dx·dy) time, no n×n matrix.
    """
    X, Y = _pair(X, Y, "cka_debiased", min_n=4)
    Xc, Yc = _centre(X), _centre(Y)
    hxy = _hsic_u(Xc, Yc, _cross_fro2(Xc, Yc))
    hxx = _hsic_u(Xc, Xc, _cross_fro2(Xc, Xc))
    hyy = _hsic_u(Yc, Yc, _cross_fro2(Yc, Yc))
    den = float(hxx * hyy)
    return float(hxy) / math.sqrt(den) if den > 0 else 0.0


# ----- CCA family ----------------------------------------------------------------------------------------------
def _orth_basis(A: torch.Tensor, name: str) -> torch.Tensor:
    """Orthonormal basis of the centred column space (thin QR; SVD with rank truncation if rank-deficient)."""
    Ac = _centre(A)
    Q, R = torch.linalg.qr(Ac)
    rd = R.diagonal().abs()
    if float(rd.min()) > 1e-10 * max(float(rd.max()), 1e-300):
        return Q
    U, S, _ = torch.linalg.svd(Ac, full_matrices=False)
    keep = S > 1e-10 * max(float(S[0]), 1e-300)
    if int(keep.sum()) == 0:
        raise NumericsError(f"{name} is constant: canonical correlations are undefined")
    return U[:, keep]


def _pcs(A: torch.Tensor, k: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal top-k principal-component scores U_k (n×k) and singular values S_k of the centred data."""
    U, S, _ = torch.linalg.svd(_centre(A), full_matrices=False)
    k = min(k, int((S > 1e-10 * max(float(S[0]), 1e-300)).sum()))
    if k == 0:
        raise NumericsError(f"{name} is constant: principal components are undefined")
    return U[:, :k], S[:k]


def _canon(Qx: torch.Tensor, Qy: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(Qx.T @ Qy).clamp(0.0, 1.0)


def _pc_pair(X, Y, k: int, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if k < 1:
        raise ConfigError(f"{what}: k must be >= 1, got {k}")
    X, Y = _pair(X, Y, what, min_n=2)
    n = X.shape[0]
    kx, ky = min(k, X.shape[1]), min(k, Y.shape[1])
    _need(n, max(kx, ky) + 2, f"{what} with k={max(kx, ky)} components")
    if max(kx, ky) > n / 10:
        _warn(f"{what}: {max(kx, ky)} components on n={n} samples (> n/10); canonical correlations are biased up")
    Ux, Sx = _pcs(X, kx, "X")
    Uy, _ = _pcs(Y, ky, "Y")
    return Ux, Sx, Uy


def svcca(X, Y, k: int = 50) -> float:
    """SVCCA (Raghu et al. 2017): mean canonical correlation between the top-k principal components of X and Y."""
    Ux, _, Uy = _pc_pair(X, Y, k, "svcca")
    return float(_canon(Ux, Uy).mean())


def pwcca(X, Y, k: int = 50) -> float:
    """PWCCA (Morcos et al. 2018) on the top-k PCs: canonical correlations weighted by Σ_j |⟨h_i, x_j⟩|.

    h_i are X's canonical variates and x_j X's principal-component score columns, so the value is invariant to
    orthogonal maps of X.
    """
    Ux, Sx, Uy = _pc_pair(X, Y, k, "pwcca")
    A, rho, _ = torch.linalg.svd(Ux.T @ Uy, full_matrices=False)
    rho = rho.clamp(0.0, 1.0)
    w = (A.abs() * Sx[:, None]).sum(0)  # |⟨h_i, x_j⟩| = |A_ji| s_j
    return float((w * rho).sum() / w.sum())


def cca_mean(X, Y) -> float:
    """Mean canonical correlation over all min(dx, dy) pairs (thin QR + SVD). Meaningless when d is not ≪ n."""
    X, Y = _pair(X, Y, "cca_mean", min_n=2)
    n, dmax = X.shape[0], max(X.shape[1], Y.shape[1])
    _need(n, dmax + 2, "cca_mean", f" (width {dmax} + 2)")
    if dmax > n / 10:
        _warn(f"cca_mean: CCA on {dmax} dimensions with n={n} (> n/10) is biased towards 1; use svcca/pwcca")
    return float(_canon(_orth_basis(X, "X"), _orth_basis(Y, "Y")).mean())


# ----- neighbourhoods -----------------------------------------------------------------------------------------
def _knn_idx(A: torch.Tensor, k: int, max_bytes: int) -> torch.Tensor:
    A = torch.nn.functional.normalize(A, dim=1)
    n = A.shape[0]
    step = max(1, min(n, max_bytes // (2 * n * 8)))
    out = []
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        S = A[lo:hi] @ A.T
        r = torch.arange(hi - lo, device=A.device)
        S[r, r + lo] = -math.inf
        out.append(S.topk(k, dim=1).indices)
    return torch.cat(out)


def mutual_knn(X, Y, k: int = 10, max_bytes: int = _MAX_BYTES) -> float:
    """Mutual-kNN alignment (Huh et al. 2024, minyoungg/platonic-rep): mean_i |N_X(i) ∩ N_Y(i)| / k.

    Neighbours by inner product of L2-normalised rows, self excluded. 1 for identical inputs, ≈ k/n for
    independent ones.
    """
    if k < 1:
        raise ConfigError(f"mutual_knn: k must be >= 1, got {k}")
    X, Y = _pair(X, Y, "mutual_knn", min_n=k + 1)
    ia, ib = _knn_idx(X, k, max_bytes), _knn_idx(Y, k, max_bytes)
    hits = (ia[:, :, None] == ib[:, None, :]).any(dim=2).sum(dim=1)
    return float(hits.to(_F64).mean() / k)


# ----- Procrustes residuals -----------------------------------------------------------------------------------
def residual(X, Y, f: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Normalised residual ‖f(X) − Y‖²_F / ‖Y − Ȳ‖²_F (0 = perfect, ≈ 1 = no better than the mean of Y).

    Pass predictions as X (``f=None``) or a row-wise map ``f`` applied to X. Not symmetric in X and Y.
    """
    if f is not None:
        Xm = _matrix(X, "X")
        with torch.no_grad():
            X = f(Xm)
    P, Y = _pair(X, Y, "residual", min_n=2)
    if P.shape != Y.shape:
        raise ConfigError(f"residual: predictions have shape {tuple(P.shape)}, Y has {tuple(Y.shape)}")
    den = float((_centre(Y) ** 2).sum())
    if den == 0.0:
        raise NumericsError("residual: Y is constant (zero variance), the normalisation is undefined")
    return float(((P - Y) ** 2).sum()) / den


def _procrustes_svals(Xc: torch.Tensor, Yc: torch.Tensor, reflection: bool) -> torch.Tensor:
    """Singular values of XcᵀYc; with ``reflection=False`` the smallest is negated when det < 0 (Kabsch)."""
    M = Xc.T @ Yc
    s = torch.linalg.svdvals(M)
    if not reflection and float(torch.linalg.slogdet(M)[0]) < 0:
        s = s.clone()
        s[-1] = -s[-1]
    return s


def procrustes(X, Y, scale: bool = True, reflection: bool = True) -> float:
    """Normalised residual of the closed-form fit Y ≈ s·X W + b, W orthogonal (Schönemann 1966), in-sample.

    Optimal ``b`` always; optimal isotropic ``s`` if ``scale`` (else s = 1); ``reflection=False`` restricts W to
    rotations (Kabsch, square only). Needs dx <= dy (W orthogonal or an isometric embedding); for dx > dy use
    ``msma_lens.align.procrustes``. In-sample values are optimistic when d is not ≪ n: evaluate a map fitted on
    training rows with :func:`residual` on held-out rows.
    """
    X, Y = _pair(X, Y, "procrustes", min_n=2)
    n, dx, dy = X.shape[0], X.shape[1], Y.shape[1]
    if dx > dy:
        raise ConfigError(f"procrustes needs dx <= dy (got {dx} > {dy}): no closed form; use msma_lens.align.procrustes")
    if not reflection and dx != dy:
        raise ConfigError(f"procrustes(reflection=False) needs a square map, got {dx} -> {dy}")
    if dx > n / 5:
        _warn(f"procrustes: d={dx} > n/5 with n={n}; the in-sample residual is optimistic (fit/evaluate on separate rows)")
    Xc, Yc = _centre(X), _centre(Y)
    nx, ny = float((Xc * Xc).sum()), float((Yc * Yc).sum())
    if ny == 0.0:
        raise NumericsError("procrustes: Y is constant (zero variance), the normalisation is undefined")
    nuc = float(_procrustes_svals(Xc, Yc, reflection).sum())
    if scale:
        res = ny - (max(nuc, 0.0) ** 2 / nx if nx > 0 else 0.0)
    else:
        res = nx + ny - 2.0 * nuc
    return max(res, 0.0) / ny


# ----- mutual information -------------------------------------------------------------------------------------
def mi_ksg(X, Y, k: int = 3, max_bytes: int = _MAX_BYTES) -> float:
    """KSG mutual information (Kraskov et al. 2004, algorithm 1, max-norm) in nats, for low dimension.

    ψ(k) + ψ(n) − ⟨ψ(n_x + 1) + ψ(n_y + 1)⟩ with ε_i the distance to the k-th joint neighbour. Strongly
    negatively biased in high dimension or at high MI (warns when dx + dy > 8). Memory ≈ 3 n² floats (blocked).
    """
    if k < 1:
        raise ConfigError(f"mi_ksg: k must be >= 1, got {k}")
    X, Y = _pair(X, Y, "mi_ksg", min_n=k + 2)
    n = X.shape[0]
    if X.shape[1] + Y.shape[1] > 8:
        _warn(f"mi_ksg: total dimension {X.shape[1] + Y.shape[1]} > 8; KSG is strongly biased down in high dimension")
    step = max(1, min(n, max_bytes // (3 * n * 8)))
    psi = torch.special.digamma
    acc = torch.zeros((), dtype=_F64, device=X.device)
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        r = torch.arange(hi - lo, device=X.device)
        dx = torch.cdist(X[lo:hi], X, p=math.inf)
        dy = torch.cdist(Y[lo:hi], Y, p=math.inf)
        dz = torch.maximum(dx, dy)
        dz[r, r + lo] = math.inf
        eps = dz.kthvalue(k, dim=1).values[:, None]
        nx = (dx < eps).sum(1) - 1  # minus self (distance 0)
        ny = (dy < eps).sum(1) - 1
        acc = acc + (psi((nx + 1).to(_F64)) + psi((ny + 1).to(_F64))).sum()
    val = psi(torch.tensor(float(k), dtype=_F64)) + psi(torch.tensor(float(n), dtype=_F64)) - acc.cpu() / n
    return float(val)


def mi_gaussian(X, Y, k: int = 32) -> float:
    """Gaussian MI on the top-k principal components: −½ Σ log(1 − ρ_i²) over canonical correlations (nats).

    Exact for jointly Gaussian data (with k ≥ d); positively biased when k is not ≪ n (warns when k > n/10).
    """
    Ux, _, Uy = _pc_pair(X, Y, k, "mi_gaussian")
    rho = _canon(Ux, Uy).clamp(max=1.0 - 1e-15)
    return float(-0.5 * torch.log1p(-rho * rho).sum())


def mi_neural(
    X,
    Y,
    estimator: str = "infonce",
    test_fraction: float = 0.2,
    test_mask: torch.Tensor | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    groups=None,
    **kw,
) -> float:
    """Held-out neural MI bound (MINE / InfoNCE / SMILE…) from :func:`msma_lens.analysis.mi.estimate_mi`, in nats.

    The critic is trained on the train split only, early-stopped on the validation split and read once on the
    test split (the value returned). Splits:

    * ``groups`` (one id per row, e.g. the document of each token): whole groups go to test (``test_fraction``
      of the groups), validation (``val_fraction`` of the rest) and train, from a seeded permutation of the
      distinct groups, so no document has rows in two splits (tokens of one document are dependent: a random
      row split leaks them into the test rows);
    * ``test_mask`` (bool [n], True = held out): the test split is given, validation rows are drawn at random
      from the rest;
    * neither: rows are split at random (``seed``): only right for independent rows.

    ``val_fraction=0``: select on the test split (slightly optimistic). ``kw`` go to ``estimate_mi`` (steps,
    batch_size…; its defaults are the calibrated ones, see :mod:`msma_lens.analysis.mi`).
    """
    from .mi import estimate_mi  # lazy: the critic machinery is only needed here

    X, Y = _pair(X, Y, "mi_neural", min_n=4)
    n = X.shape[0]
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if groups is not None:
        if test_mask is not None:
            raise ConfigError("mi_neural: pass groups or test_mask, not both")
        test, val = _group_split(groups, n, test_fraction, val_fraction, seed)
    else:
        if test_mask is None:
            if not 0.0 < test_fraction < 1.0:
                raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            n_test = max(1, int(round(test_fraction * n)))
            test = torch.zeros(n, dtype=torch.bool)
            test[perm[:n_test]] = True
        else:
            test = torch.as_tensor(test_mask, dtype=torch.bool).cpu().reshape(-1)
            if test.numel() != n:
                raise ConfigError(f"test_mask has {test.numel()} entries, X and Y have {n} rows")
        rest = (~test).nonzero().flatten()
        n_val = int(round(val_fraction * rest.numel()))
        val = torch.zeros(n, dtype=torch.bool)
        val[rest[torch.randperm(rest.numel(), generator=torch.Generator().manual_seed(seed + 1))[:n_val]]] = True
    train = ~test & ~val
    test, val, train = test.to(X.device), val.to(X.device), train.to(X.device)
    kw.setdefault("device", X.device)
    if bool(val.any()):
        kw.update(x_val=X[val], y_val=Y[val])
    return float(estimate_mi(X[train], Y[train], X[test], Y[test], estimator=estimator, seed=seed, **kw).estimate)


def _group_split(groups, n: int, test_fraction: float, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(test, val) row masks holding whole groups: a seeded permutation of the distinct groups, test groups
    first, then validation groups (``val_fraction`` of the remaining groups), the rest train."""
    g = np.asarray(groups.detach().cpu() if hasattr(groups, "detach") else groups).reshape(-1)
    if g.size != n:
        raise ConfigError(f"groups has {g.size} entries, X and Y have {n} rows")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    uniq, inv = np.unique(g, return_inverse=True)
    need = 3 if val_fraction > 0 else 2
    if uniq.size < need:
        raise ConfigError(f"mi_neural needs at least {need} distinct groups (documents) to split train / "
                          f"{'validation / ' if need == 3 else ''}test by group, got {uniq.size}")
    order = np.random.default_rng(seed).permutation(uniq.size)
    n_test = min(max(1, int(round(test_fraction * uniq.size))), uniq.size - need + 1)
    rest = uniq.size - n_test
    n_val = 0 if val_fraction == 0 else min(max(1, int(round(val_fraction * rest))), rest - 1)
    split = np.zeros(uniq.size, dtype=np.int64)  # 0 train, 1 test, 2 validation
    split[order[:n_test]] = 1
    split[order[n_test:n_test + n_val]] = 2
    rows = split[inv]
    return torch.as_tensor(rows == 1), torch.as_tensor(rows == 2)


# ----- the MSMA authors' definitions (papers.md §A.6) --------------------------------------------------------
def kl_paper(X, Y, direction: str = "xy") -> float:
    """The authors' KL: diagonal Gaussians, population variance + 1e-6 clamped at >= 1e-6, summed over dims."""
    X, Y = _pair(X, Y, "kl_paper", min_n=1, same_width=True)

    def mom(A):
        return A.mean(dim=0), (A.var(dim=0, correction=0) + 1e-6).clamp_min(1e-6)

    return _directed(lambda a, b: _kl_diag_moments(*a, *b), mom(X), mom(Y), direction)


def _authors_bins(A: torch.Tensor, bins: int) -> torch.Tensor:
    """The authors' binning: edges = linspace(min, max, bins+1), last edge + 1e-6, bucketize(right=False), clamp.

    Quirk kept for parity: bin 0 holds only values equal to the minimum; the top two intervals share bin bins-1.
    """
    flat = A.reshape(-1)
    edges = torch.linspace(float(flat.min()), float(flat.max()), bins + 1, dtype=_F64, device=A.device)
    edges[-1] += 1e-6
    return torch.bucketize(flat, edges, right=False).clamp_(0, bins - 1)


def mi_histogram(X, Y, bins: int = 64, eps: float = 1e-9) -> float:
    """The authors' "MI": element-wise 64-bin joint histogram of (X[n, j], Y[n, j]) over all n, j, in nats.

    Equal-width bins over [min, max] of each whole tensor (:func:`_authors_bins`); ``eps`` = 1e-9 inside the logs
    as in their ``fast_mi_estimate`` (``eps=0``: the exact plug-in MI, so MI(x, x) = H(binned x)). Measures agreement of value distributions per coordinate, not MI between the
    vectors; at most ln(bins).
    """
    if bins < 2:
        raise ConfigError(f"bins must be >= 2, got {bins}")
    X, Y = _pair(X, Y, "mi_histogram", min_n=1, same_width=True)
    ix, iy = _authors_bins(X, bins), _authors_bins(Y, bins)
    joint = torch.bincount(ix * bins + iy, minlength=bins * bins).to(_F64).reshape(bins, bins)
    p = joint / joint.sum()
    px, py = p.sum(1), p.sum(0)
    if eps > 0:
        return float((p * (torch.log(p + eps) - torch.log(px[:, None] * py[None, :] + eps))).sum())
    nz = p > 0
    return float((p[nz] * (torch.log(p[nz]) - torch.log((px[:, None] * py[None, :])[nz]))).sum())


def dcor_paper(X, Y, n_sub: int = 1024, seed: int = 0) -> float:
    """The authors' dCor: V-statistic distance correlation on a random ``n_sub``-row subsample (all rows if fewer)."""
    X, Y = _pair(X, Y, "dcor_paper", min_n=2)
    idx = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))[:n_sub].to(X.device)
    return dcor_v(X[idx], Y[idx])


def cca_paper(X, Y, pca_dim: int = 32) -> float:
    """The authors' CCA similarity: PCA to ``pca_dim`` on each side, then the first canonical correlation.

    Exact (QR + SVD) instead of sklearn's iterative ``CCA(n_components=1)``. Like the authors' code it needs
    max(2·pca_dim, 100) samples (their code returned 0.0 below that; this raises).
    """
    X, Y = _pair(X, Y, "cca_paper", min_n=2)
    n = X.shape[0]
    _need(n, max(2 * pca_dim, 100), "cca_paper", f" (max(2·pca_dim, 100) as in the authors' code; pca_dim={pca_dim})")
    kx, ky = min(pca_dim, X.shape[1]), min(pca_dim, Y.shape[1])
    if min(kx, ky) < pca_dim:
        _warn(f"cca_paper: width {min(X.shape[1], Y.shape[1])} < pca_dim={pca_dim}; using all dimensions of that side")
    Ux, _ = _pcs(X, kx, "X")
    Uy, _ = _pcs(Y, ky, "Y")
    return float(_canon(Ux, Uy)[0])


# ----- registry ------------------------------------------------------------------------------------------------
METRICS: dict[str, Callable[..., float]] = {
    "kl_diag": kl_diag,
    "kl_full": kl_full,
    "residual": residual,
    "procrustes": procrustes,
    "dcor2_u": dcor2_u,
    "dcor_v": dcor_v,
    "cka_linear": cka_linear,
    "cka_debiased": cka_debiased,
    "svcca": svcca,
    "pwcca": pwcca,
    "cca_mean": cca_mean,
    "mutual_knn": mutual_knn,
    "mi_ksg": mi_ksg,
    "mi_gaussian": mi_gaussian,
    "mi_neural": mi_neural,
    "kl_paper": kl_paper,
    "mi_histogram": mi_histogram,
    "dcor_paper": dcor_paper,
    "cca_paper": cca_paper,
}
METRIC_ALIASES: dict[str, str] = {"dcor_u": "dcor2_u"}
"""Old metric name → new name; :func:`compute`, :func:`evaluate` and :data:`METRICS` accept both (for one release)."""
METRICS.update({old: METRICS[new] for old, new in METRIC_ALIASES.items()})

METRIC_LABELS: dict[str, str] = {
    "dcor2_u": "dCor² (U)",
    "dcor_u": "dCor² (U)",
    "dcor_v": "dCor (V)",
    "dcor_paper": "dCor (V, paper)",
}
"""Display labels for tables and reports; metrics not listed are shown by name (see :func:`metric_label`)."""


def metric_label(name: str) -> str:
    """Display label of a metric: says which dCor is squared ("dCor² (U)" vs "dCor (V)"); else the name."""
    return METRIC_LABELS.get(name, name)

LOWER_IS_CLOSER = frozenset({"kl_diag", "kl_full", "kl_paper", "residual", "procrustes"})
_MARGINAL_ONLY = frozenset({"kl_diag", "kl_full", "kl_paper"})  # functions of the marginals: blind to pairing
# metrics that the with-replacement bootstrap biases: duplicated rows are exact neighbours / zero distances, and
# fewer distinct rows inflate fitted correlations (CCA family, Gaussian MI, in-sample Procrustes)
_ROW_BOOT_BIASED = frozenset(
    {"dcor2_u", "dcor_u", "dcor_v", "dcor_paper", "cka_debiased", "mutual_knn", "mi_ksg"}
    | {"svcca", "pwcca", "cca_mean", "cca_paper", "mi_gaussian", "procrustes"}
)

_SETS = {
    # methods.md §5.5: alignment quality + layer-pair dependence (mi_neural and mi_ksg are opt-in: slow / low-d only)
    "corrected": (
        "residual",
        "procrustes",
        "kl_diag",
        "kl_full",
        "cka_linear",
        "cka_debiased",
        "dcor2_u",
        "dcor_v",
        "svcca",
        "pwcca",
        "mutual_knn",
        "mi_gaussian",
    ),
    "paper": ("kl_paper", "mi_histogram", "dcor_paper", "cca_paper"),
}


def metric_names() -> list[str]:
    """All registered metric names (old aliases in :data:`METRIC_ALIASES` left out)."""
    return [n for n in METRICS if n not in METRIC_ALIASES]


def metric_set(which: str = "corrected") -> list[str]:
    """Metric names of a set: ``"corrected"`` (bias-corrected, methods.md §5.5) or ``"paper"`` (authors' §A.6)."""
    if which not in _SETS:
        raise ConfigError(f"unknown metric set {which!r}; valid: {', '.join(_SETS)}")
    return list(_SETS[which])


def _lookup(name: str) -> Callable[..., float]:
    if name not in METRICS:
        raise ConfigError(f"unknown metric {name!r}; valid names: {', '.join(METRICS)}")
    return METRICS[name]


def compute(name: str, X, Y, **kw) -> float:
    """``METRICS[name](X, Y, **kw)``; ConfigError listing the valid names for an unknown one."""
    return _lookup(name)(X, Y, **kw)


@dataclass
class MetricResult:
    """A metric value with optional bootstrap CI and permutation null (NaN where not computed).

    ``p_value`` is one-sided towards "more aligned" (larger, or smaller for :data:`LOWER_IS_CLOSER` metrics),
    with the +1 correction. ``d``/``d_y`` are the widths of X/Y; ``warnings`` the messages raised on the way;
    ``ci_method`` how the CI was resampled (see :func:`evaluate`).
    """

    value: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    null_mean: float = math.nan
    p_value: float = math.nan
    n: int = 0
    d: int = 0
    warnings: list[str] = field(default_factory=list)
    name: str = ""
    d_y: int = 0
    null_sd: float = math.nan
    n_boot: int = 0
    n_perm: int = 0
    level: float = math.nan
    ci_method: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _half_sample_ci(
    stat: Callable[[np.ndarray], float], n: int, value: float, n_boot: int, level: float, seed: int
) -> tuple[float, float]:
    """value + the level-quantiles of centred half-sample (n/2 rows, no replacement) replicates of ``stat``."""
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level must be in (0, 1), got {level}")
    if n_boot < 10:
        raise ConfigError(f"n_boot must be >= 10, got {n_boot}")
    rng = np.random.default_rng(seed)
    vals = np.array([stat(np.sort(rng.permutation(n)[: n // 2])) for _ in range(n_boot)])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(vals - vals.mean(), [(1 - level) / 2, 1 - (1 - level) / 2])
    return value + float(lo), value + float(hi)


def evaluate(
    name: str,
    X,
    Y,
    n_boot: int = 0,
    n_perm: int = 0,
    level: float = 0.95,
    seed: int = 0,
    ci_method: str = "auto",
    **kw,
) -> MetricResult:
    """Metric value plus, optionally, a permutation null and a resampling CI, in a :class:`MetricResult`.

    Permutation null: ``n_perm`` random permutations of the rows of Y; one-sided p-value with the +1 correction.
    KL metrics depend only on the marginals, so their null equals the value (p = 1) by construction.

    CI (``n_boot`` replicates, rows of X and Y resampled jointly, ``ci_method``):

    * ``"rows"``: percentile bootstrap (:func:`msma_lens.analysis.stats.bootstrap_ci`, with replacement);
    * ``"half"``: half-sampling without replacement (n/2 rows; its spread matches that of an n-row estimate for
      mean-like statistics), interval = value + quantiles of the centred replicates. Duplicated rows act as
      exact neighbours / zero distances and bias dCor, debiased CKA, mutual-kNN and KSG upwards, and fewer
      distinct rows inflate fitted correlations (CCA family, Gaussian MI, in-sample Procrustes); ``"auto"``
      uses ``"half"`` for those and ``"rows"`` otherwise (KL, residual, linear CKA, histogram MI).

    Warnings from the point estimate are re-issued and recorded in ``warnings``.
    """
    fn = _lookup(name)
    if n_boot < 0 or n_perm < 0:
        raise ConfigError(f"n_boot and n_perm must be >= 0, got {n_boot}, {n_perm}")
    if ci_method not in ("auto", "rows", "half"):
        raise ConfigError(f"ci_method must be 'auto', 'rows' or 'half', got {ci_method!r}")
    Xm, Ym = _matrix(X, "X"), _matrix(Y, "Y")
    if Xm.shape[0] != Ym.shape[0]:
        raise ConfigError(f"X has {Xm.shape[0]} rows, Y has {Ym.shape[0]}: rows must be paired")
    n = Xm.shape[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(fn(Xm, Ym, **kw))
    notes: list[str] = []
    for w in caught:
        msg = str(w.message)
        if msg not in notes:
            notes.append(msg)
            warnings.warn(msg, w.category if issubclass(w.category, Warning) else UserWarning, stacklevel=2)
    res = MetricResult(
        value=value,
        n=n,
        d=Xm.shape[1],
        d_y=Ym.shape[1],
        name=name,
        warnings=notes,
        n_boot=n_boot,
        n_perm=n_perm,
        level=level if n_boot else math.nan,
    )

    def quiet(a, b) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(fn(a, b, **kw))

    if n_perm > 0:
        if name in _MARGINAL_ONLY:
            res.null_mean, res.null_sd, res.p_value = value, 0.0, 1.0
            notes.append(f"{name} depends only on the marginals: the row-permutation null equals the value (p = 1)")
        else:
            gen = torch.Generator().manual_seed(seed)
            null = np.array([quiet(Xm, Ym[torch.randperm(n, generator=gen).to(Ym.device)]) for _ in range(n_perm)])
            extreme = null <= value if name in LOWER_IS_CLOSER else null >= value
            res.null_mean, res.null_sd = float(null.mean()), float(null.std(ddof=1)) if n_perm > 1 else 0.0
            res.p_value = float((1 + int(extreme.sum())) / (1 + n_perm))
    if n_boot > 0:
        method = ("half" if name in _ROW_BOOT_BIASED else "rows") if ci_method == "auto" else ci_method
        if method == "rows" and name in _ROW_BOOT_BIASED:
            notes.append(f"{name}: the with-replacement bootstrap biases this metric upwards (use ci_method='half')")

        def stat(idx: np.ndarray) -> float:
            i = torch.as_tensor(np.asarray(idx).astype(np.int64), device=Xm.device)
            return quiet(Xm[i], Ym[i])

        if method == "rows":
            res.ci_low, res.ci_high = bootstrap_ci(stat, np.arange(n), n_boot=n_boot, level=level, seed=seed)
        else:
            res.ci_low, res.ci_high = _half_sample_ci(stat, n, value, n_boot, level, seed)
        res.ci_method = method
    return res
