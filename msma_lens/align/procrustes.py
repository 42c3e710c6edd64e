"""Closed-form orthogonal Procrustes with isotropic scale and bias (Gower / Schönemann).

``procrustes(X, Y)`` fits ``Y ≈ s·X W + b`` with ``W`` orthogonal (square), a Stiefel projection (``dx > dy``,
orthonormal columns) or an isometric embedding (``dx < dy``, orthonormal rows). Different widths arise when
mapping between two different models. Everything is computed in float64 from one SVD of ``X_cᵀ Y_c``:

* ``W = U Vᵀ`` with ``U Σ Vᵀ = SVD(X_cᵀ Y_c)`` (centred data when ``bias=True``);
* ``s = Σσ_i / ‖X_c W‖²_F`` (``= Σσ_i / ‖X_c‖²_F`` unless projecting; ``1`` when ``scale=False``);
* ``b = ȳ − s·x̄ W`` (``0`` when ``bias=False``).

Exactness: the square and the embedding case are exact (``‖X W‖ = ‖X‖`` for every feasible W). The projection
case has no closed form when ``X_cᵀX_c`` is not ∝ I ("unbalanced Procrustes"); the plain polar solution can be
far from optimal under anisotropy (33× worse at 576 → 64 on an LLM-like spectrum, methods.md §1.4). With
``whiten=True`` the source is first whitened, ``X_w = X_c P`` with ``X_wᵀX_w ∝ I``, and the polar solution is
then exact **in whitened geometry**: the returned map is ``s·X P W + b`` (``P`` kept in ``fit.whitener``), and
``P W`` is not a Stiefel matrix in raw coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..analysis.checks import as_matrix, check_finite
from ..errors import ConfigError, NumericsError

__all__ = ["ProcrustesFit", "procrustes", "as_matrix", "check_finite"]


@dataclass
class ProcrustesFit:
    """Result of :func:`procrustes`: the map ``x ↦ s·x W + b`` (``s·x P W + b`` when whitened).

    ``W`` is ``[dx, dy]`` with orthonormal columns (``dx ≥ dy``) or rows (``dx < dy``); ``residual`` is the
    normalised training residual ``Σ‖f(x_i) − y_i‖² / Σ‖y_i − ȳ‖²`` (0 = perfect, ≈1 = no better than ȳ);
    ``det_sign`` is ``sign det W`` (±1) for square maps and ``None`` otherwise.
    """

    W: torch.Tensor
    scale: float
    bias: torch.Tensor
    residual: float
    det_sign: int | None
    whitener: torch.Tensor | None = None

    @property
    def linear(self) -> torch.Tensor:
        """The effective ``[dx, dy]`` linear part ``s·W`` (``s·P W`` when whitened), float64."""
        W = self.W.double()
        if self.whitener is not None:
            W = self.whitener.double() @ W
        return self.scale * W

    def apply(self, X) -> torch.Tensor:
        """``s·X W + b`` (``s·X P W + b`` when whitened), computed in float64, returned in X's dtype."""
        X = as_matrix(X, "X")
        if X.shape[1] != self.W.shape[0]:
            raise ConfigError(f"fit expects source width {self.W.shape[0]}, got {X.shape[1]}")
        out = X.to(device=self.W.device, dtype=torch.float64) @ self.linear.to(self.W.device)
        return (out + self.bias.to(out)).to(X.dtype)


def procrustes(
    X,
    Y,
    *,
    scale: bool = True,
    bias: bool = True,
    allow_reflection: bool = True,
    whiten: bool = False,
    rcond: float = 1e-10,
) -> ProcrustesFit:
    """Closed-form ``argmin_{s, W, b} Σ‖s·x_i W + b − y_i‖²`` over orthogonal / Stiefel W (float64, one SVD).

    ``allow_reflection=False`` restricts a square W to SO(d) (Kabsch: flip the singular vector of the smallest
    singular value when ``det(U Vᵀ) < 0``; the sign comes from ``slogdet`` in float64, since an fp32
    determinant underflows at d ≈ 576). For rectangular maps it is a no-op: St(dx, dy) with dx ≠ dy is
    connected. ``whiten=True`` (projection case ``dx > dy``; allowed for any shape) whitens the centred source
    with its covariance (directions with singular value below ``rcond·σ_max`` are dropped) before the SVD; see
    the module docstring for what is then exact.
    """
    X = as_matrix(X, "X")
    Y = as_matrix(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise ConfigError(f"X and Y must have the same number of rows (paired samples): X has {X.shape[0]}, Y has {Y.shape[0]}")
    n_min = 2 if (bias or whiten) else 1
    if X.shape[0] < n_min:
        raise ConfigError(f"procrustes needs at least {n_min} paired samples, got {X.shape[0]}")
    if X.shape[1] == 0 or Y.shape[1] == 0:
        raise ConfigError(f"X and Y need at least one column, got widths {X.shape[1]} and {Y.shape[1]}")
    check_finite(X, "X")
    check_finite(Y, "Y")

    Xd = X.double()
    Yd = Y.to(device=X.device, dtype=torch.float64)
    y_mean = Yd.mean(0)
    # centre in place when the float64 tensor is a copy made here (fp32 input): one n×d copy instead of two
    Yc_full = Yd.sub_(y_mean) if (bias and Yd is not Y) else Yd - y_mean
    y_var = _sq_norm(Yc_full)
    if bias:
        x_mean = Xd.mean(0)
        Xc, Yc = (Xd.sub_(x_mean) if (Xd is not X and not whiten) else Xd - x_mean), Yc_full
    else:
        x_mean = torch.zeros(X.shape[1], dtype=torch.float64, device=X.device)
        Xc, Yc = Xd, Yd

    whitener = None
    if whiten:
        _, sx, Vxh = torch.linalg.svd(Xd - Xd.mean(0), full_matrices=False)
        keep = sx > rcond * sx.max()
        if not bool(keep.any()):
            raise NumericsError("X has zero variance; cannot whiten")
        Vk, sk = Vxh[keep].T, sx[keep]
        # ZCA whitening (PCA-whiten, rotate back): X_wᵀX_w = c²·Π_range, RMS norm of X_c preserved.
        c = sk.square().sum().sqrt() / math.sqrt(int(keep.sum()))
        whitener = (Vk * (c / sk)) @ Vk.T
        Xc = Xc @ whitener

    x_ss = _sq_norm(Xc)
    if x_ss == 0.0:
        raise NumericsError("X has zero variance (all rows equal after centring); the Procrustes scale is undefined")

    M = Xc.T @ Yc  # [dx, dy]
    U, sig, Vh = torch.linalg.svd(M, full_matrices=False)
    dx, dy = M.shape
    W = U @ Vh
    trace = float(sig.sum())
    det_sign: int | None = None
    if dx == dy:
        det_sign = int(torch.linalg.slogdet(W)[0])
        if not allow_reflection and det_sign < 0:
            # Kabsch: U diag(1, …, 1, −1) Vᵀ, i.e. flip the direction of the smallest singular value.
            W = W - 2.0 * torch.outer(U[:, -1], Vh[-1])
            trace -= 2.0 * float(sig[-1])
            det_sign = int(torch.linalg.slogdet(W)[0])
    # ‖s X_c W − Y_c‖² = s²‖X_c W‖² − 2 s tr(Wᵀ M) + ‖Y_c‖²; ‖X_c W‖ = ‖X_c‖ unless projecting (or whitened).
    xw_ss = x_ss if (dx <= dy and whitener is None) else float((Xc @ W).square().sum())
    if xw_ss == 0.0:
        raise NumericsError("X W has zero variance: the projection discards every direction in which X varies")
    # optimal s given W is tr(Wᵀ M) / ‖X_c W‖² (Gower's Σσ_i / ‖X_c‖² when ‖X_c W‖ = ‖X_c‖)
    s = trace / xw_ss if scale else 1.0

    y_ss = y_var if bias else _sq_norm(Yc)
    rss = max(s * s * xw_ss - 2.0 * s * trace + y_ss, 0.0)
    b = y_mean - s * (x_mean @ whitener @ W if whitener is not None else x_mean @ W) if bias else torch.zeros_like(y_mean)
    if y_var == 0.0:
        raise NumericsError("Y has zero variance (all rows equal); the normalised residual is undefined")
    return ProcrustesFit(W=W, scale=float(s), bias=b, residual=rss / y_var, det_sign=det_sign, whitener=whitener)


def _sq_norm(t: torch.Tensor) -> float:
    """``‖t‖²_F`` as one BLAS dot product (no n×d temporary)."""
    flat = t.reshape(-1)
    return float(torch.dot(flat, flat))
