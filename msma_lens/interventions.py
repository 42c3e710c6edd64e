"""Old import path (deprecated, kept for one release): the edits now live in :mod:`msma_lens.steer.edits`, phases,
positions and schedules in :mod:`msma_lens.steer.schedule`, the hook session and its record in
:mod:`msma_lens.steer.session`, and directions in :mod:`msma_lens.steer.directions`."""

import warnings

from .steer.directions import contrastive_direction, principal_direction, random_direction, transfer_direction
from .steer.edits import (
    AT_MODES,
    ATTENTION_MODES,
    DEFAULT_AT,
    RESID_SITES,
    Ablate,
    AttentionEdit,
    EditContext,
    GaussianNoise,
    Intervention,
    Rescale,
    ResidualEdit,
    Scale,
    Translate,
)
from .steer.schedule import PHASES, Schedule
from .steer.session import SteeringRecord, steer

warnings.warn("msma_lens.interventions moved to msma_lens.steer.edits / .schedule / .session / .directions; the old "
              "path goes in the next release", DeprecationWarning, stacklevel=2)

__all__ = ["AT_MODES", "ATTENTION_MODES", "DEFAULT_AT", "PHASES", "RESID_SITES", "Ablate", "AttentionEdit", "EditContext",
           "GaussianNoise", "Intervention", "Rescale", "ResidualEdit", "Scale", "Schedule", "SteeringRecord", "Translate",
           "contrastive_direction", "principal_direction", "random_direction", "steer", "transfer_direction"]
