"""The results store: one directory per work unit under ``<out>/units/``, a ``done.json`` marker written last.

``<out>/units/<unit.key>/`` holds ``result.json`` (the unit's JSON result, written atomically), any artifacts the
task saved there (e.g. ``discovery/``, a ScaleDiscovery artifact) and finally ``done.json`` (unit, timing:
wall seconds and peak RSS). A directory without ``done.json`` is an interrupted unit: :meth:`begin` clears it
and the unit runs again. ``<out>/shards/`` holds capture shards (memory-bounded capture, reused across seeds).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ..errors import ArtifactError, MSMAError
from ..io.artifacts import write_json_atomic
from .units import Unit, units_dir

DONE = "done.json"
RESULT = "result.json"
FORMAT = "msma_lens.CompareUnit"


class ResultStore:
    """Resumable on-disk store of unit results (see the module docstring)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ArtifactError(f"results store {self.root} exists and is not a directory")

    def unit_dir(self, unit: Unit) -> Path:
        return units_dir(self.root) / unit.key

    def is_done(self, unit: Unit) -> bool:
        return (self.unit_dir(unit) / DONE).is_file()

    def begin(self, unit: Unit) -> Path:
        """A fresh, empty directory for ``unit`` (an interrupted attempt's files are removed)."""
        d = self.unit_dir(unit)
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def finish(self, unit: Unit, result: dict, timing: dict) -> None:
        d = self.unit_dir(unit)
        write_json_atomic(d / RESULT, {"format": FORMAT, "unit": unit.to_dict(), "result": result})
        write_json_atomic(d / DONE, {"unit": unit.to_dict(), "timing": timing})  # last: marks the unit complete

    def load(self, unit: Unit) -> dict:
        """``{"unit", "result", "timing", "dir"}`` of a finished unit; ArtifactError if it is not finished or damaged."""
        d = self.unit_dir(unit)
        if not (d / DONE).is_file():
            raise ArtifactError(f"unit {unit.key} is not finished in {self.root} (no {DONE})")
        try:
            res = json.loads((d / RESULT).read_text(encoding="utf-8"))
            done = json.loads((d / DONE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ArtifactError(f"{d}: damaged unit result ({e}); delete the directory to rerun the unit") from e
        if res.get("format") != FORMAT or res.get("unit") != unit.to_dict():
            raise ArtifactError(f"{d / RESULT}: not the result of unit {unit.key}")
        return {"unit": unit.to_dict(), "result": res["result"], "timing": done["timing"], "dir": str(d)}

    def records(self, units: list[Unit]) -> list[dict]:
        """The records of the finished ones among ``units`` (in order)."""
        return [self.load(u) for u in units if self.is_done(u)]

    def done_units(self, task: str, model: str) -> list[Unit]:
        """The finished single-model units of ``task`` on ``model`` in this store, whatever their seed."""
        out = []
        for p in sorted(units_dir(self.root).glob(f"{task}--*/{DONE}")):
            try:
                d = json.loads(p.read_text(encoding="utf-8"))["unit"]
                u = Unit(d["task"], tuple(d["models"]), int(d["seed"]))
            except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, MSMAError):
                continue
            if u.models == (model,) and p.parent.name == u.key:
                out.append(u)
        return out

    def shard_dir(self, model: str, what: str) -> Path:
        """Capture shards of ``model`` (bounded memory; reused by every seed's unit), under ``<out>/shards``."""
        return self.root / "shards" / re.sub(r"[^A-Za-z0-9._-]", "_", model) / what

    def clear_shards(self) -> None:
        shutil.rmtree(self.root / "shards", ignore_errors=True)
