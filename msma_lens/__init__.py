"""msma-lens: Multi-Scale Manifold Alignment for TransformerLens models."""

from . import metrics, plugins, stats, text
from .activations import ScaleActivations
from .align import ProcrustesFit, procrustes
from .alignment import AblationResult, AlignConfig, AlignmentResult, fit_alignment, run_ablations
from .corpus import Corpus, Document, Sentence, load_corpus, load_hf_dataset, load_texts
from .errors import ArtifactError, ConfigError, HookError, ModelLoadError, MSMAError, NumericsError
from .interventions import (
    Ablate,
    AttentionEdit,
    GaussianNoise,
    Intervention,
    Rescale,
    ResidualEdit,
    Schedule,
    SteeringRecord,
    Translate,
    contrastive_direction,
    principal_direction,
    random_direction,
    steer,
    transfer_direction,
)
from .interventions import Scale as Scale  # deprecated alias of Rescale (warns on use), not in __all__
from .lens import MSMA
from .maps import CrossScaleMap, MapTrainConfig, fit_map
from .mi import estimate_mi
from .models import DEFAULT_MODEL, OFFLINE_MODELS, list_models, load_model
from .scales import Scales
from .steering import ExperimentResult, GenerationResult, generate, run_experiment

__version__ = "0.1.0"

__all__ = [
    "MSMA",
    "Scales",
    "ScaleActivations",
    "Corpus",
    "Document",
    "Sentence",
    "load_corpus",
    "load_texts",
    "load_hf_dataset",
    "procrustes",
    "ProcrustesFit",
    "CrossScaleMap",
    "MapTrainConfig",
    "fit_map",
    "estimate_mi",
    "AlignConfig",
    "AlignmentResult",
    "AblationResult",
    "fit_alignment",
    "run_ablations",
    "Translate",
    "Rescale",
    "GaussianNoise",
    "AttentionEdit",
    "Ablate",
    "Intervention",
    "ResidualEdit",
    "Schedule",
    "SteeringRecord",
    "steer",
    "contrastive_direction",
    "principal_direction",
    "transfer_direction",
    "random_direction",
    "generate",
    "GenerationResult",
    "run_experiment",
    "ExperimentResult",
    "metrics",
    "stats",
    "text",
    "plugins",
    "load_model",
    "list_models",
    "DEFAULT_MODEL",
    "OFFLINE_MODELS",
    "MSMAError",
    "ConfigError",
    "HookError",
    "ModelLoadError",
    "ArtifactError",
    "NumericsError",
]
