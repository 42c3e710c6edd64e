"""Old import path of :mod:`msma_lens.analysis.mi`, kept for one release (deprecated)."""

import sys
import warnings

from .analysis import mi as _module

warnings.warn("msma_lens.mi moved to msma_lens.analysis.mi; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
