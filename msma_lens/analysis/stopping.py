"""Early stopping shared by the trainers (:func:`msma_lens.analysis.mi.estimate_mi`, :class:`msma_lens.align.maps.MapTrainer`).

:class:`EarlyStopping` tracks the best value seen so far, the step it was seen at and the number of evaluations
since; the trainer keeps its own copy of the best weights when :meth:`EarlyStopping.update` reports an
improvement.
"""

from __future__ import annotations

import math

from ..errors import ConfigError

__all__ = ["EarlyStopping", "MODES"]

MODES: tuple[str, ...] = ("min", "max")


class EarlyStopping:
    """Best-value tracking with patience; call :meth:`update` after each evaluation, stop on :attr:`should_stop`.

    ``mode="min"`` for a loss, ``"max"`` for a bound. A value improves when it beats the best by more than
    ``min_delta`` (NaN never beats a best). The best starts at ``baseline``; with ``None`` the first value is the
    best whatever it is. ``patience`` counts evaluations without improvement; ``None`` never stops (the best is
    still tracked).
    """

    def __init__(self, patience: int | None = None, *, mode: str = "min", min_delta: float = 0.0,
                 baseline: float | None = None):
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ConfigError(f"EarlyStopping patience must be None or an integer >= 1, got {patience!r}")
        if mode not in MODES:
            raise ConfigError(f"EarlyStopping mode must be one of {', '.join(MODES)}, got {mode!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not (math.isfinite(min_delta) and min_delta >= 0):
            raise ConfigError(f"EarlyStopping min_delta must be a finite number >= 0, got {min_delta!r}")
        self.patience, self.mode, self.min_delta = patience, mode, float(min_delta)
        self.best: float | None = None if baseline is None else float(baseline)
        self.best_step = 0
        self.bad = 0

    def __repr__(self) -> str:
        return (f"EarlyStopping(patience={self.patience}, mode={self.mode!r}, min_delta={self.min_delta}, best={self.best}, "
                f"best_step={self.best_step}, bad={self.bad})")

    def improves(self, value: float) -> bool:
        """Whether ``value`` would become the new best (no state change)."""
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, step: int) -> bool:
        """Record the evaluation ``value`` at ``step``; True when it is the new best (keep the weights then)."""
        if self.improves(value):
            self.best, self.best_step, self.bad = float(value), int(step), 0
            return True
        self.bad += 1
        return False

    @property
    def should_stop(self) -> bool:
        """``patience`` evaluations in a row without improvement."""
        return self.patience is not None and self.bad >= self.patience

    def state_dict(self) -> dict:
        return {"patience": self.patience, "mode": self.mode, "min_delta": self.min_delta, "best": self.best,
                "best_step": self.best_step, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``best``, ``best_step`` and ``bad``; ConfigError if the state was saved with another ``mode``."""
        if state.get("mode", self.mode) != self.mode:
            raise ConfigError(f"EarlyStopping state is for mode {state['mode']!r}, not {self.mode!r}")
        self.best = None if state["best"] is None else float(state["best"])
        self.best_step, self.bad = int(state["best_step"]), int(state["bad"])
