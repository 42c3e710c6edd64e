"""Exception types. Every error names the offending thing (scale, layer, hook, file, line)."""

from __future__ import annotations


class MSMAError(Exception):
    """Base class for msma-lens errors."""


class ConfigError(MSMAError, ValueError):
    """An invalid argument: a scale spec, a hyperparameter, an unknown name."""


class HookError(MSMAError, KeyError):
    """A hook name that the model does not have, or a hook that never fired."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ModelLoadError(MSMAError, RuntimeError):
    """A model that cannot be loaded (unknown name, hub unreachable, package missing)."""


class ArtifactError(MSMAError, ValueError):
    """A corrupt, foreign or mismatched artifact on disk."""


class NumericsError(MSMAError, FloatingPointError):
    """NaN or Inf in activations or inputs."""


class KVCacheError(MSMAError, RuntimeError):
    """KV-cached generation disagrees with uncached decoding (a broken library combination)."""


class DegenerateBaselineError(MSMAError, RuntimeError):
    """The unsteered generations are degenerate, so no steering effect measured against them means anything."""
