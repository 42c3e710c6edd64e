"""msma-lens: Multi-Scale Manifold Alignment for TransformerLens models.

The package tree follows the data: ``io`` (models, corpus, artifacts) → ``capture`` (scales, hook points,
activations) → ``align`` (Procrustes, Stiefel maps, MI, protocol) / ``steer`` (edits, directions, generation,
experiments) / ``analysis`` (metrics, statistics, text) → ``report``; ``lens.MSMA`` binds them to one model,
``tl`` is the one module that speaks to TransformerLens, ``plugins`` hosts analyses. The names below are the
ones a user needs; everything else is importable from its module.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from .align.protocol import AlignConfig, AlignmentResult, fit_alignment
from .capture.activations import ScaleActivations
from .capture.scales import Scales
from .errors import ArtifactError, ConfigError, HookError, ModelLoadError, MSMAError, NumericsError
from .io.corpus import load_corpus, load_texts
from .io.models import list_models, load_model
from .lens import MSMA
from .steer.edits import Ablate, AttentionEdit, GaussianNoise, Rescale, Translate
from .steer.experiment import run_experiment
from .steer.generate import generate
from .steer.session import steer

__version__ = "0.1.0"

__all__ = [
    "MSMA", "Scales", "ScaleActivations", "load_model", "list_models", "load_corpus", "load_texts",
    "AlignConfig", "AlignmentResult", "fit_alignment",
    "Translate", "Rescale", "GaussianNoise", "AttentionEdit", "Ablate", "steer", "generate", "run_experiment",
    "MSMAError", "ConfigError", "HookError", "ModelLoadError", "ArtifactError", "NumericsError",
]

# names that used to live here: still importable for one release, with a DeprecationWarning naming the new home
_MOVED = {
    "Corpus": "io.corpus", "Document": "io.corpus", "Sentence": "io.corpus", "load_hf_dataset": "io.corpus",
    "DEFAULT_MODEL": "io.models", "OFFLINE_MODELS": "io.models",
    "procrustes": "align.procrustes", "ProcrustesFit": "align.procrustes",
    "CrossScaleMap": "align.maps", "MapTrainConfig": "align.maps", "fit_map": "align.maps", "estimate_mi": "analysis.mi",
    "AblationResult": "align.protocol", "run_ablations": "align.protocol",
    "Intervention": "steer.edits", "ResidualEdit": "steer.edits", "Schedule": "steer.schedule",
    "SteeringRecord": "steer.session", "Scale": "steer.edits",
    "contrastive_direction": "steer.directions", "principal_direction": "steer.directions",
    "transfer_direction": "steer.directions", "random_direction": "steer.directions",
    "GenerationResult": "steer.generate", "ExperimentResult": "steer.experiment",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        where = f"msma_lens.{_MOVED[name]}"
        warnings.warn(f"msma_lens.{name} moved to {where}; import it from there (the old name goes in the next release)",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(where), name)
    raise AttributeError(f"module 'msma_lens' has no attribute {name!r}")
