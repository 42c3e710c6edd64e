"""Executors: run a list of work units sequentially in this process (``local``) or as Ray tasks (``ray``).

Both call :func:`msma_lens.compare.units.execute_unit`, which skips units the store already holds, so the
results do not depend on the executor. Ray is an optional extra, imported only when asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from .units import Unit, execute_unit

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install 'msma-lens[ray]'"


def import_ray() -> Any:
    """The ``ray`` module, or a ConfigError naming the install command."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}") from e
    return ray


def run_units(units: Sequence[Unit], cfg: dict, root: str, *, executor: str = "local", address: str | None = None,
              num_cpus: int | None = None, progress: bool = False) -> list[dict]:
    """Run ``units`` (independent of each other) and return their records in order.

    ``executor="ray"``: ``ray.init(address=address)`` when ``address`` is given (an existing cluster), else a
    local instance with ``num_cpus`` CPUs (default 2) and no dashboard; an already initialised Ray is reused.
    Each unit is a task with ``num_cpus=1`` and ``OMP_NUM_THREADS=1``.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; valid: {list(EXECUTORS)}")
    if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1):
        raise ConfigError(f"num_cpus must be a positive int, got {num_cpus!r}")
    if address is not None and executor != "ray":
        raise ConfigError("address is only for executor='ray'")
    units = list(units)
    if executor == "local":
        it: Any = units
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(units, desc="compare", unit="unit")
        return [execute_unit(u, cfg, root) for u in it]
    ray = import_ray()
    if not ray.is_initialized():
        env = {"env_vars": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}}
        if address:
            ray.init(address=address, runtime_env=env)
        else:
            ray.init(num_cpus=num_cpus or 2, include_dashboard=False, runtime_env=env)
    task = ray.remote(num_cpus=1)(execute_unit)
    return ray.get([task.remote(u, cfg, root) for u in units])
