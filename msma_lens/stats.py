"""Old import path of :mod:`msma_lens.analysis.stats`, kept for one release (deprecated)."""

import sys
import warnings

from .analysis import stats as _module

warnings.warn("msma_lens.stats moved to msma_lens.analysis.stats; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
