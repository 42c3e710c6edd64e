"""Work units: one (task, model(s), seed) cell of the comparison grid, planned up front and run independently.

A unit reads only the results store (the discovered partition of its model, when there is one) and writes only
its own directory there, so units run in any order within a phase, in one process or as Ray tasks. Phase 0 is
scale discovery; phase 1 (alignment, steering, cross-model CKA) uses the partitions phase 0 found.
"""

from __future__ import annotations

import itertools
import re
import resource
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .config import ALL_TASKS, TASKS

# which seeds a task runs: alignment is repeated per seed (its table is mean ± CI over seeds); discovery carries
# its own bootstrap CI over documents and steering its CIs over prompts, so they run at the first seed only
PER_SEED: dict[str, bool] = {"discovery": False, "alignment": True, "steering": False, "crossmodel": False, "plugins": False}
PHASE: dict[str, int] = {"discovery": 0, "alignment": 1, "steering": 1, "crossmodel": 1, "plugins": 1}


@dataclass(frozen=True)
class Unit:
    """One cell of the grid: ``task`` on ``models`` (one name; two for ``crossmodel``) at ``seed``."""

    task: str
    models: tuple[str, ...]
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in ALL_TASKS:
            raise ConfigError(f"unknown task {self.task!r}; valid: {list(ALL_TASKS)}")
        want = 2 if self.task == "crossmodel" else 1
        if len(self.models) != want:
            raise ConfigError(f"task {self.task!r} takes {want} model(s), got {list(self.models)}")

    @property
    def key(self) -> str:
        """The unit's directory name in the store, e.g. ``alignment--smollm2-135m--seed0``."""
        body = "+".join(re.sub(r"[^A-Za-z0-9._-]", "_", m) for m in self.models)
        return f"{self.task}--{body}--seed{self.seed}"

    @property
    def phase(self) -> int:
        return PHASE[self.task]

    def to_dict(self) -> dict:
        return {"task": self.task, "models": list(self.models), "seed": self.seed}


def check_models(models: Sequence[str]) -> tuple[str, ...]:
    models = tuple(models)
    if not models:
        raise ConfigError("models is empty: name at least one model")
    for m in models:
        if not isinstance(m, str) or not m.strip():
            raise ConfigError(f"model names must be non-empty strings, got {m!r}")
    dup = [m for m in set(models) if models.count(m) > 1]
    if dup:
        raise ConfigError(f"model {dup[0]!r} is listed twice")
    return models


def plan_units(models: Sequence[str], seeds: Sequence[int] = (0,), tasks: Sequence[str] = TASKS) -> list[Unit]:
    """The grid as units, in execution order (phase, then model, then seed; cross-model pairs last). ``crossmodel``
    takes every pair of models."""
    models = check_models(models)
    seeds = tuple(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct integers, got {list(seeds)}")
    tasks = tuple(tasks)
    bad = [t for t in tasks if t not in ALL_TASKS]
    if bad or not tasks:
        raise ConfigError(f"unknown task {bad[0]!r}; valid: {list(ALL_TASKS)}" if bad else "tasks is empty")
    units = []
    for t in ALL_TASKS:
        if t not in tasks:
            continue
        ss = seeds if PER_SEED[t] else seeds[:1]
        if t == "crossmodel":
            units += [Unit(t, (a, b), ss[0]) for a, b in itertools.combinations(models, 2)]
        else:
            units += [Unit(t, (m,), s) for m in models for s in ss]
    # phase first; within phase 1 one model's units together (one model load each), the cross-model pairs last
    rank = {m: i for i, m in enumerate(models)}
    return sorted(units, key=lambda u: (u.phase, u.task == "crossmodel", rank[u.models[0]]))


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / 2**20 if sys.platform == "darwin" else r / 1024


class PeakRSS:
    """Peak resident memory (MiB) of this process while the block runs: sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.peak = interval, 0.0
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> PeakRSS:
        self.peak = _rss_mb()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def execute_unit(unit: Unit, cfg: dict, root: str) -> dict:
    """Run ``unit`` unless the store at ``root`` already holds it; returns its record (result + timing).

    The unit's directory is cleared first (a killed earlier attempt leaves no ``done`` marker), its files are
    written atomically and ``done.json`` last, so an interrupted unit is simply run again. Records the unit's
    wall and CPU time and the process's peak RSS while it ran (in a process that ran earlier units this includes
    memory the allocator kept from them). Top-level and picklable: the Ray executor ships it as a task.
    """
    from .config import CompareConfig
    from .store import ResultStore
    from .tasks import run_task

    store = ResultStore(root)
    if store.is_done(unit):
        return store.load(unit)
    config = CompareConfig.from_dict(cfg)
    work = store.begin(unit)
    t0, c0 = time.perf_counter(), time.process_time()
    with PeakRSS() as mem:
        result = run_task(unit, config, store, work)
    # CPU seconds (all threads of this process) beside wall seconds: on a shared machine the wall time overstates
    timing = {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2),
              "peak_rss_mb": round(mem.peak, 1)}
    store.finish(unit, result, timing)
    return store.load(unit)


def _unit_from(d: dict) -> Unit:
    return Unit(d["task"], tuple(d["models"]), int(d["seed"]))


def unit_of(record: dict) -> Unit:
    """The :class:`Unit` a store record belongs to."""
    return _unit_from(record["unit"])


def units_dir(root: str | Path) -> Path:
    return Path(root) / "units"
