"""The model comparison suite (``msma-lens compare``): scale discovery, the three alignment-paper tables and
cross-model CKA over several models, run as resumable work units (local or Ray) into one report.

Modules: :mod:`.config` (the budget), :mod:`.units` (the grid), :mod:`.store` (results on disk),
:mod:`.executors` (local / Ray), :mod:`.tasks` (what a unit computes), :mod:`.effects` (encoders'
representation-level intervention effects), :mod:`.crossmodel` (CKA over layer pairs of two models),
:mod:`.tables`, :mod:`.report`, :mod:`.suite` (:func:`run_compare`).
"""

from .config import ALL_TASKS, TASKS, CompareConfig
from .crossmodel import cka_matrix, paired_activations
from .store import ResultStore
from .suite import CompareResult, run_compare
from .units import Unit, plan_units

__all__ = ["ALL_TASKS", "TASKS", "CompareConfig", "CompareResult", "ResultStore", "Unit", "cka_matrix", "paired_activations",
           "plan_units", "run_compare"]
