"""msma-lens: Multi-Scale Manifold Alignment for TransformerLens models."""

from . import metrics, stats, text
from .activations import ScaleActivations
from .corpus import Corpus, Document, Sentence, load_corpus, load_hf_dataset, load_texts
from .errors import ArtifactError, ConfigError, HookError, ModelLoadError, MSMAError, NumericsError
from .lens import MSMA
from .models import DEFAULT_MODEL, OFFLINE_MODELS, list_models, load_model
from .scales import Scales

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
    "metrics",
    "stats",
    "text",
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
