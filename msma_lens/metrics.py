"""Old import path of :mod:`msma_lens.analysis.metrics`, kept for one release (deprecated)."""

import sys
import warnings

from .analysis import metrics as _module

warnings.warn("msma_lens.metrics moved to msma_lens.analysis.metrics; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
