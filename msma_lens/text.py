"""Old import path of :mod:`msma_lens.analysis.text`, kept for one release (deprecated)."""

import sys
import warnings

from .analysis import text as _module

warnings.warn("msma_lens.text moved to msma_lens.analysis.text; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
