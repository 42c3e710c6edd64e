"""Input checks shared by the estimators and the maps: 2-D float matrices without NaN/Inf."""

from __future__ import annotations

import torch

from ..errors import ConfigError, NumericsError

__all__ = ["as_matrix", "check_finite"]


def as_matrix(a, name: str) -> torch.Tensor:
    """``a`` as a 2-D floating tensor (numpy arrays and lists accepted); ConfigError otherwise."""
    t = a if isinstance(a, torch.Tensor) else torch.as_tensor(a)
    if t.dim() != 2:
        raise ConfigError(f"{name} must be a 2-D [n_samples, width] tensor, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t


def check_finite(t: torch.Tensor, name: str) -> None:
    """NumericsError naming ``name`` and the first bad row if ``t`` holds NaN or Inf."""
    if bool(torch.isfinite(t.sum())):  # fast path: NaN/Inf always make the sum non-finite
        return
    bad = ~torch.isfinite(t)
    if bool(bad.any()):  # (a finite tensor whose sum overflows is fine)
        row = int(bad.any(dim=-1).nonzero()[0, 0]) if t.dim() == 2 else int(bad.reshape(-1).nonzero()[0, 0])
        n_bad = int(bad.sum())
        raise NumericsError(f"{name} contains {n_bad} NaN/Inf value(s) (first in row {row})")
