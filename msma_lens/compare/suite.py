"""run_compare: the comparison suite end to end (plan units → run phase 0 → phase 1 → tables → report)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import TASKS, CompareConfig
from .executors import run_units
from .report import write_report
from .store import ResultStore
from .tables import all_tables, format_tables
from .units import plan_units


@dataclass
class CompareResult:
    """What :func:`run_compare` produced: the tables, the unit records, the summary text and the written files."""

    tables: dict[str, list[dict]]
    records: list[dict]
    summary: str
    paths: dict[str, Path]
    seconds: float

    def __repr__(self) -> str:
        return f"CompareResult(units={len(self.records)}, report={self.paths.get('html')}, {self.seconds:.0f} s)"


def run_compare(models: Sequence[str], out: str | os.PathLike, *, seeds: Sequence[int] = (0, 1, 2),
                tasks: Sequence[str] = TASKS, executor: str = "local", address: str | None = None,
                num_cpus: int | None = None, config: CompareConfig | None = None, keep_shards: bool = False,
                progress: bool = True) -> CompareResult:
    """Run the comparison grid (models × seeds × tasks) as resumable work units in ``out/units`` and write the
    report (``out/report.html``, ``out/compare.json``, one CSV per table, ``out/summary.txt``).

    ``tasks``: any of ``discovery``, ``alignment``, ``steering``, ``crossmodel`` (every pair of models).
    Alignment runs once per seed (its table is mean ± CI over seeds); the other tasks at the first seed.
    Phase 0 (discovery) runs before phase 1, whose units use the discovered partitions. A rerun with the same
    ``out`` skips finished units; an interrupted run loses at most the units in progress. ``executor``:
    ``"local"`` (sequential, this process) or ``"ray"`` (``address`` of a cluster, else a local instance with
    ``num_cpus``). ``config``: the budget (:class:`CompareConfig`; its defaults fit four small models into ~30
    minutes on 2 CPU cores). Capture shards in ``out/shards`` are deleted at the end unless ``keep_shards``.
    """
    cfg = config or CompareConfig()
    units = plan_units(models, seeds, tasks)
    store = ResultStore(out)
    t0 = time.perf_counter()
    for phase in sorted({u.phase for u in units}):
        run_units([u for u in units if u.phase == phase], cfg.to_dict(), str(store.root), executor=executor,
                  address=address, num_cpus=num_cpus, progress=progress)
    records = store.records(units)
    tables = all_tables(records)
    summary = format_tables(tables)
    meta = {"models": list(models), "seeds": list(seeds), "tasks": list(tasks), "executor": executor,
            "config": cfg.to_dict(), "seconds": round(time.perf_counter() - t0, 1)}
    paths = write_report(Path(out), tables, records, summary, meta)
    if not keep_shards:
        store.clear_shards()
    return CompareResult(tables, records, summary, paths, time.perf_counter() - t0)
