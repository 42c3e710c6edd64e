"""Old import path (deprecated, kept for one release): generation now lives in :mod:`msma_lens.steer.generate`, the
experiment runner in :mod:`msma_lens.steer.experiment`."""

import warnings

from .steer.experiment import (
    BASELINE_MAX_PPL_RATIO,
    DEFAULT_METRICS,
    DEFAULT_STRENGTHS,
    INTERVENTION_KINDS,
    KIND_ALIASES,
    ExperimentResult,
    canonical_kind,
    check_baseline,
    corpus_perplexity,
    run_experiment,
)
from .steer.generate import GenerationCapture, GenerationResult, generate

warnings.warn("msma_lens.steering moved to msma_lens.steer.generate / msma_lens.steer.experiment; the old path goes in "
              "the next release", DeprecationWarning, stacklevel=2)

__all__ = ["BASELINE_MAX_PPL_RATIO", "DEFAULT_METRICS", "DEFAULT_STRENGTHS", "INTERVENTION_KINDS", "KIND_ALIASES",
           "ExperimentResult", "GenerationCapture", "GenerationResult", "canonical_kind", "check_baseline",
           "corpus_perplexity", "generate", "run_experiment"]
