"""msma-lens: Multi-Scale Manifold Alignment for TransformerLens models."""

from .activations import ScaleActivations
from .errors import ArtifactError, ConfigError, HookError, ModelLoadError, MSMAError, NumericsError
from .lens import MSMA
from .models import DEFAULT_MODEL, OFFLINE_MODELS, list_models, load_model
from .scales import Scales

__version__ = "0.1.0"

__all__ = [
    "MSMA",
    "Scales",
    "ScaleActivations",
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
