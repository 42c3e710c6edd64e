"""When edits act: generation phases, absolute positions and per-step :class:`Schedule` multipliers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError

PHASES = ("prompt", "generated", "both")


def is_number(v: Any) -> bool:
    """A real number (int or float, not bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def describe_positions(p: tuple | None) -> Any:
    """JSON-ready form of a checked positions spec."""
    if p is None:
        return None
    return {"slice": [p[1], p[2]]} if p[0] == "slice" else list(p[1:])


# ----- where and when --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """Strength multiplier per forward step: ``decay ** (step - start)`` for ``start <= step < stop``, else 0.

    Step 0 is the prompt pass; step ``k >= 1`` feeds generated token ``k`` back in. ``decay=1`` is a plain
    on/off window; ``decay < 1`` fades the edit out.
    """

    start: int = 0
    stop: int | None = None
    decay: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.start, int) or isinstance(self.start, bool) or self.start < 0:
            raise ConfigError(f"Schedule.start must be an int >= 0, got {self.start!r}")
        if self.stop is not None and (not isinstance(self.stop, int) or isinstance(self.stop, bool) or self.stop <= self.start):
            raise ConfigError(f"Schedule.stop must be None or an int > start ({self.start}), got {self.stop!r}")
        if not is_number(self.decay) or not math.isfinite(self.decay) or self.decay < 0:
            raise ConfigError(f"Schedule.decay must be a finite number >= 0, got {self.decay!r}")

    def multiplier(self, steps: torch.Tensor) -> torch.Tensor:
        s = steps.to(torch.float64)
        on = steps >= self.start
        if self.stop is not None:
            on &= steps < self.stop
        m = torch.pow(torch.tensor(float(self.decay), dtype=torch.float64), (s - self.start).clamp(min=0))
        return torch.where(on, m, torch.zeros_like(m)).to(torch.float32)

    def to_dict(self) -> dict:
        return {"start": self.start, "stop": self.stop, "decay": self.decay}

    @classmethod
    def coerce(cls, spec: Any) -> Schedule | None:
        if spec is None or isinstance(spec, Schedule):
            return spec
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"start", "stop", "decay"}
            if unknown:
                raise ConfigError(f"unknown schedule key(s) {sorted(unknown)}; valid: start, stop, decay")
            return cls(**spec)
        if isinstance(spec, (tuple, list)) and 1 <= len(spec) <= 3:
            return cls(*spec)
        raise ConfigError(f"schedule must be a Schedule, a dict or a (start, stop, decay) tuple, got {spec!r}")


def check_positions(spec: Any, name: str = "positions") -> tuple | None:
    """``None`` (all), ints (absolute; negative = from the end of the prompt) or a ``slice`` ``[lo, hi)``."""
    if spec is None:
        return None
    if isinstance(spec, slice):
        lo, hi = spec.start or 0, spec.stop
        if spec.step not in (None, 1) or not isinstance(lo, int) or lo < 0 or (hi is not None and (not isinstance(hi, int) or hi <= lo)):
            raise ConfigError(f"{name} slice must be slice(lo, hi) with 0 <= lo < hi (hi may be None) and no step, got {spec!r}")
        return ("slice", lo, hi)
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = [spec]
    if isinstance(spec, torch.Tensor):
        spec = spec.flatten().tolist()
    if not isinstance(spec, (list, tuple, range)) or len(spec) == 0 or not all(isinstance(p, int) and not isinstance(p, bool) for p in spec):
        raise ConfigError(f"{name} must be None, an int, a non-empty list of ints or a slice, got {spec!r}")
    return ("list", *sorted(set(spec)))


def check_phase(phase: Any, name: str = "phase") -> str:
    if phase not in PHASES:
        raise ConfigError(f"{name} must be one of {list(PHASES)}, got {phase!r}")
    return phase


