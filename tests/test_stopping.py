"""Early stopping shared by the trainers (msma_lens.analysis.stopping): known sequences, modes, state, errors."""

from __future__ import annotations

import math

import pytest

from msma_lens.analysis.stopping import EarlyStopping
from msma_lens.errors import ConfigError


def _run(es: EarlyStopping, values: list[float]) -> list[tuple[bool, bool]]:
    """(improved, should_stop) after each value, at steps 1, 2, ..."""
    return [(es.update(v, step), es.should_stop) for step, v in enumerate(values, start=1)]


def test_min_mode_patience_counts_evaluations_without_improvement():
    es = EarlyStopping(2)
    assert _run(es, [3.0, 2.0, 2.5, 2.0, 1.9, 1.95, 1.9]) == [
        (True, False), (True, False), (False, False), (False, True), (True, False), (False, False), (False, True)]
    assert (es.best, es.best_step, es.bad) == (1.9, 5, 2)  # ties are not improvements


def test_max_mode_with_min_delta():
    es = EarlyStopping(3, mode="max", min_delta=0.1)
    assert [imp for imp, _ in _run(es, [1.0, 1.05, 1.2, 1.25, 1.31])] == [True, False, True, False, True]
    assert (es.best, es.best_step, es.bad, es.should_stop) == (1.31, 5, 0, False)


def test_nan_never_beats_a_best_and_a_baseline_is_the_best_to_beat():
    es = EarlyStopping(mode="max", baseline=-math.inf)  # estimate_mi: the untrained critic stays best over a NaN
    assert _run(es, [math.nan, 0.5, math.nan]) == [(False, False), (True, False), (False, False)]
    assert (es.best, es.best_step, es.bad) == (0.5, 2, 1)
    first = EarlyStopping()  # no baseline: the first value is the best, whatever it is
    assert first.update(7.0, 0) and first.best == 7.0 and not first.improves(math.nan)
    assert EarlyStopping(mode="min", baseline=1.0).improves(0.5) and not EarlyStopping(mode="min", baseline=1.0).improves(1.0)


def test_no_patience_never_stops_but_tracks_the_best():
    es = EarlyStopping(None)
    _run(es, [1.0] + [2.0] * 50)
    assert not es.should_stop and (es.best, es.best_step, es.bad) == (1.0, 1, 50)


def test_state_dict_round_trip_and_errors():
    es = EarlyStopping(4, mode="max")
    _run(es, [0.1, 0.3, 0.2])
    again = EarlyStopping(4, mode="max")
    again.load_state_dict(es.state_dict())
    assert again.state_dict() == es.state_dict() and _run(again, [0.25, 0.4]) == _run(es, [0.25, 0.4])
    with pytest.raises(ConfigError, match="state is for mode 'max', not 'min'"):
        EarlyStopping(4).load_state_dict(es.state_dict())
    with pytest.raises(ConfigError, match=r"EarlyStopping patience must be None or an integer >= 1, got 0"):
        EarlyStopping(0)
    with pytest.raises(ConfigError, match=r"EarlyStopping patience must be None or an integer >= 1, got 2.5"):
        EarlyStopping(2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="EarlyStopping mode must be one of min, max, got 'up'"):
        EarlyStopping(mode="up")
    with pytest.raises(ConfigError, match="EarlyStopping min_delta must be a finite number >= 0, got -0.1"):
        EarlyStopping(min_delta=-0.1)
    assert "best_step=2" in repr(es)
